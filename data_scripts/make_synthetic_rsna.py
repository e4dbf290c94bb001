"""Write the synthetic RSNA-format data set (DICOMs + label CSVs) to a folder.

python data_scripts/make_synthetic_rsna.py                      # -> $RETINANET_DATA_DIR or ./data
python data_scripts/make_synthetic_rsna.py out/ --num-train 500 --compression none
"""

from __future__ import annotations

import argparse
import time

from retinanet_lib.config import SyntheticConfig
from retinanet_lib.rsna import data_root, load_rsna_labels
from retinanet_lib.synthetic import write_synthetic_rsna


def main(argv: list[str] | None = None) -> int:
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", default=None, help="output folder")
    parser.add_argument("--num-train", type=int, default=defaults.num_train)
    parser.add_argument("--num-test", type=int, default=defaults.num_test)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--positive-fraction", type=float, default=defaults.positive_fraction)
    parser.add_argument("--compression", choices=("jpeg", "none"), default=defaults.compression)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    root = args.root or data_root() / "synthetic"
    cfg = SyntheticConfig(
        num_train=args.num_train,
        num_test=args.num_test,
        image_size=args.image_size,
        positive_fraction=args.positive_fraction,
        compression=args.compression,
        seed=args.seed,
    )
    start = time.perf_counter()
    write_synthetic_rsna(root, cfg)
    elapsed = time.perf_counter() - start
    labels = load_rsna_labels(f"{root}/stage_2_train_labels.csv", cfg.image_size, cfg.image_size)
    print(
        f"wrote {cfg.num_train + cfg.num_test} images to {root} in {elapsed:.1f} s: "
        f"{labels.summary()}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
