"""Peak memory of the full setup's input pipeline (image cache in memory or on disk) and of
streaming prediction.

    python data_scripts/benchmark_memory.py pipeline --num-images 2000
    python data_scripts/benchmark_memory.py predict --num-images 500

`pipeline` writes synthetic 1024 px RSNA-format files, then runs one training pass of the full
setup's pipeline at 512 px (decode, CLAHE, resize, cache, augment, encode against 49,104
anchors), once with the decoded images cached in memory and once cached in a file, each in a
fresh process, and prints each process's peak resident memory. `predict` runs
`predict.iter_predictions` with heatmaps over the files (CPU default model, untrained: only the
memory matters) and writes each heatmap PNG as predict.py does, and prints the peak.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

KIB_PER_GIB = 1024**2


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_GIB


def _pipeline_pass(root: Path, cache: str) -> None:
    import dataclasses

    from retinanet_lib.config import config_for_mode
    from retinanet_lib.pipeline import make_dataset, make_records
    from retinanet_lib.rsna import load_rsna_labels

    labels = load_rsna_labels(root / "stage_2_train_labels.csv")
    cfg = config_for_mode("full")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=8))
    records = make_records(root, labels, labels.patient_ids)
    target = True if cache == "memory" else str(root / "cache" / "train")
    (root / "cache").mkdir(exist_ok=True)
    for _ in make_dataset(records, cfg, 8, training=True, cache=target):
        pass
    print(f"{cache:6s} cache, {len(records)} images at 512 px: peak {_peak_gib():.2f} GiB")


def _predict_pass(root: Path) -> None:
    import dataclasses

    import matplotlib

    matplotlib.use("Agg")
    from retinanet_lib.config import config_for_mode
    from retinanet_lib.model import build_retinanet
    from retinanet_lib.predict import iter_predictions
    from retinanet_lib.viz import HeatmapWriter

    cfg = config_for_mode("cpu")
    cfg = dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, score_threshold=0.0))
    paths = sorted((root / "stage_2_test_images").glob("*.dcm"))
    writer = HeatmapWriter(dpi=60)
    out = root / "png"
    out.mkdir(exist_ok=True)
    count = 0
    for prediction in iter_predictions(build_retinanet(cfg), cfg, paths):
        writer.save(prediction, out / f"{prediction.patient_id}.png")
        count += 1
    print(f"streaming prediction of {count} files with heatmaps: peak {_peak_gib():.2f} GiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("pipeline", "predict"))
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--root", default=None, help="existing synthetic data (internal)")
    parser.add_argument("--cache", default=None, help="internal: run one pass in this process")
    args = parser.parse_args(argv)
    if args.root is not None:  # the measured child process
        root = Path(args.root)
        if args.what == "pipeline":
            _pipeline_pass(root, args.cache)
        else:
            _predict_pass(root)
        return 0
    from retinanet_lib.config import SyntheticConfig
    from retinanet_lib.synthetic import write_synthetic_rsna

    with tempfile.TemporaryDirectory() as folder:
        pipeline = args.what == "pipeline"
        sizes = (
            {"num_train": args.num_images, "num_test": 1}
            if pipeline
            else {"num_train": 1, "num_test": args.num_images}
        )
        write_synthetic_rsna(folder, SyntheticConfig(**sizes), progress=True)
        child = [sys.executable, __file__, args.what, "--root", folder]
        for cache in ("memory", "disk") if pipeline else (None,):
            extra = ["--cache", cache] if cache else []
            subprocess.run([*child, *extra], check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
