"""Benchmark the input pipeline: images/s cold (decode + CLAHE + resize) and cached.

    python data_scripts/benchmark_pipeline.py                       # 512 px, 200 synthetic images
    python data_scripts/benchmark_pipeline.py --image-size 256 --root /path/to/rsna

Cold = the first pass (DICOM decode, CLAHE, resize, augmentation, label encoding); cached = a
later pass, where only augmentation, backbone preprocessing and label encoding run. Each is
repeated (`--repeats`, a fresh pipeline each time) and printed as median and range.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from retinanet_lib.config import SyntheticConfig, config_for_mode  # noqa: E402
from retinanet_lib.pipeline import make_dataset, make_records  # noqa: E402
from retinanet_lib.rsna import load_rsna_labels  # noqa: E402
from retinanet_lib.synthetic import write_synthetic_rsna  # noqa: E402


def images_per_second(dataset) -> float:
    start, count = time.perf_counter(), 0
    for images, _ in dataset:
        count += int(images.shape[0])
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help="RSNA folder (default: fresh synthetic)")
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    root = args.root or tempfile.mkdtemp(prefix="rsna-bench-")
    if args.root is None:
        write_synthetic_rsna(
            root, SyntheticConfig(num_train=args.num_images, num_test=0), progress=False
        )
    labels = load_rsna_labels(f"{root}/stage_2_train_labels.csv")
    ids = labels.patient_ids[: args.num_images]
    cfg = dataclasses.replace(config_for_mode("full"), image_size=args.image_size)
    records = make_records(root, labels, ids)
    cold, cached = [], []
    for _ in range(args.repeats):
        dataset = make_dataset(records, cfg, args.batch_size, training=True)
        cold.append(images_per_second(dataset))
        cached.append(images_per_second(dataset))
    print(
        f"{len(ids)} images, {args.image_size} px, batch {args.batch_size}, "
        f"{os.cpu_count()} CPU cores, median and range of {args.repeats} pipelines"
    )
    # cold: decode, CLAHE, resize, augment, encode; cached: augment, preprocess, encode.
    for label, rates in (("cold", cold), ("cached", cached)):
        print(
            f"{label:7s} {statistics.median(rates):6.1f} images/s "
            f"(range {min(rates):.1f} to {max(rates):.1f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
