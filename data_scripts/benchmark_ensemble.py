"""Benchmark what ensembles and flips cost at prediction time (Chapter 7).

    python data_scripts/benchmark_ensemble.py              # CPU default model (256 px)
    python data_scripts/benchmark_ensemble.py --repeats 5  # median and range over 5 runs

Times the compiled inference graph `inference.build_detector` (preprocessing, the forward
pass of every member, ensembling, decoding every anchor, threshold, NMS and gating) on
in-memory 8-bit images, for one model, one model with flip test-time augmentation, an
ensemble of three and an ensemble of three with flips; prints images/s (median and range of
the repeats) and each setting's cost relative to one model. The weights are freshly
initialised: the time does not depend on them. Reading DICOM files is left out (it is the
same for every setting; `benchmark_model.py` times it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from retinanet_lib.config import config_for_mode, replace_section  # noqa: E402
from retinanet_lib.inference import build_detector  # noqa: E402
from retinanet_lib.model import build_retinanet  # noqa: E402

SETTINGS = (  # name, members, flip TTA
    ("one model", 1, False),
    ("one model, flip TTA", 1, True),
    ("ensemble of 3", 3, False),
    ("ensemble of 3, flip TTA", 3, True),
)


def images_per_second(detector, images: np.ndarray, batch_size: int) -> float:
    """Throughput of one pass over `images`, `batch_size` at a time."""
    start = time.perf_counter()
    for first in range(0, len(images), batch_size):
        outputs = detector(images[first : first + batch_size])
        outputs["num_detections"].numpy()  # wait for the result
    return len(images) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    cfg = config_for_mode("cpu")
    models = []
    for seed in range(3):
        keras.utils.set_random_seed(seed)
        models.append(build_retinanet(cfg))
    size = cfg.image_size
    images = np.random.default_rng(0).integers(0, 256, (args.images, size, size), np.uint8)
    print(
        f"{args.images} images of {size} x {size} px, batch {args.batch_size}, "
        f"{os.cpu_count()} CPU cores, {args.repeats} repeats (median, range)"
    )
    baseline = None
    for name, members, flip in SETTINGS:
        setting = replace_section(cfg, "decode", flip_tta=flip)
        detector = build_detector(models[:members] if members > 1 else models[0], setting)
        images_per_second(detector, images[: args.batch_size], args.batch_size)  # trace
        speeds = [images_per_second(detector, images, args.batch_size) for _ in range(args.repeats)]
        median = statistics.median(speeds)
        baseline = baseline or median
        print(
            f"{name:26s} {median:6.1f} images/s ({min(speeds):.1f} to {max(speeds):.1f}), "
            f"{baseline / median:.1f} x the time of one model"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
