"""Check that every DICOM file of a data set can be read, before a long run.

    python data_scripts/verify_data.py                      # the data of RETINANET_MODE
    python data_scripts/verify_data.py /data/rsna --workers 8
    python data_scripts/verify_data.py some/folder/of/dicoms --report out/

Decodes every `.dcm` file under the folder once (in parallel, with a progress bar) and writes
the unreadable ones, with their errors, to `rejects.csv` in the report folder (default: the
data folder). Exits 1 if any file is unreadable, 0 otherwise. `train.py` runs the same check
before training.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from retinanet_lib.config import run_mode_from_env
from retinanet_lib.rejects import verify_dicoms
from retinanet_lib.splits import prepare_data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", default=None, help="default: by RETINANET_MODE")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--report", default=None, help="folder for rejects.csv")
    args = parser.parse_args(argv)
    folder = Path(args.folder) if args.folder else prepare_data(run_mode_from_env())
    paths = sorted(folder.rglob("*.dcm"))
    if not paths:
        print(f"error: no .dcm files under {folder}")
        return 1
    rejects = verify_dicoms(paths, workers=args.workers)
    print(f"{len(paths)} files checked: {rejects.report(args.report or folder)}")
    return 1 if len(rejects) else 0


if __name__ == "__main__":
    raise SystemExit(main())
