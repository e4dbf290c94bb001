"""Download the RSNA Pneumonia Detection Challenge data from Kaggle and check its layout.

    python data_scripts/download_rsna.py                 # -> $RETINANET_DATA_DIR or ./data/rsna
    python data_scripts/download_rsna.py /big/disk/rsna --method cli
    python data_scripts/download_rsna.py --check /path/to/existing/folder

Needs Kaggle credentials (KAGGLE_API_TOKEN, or KAGGLE_USERNAME + KAGGLE_KEY, or
~/.kaggle/kaggle.json) and the competition rules accepted on kaggle.com. About 3.7 GB.
"""

from __future__ import annotations

import argparse
import sys

from retinanet_lib.download import DataDownloadError, download_rsna
from retinanet_lib.rsna import check_rsna_layout, data_root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", default=None, help="target folder")
    parser.add_argument("--method", choices=("kagglehub", "cli"), default="kagglehub")
    parser.add_argument("--check", action="store_true", help="only check an existing folder")
    args = parser.parse_args(argv)
    root = args.root or data_root() / "rsna"
    if args.check:
        missing = check_rsna_layout(root)
        print(f"{root}: " + ("complete" if not missing else f"missing {', '.join(missing)}"))
        return 1 if missing else 0
    try:
        folder = download_rsna(root, method=args.method)
    except DataDownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(
        f"RSNA data ready in {folder}; set RETINANET_DATA_DIR={folder} and "
        "RETINANET_MODE=full to use it in the chapters."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
