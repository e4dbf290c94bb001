"""Train RetinaNet on the RSNA data (real or synthetic) with the chapters' settings.

    python data_scripts/train.py runs/cpu                       # CPU default, synthetic data
    RETINANET_MODE=full RETINANET_DATA_DIR=/data/rsna python data_scripts/train.py runs/full
    python data_scripts/train.py runs/cpu --epochs 5            # override the epoch count
    python data_scripts/train.py runs/x --data-root /some/rsna/folder

Re-running the same command after an interruption resumes from the last finished epoch.
The best weights (lowest validation loss) end up in WORKDIR/best.weights.h5, with config.json,
history.csv and TensorBoard logs (tensorboard --logdir WORKDIR/logs).
"""

from __future__ import annotations

import argparse
import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from retinanet_lib.config import config_for_mode, run_mode_from_env  # noqa: E402
from retinanet_lib.pipeline import make_dataset, make_records  # noqa: E402
from retinanet_lib.rsna import (  # noqa: E402
    LABELS_FILE,
    load_rsna_labels,
    prepare_data,
    require_rsna_layout,
    split_patients,
)
from retinanet_lib.train import set_seed, train_retinanet  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", help="folder for weights, config and logs")
    parser.add_argument("--epochs", type=int, default=None, help="override cfg.train.epochs")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument(
        "--data-root",
        default=None,
        help="an RSNA-layout folder (default: chosen by RETINANET_MODE)",
    )
    args = parser.parse_args(argv)
    mode = run_mode_from_env()
    cfg = config_for_mode(mode)
    overrides = {
        k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size)) if v is not None
    }
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **overrides))
    set_seed(cfg.train.seed)
    root = require_rsna_layout(args.data_root) if args.data_root else prepare_data(mode)
    labels = load_rsna_labels(root / LABELS_FILE)
    print(f"mode {mode}: {labels.summary()}")
    train_ids, val_ids = split_patients(labels, cfg.data.validation_fraction, cfg.data.seed)
    batch = cfg.train.batch_size
    train_ds = make_dataset(make_records(root, labels, train_ids), cfg, batch, training=True)
    val_ds = make_dataset(make_records(root, labels, val_ids), cfg, batch, training=False)
    result = train_retinanet(cfg, train_ds, val_ds, args.workdir, verbose=1)
    best = min(result.history["val_loss"])
    print(f"best validation loss {best:.4f}; weights in {result.workdir}/best.weights.h5")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
