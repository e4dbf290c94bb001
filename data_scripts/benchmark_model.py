"""Benchmark training steps, the forward pass and end-to-end inference.

    python data_scripts/benchmark_model.py                 # CPU default model (256 px)
    RETINANET_MODE=full python data_scripts/benchmark_model.py --batch-size 2

Reports: training step time (forward + backward + update, after compilation), the model's
forward pass alone (images/s), and end-to-end inference on DICOM files (decode + CLAHE +
resize + forward + decoding + NMS + heatmap), images/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from retinanet_lib.config import SyntheticConfig, config_for_mode, run_mode_from_env  # noqa: E402
from retinanet_lib.encoding import LabelEncoder  # noqa: E402
from retinanet_lib.losses import RetinaNetLoss  # noqa: E402
from retinanet_lib.model import build_retinanet  # noqa: E402
from retinanet_lib.predict import predict_dicoms  # noqa: E402
from retinanet_lib.synthetic import write_synthetic_rsna  # noqa: E402
from retinanet_lib.train import make_optimizer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--images", type=int, default=32, help="images for inference timing")
    args = parser.parse_args(argv)
    mode = run_mode_from_env()
    cfg = config_for_mode(mode)
    if mode == "full":  # no download needed to time the architecture
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone_weights=None))
    batch = args.batch_size or cfg.train.batch_size
    size = cfg.image_size
    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
    boxes = np.tile(
        np.array([[[size * 0.2, size * 0.3, size * 0.45, size * 0.7]]], np.float32), (batch, 1, 1)
    )
    targets = LabelEncoder(cfg).encode_batch(boxes, np.zeros((batch, 1), np.int32))
    data = tf.data.Dataset.from_tensors((images, targets)).repeat(args.steps).cache()
    model = build_retinanet(cfg)
    model.compile(
        optimizer=make_optimizer(cfg.train, args.steps),
        loss=RetinaNetLoss(cfg.num_classes, cfg.loss),
    )
    model.fit(data.take(2), epochs=1, verbose=0)  # compile / trace
    start = time.perf_counter()
    model.fit(data, epochs=1, verbose=0)
    step_s = (time.perf_counter() - start) / args.steps
    print(
        f"mode {mode}: {cfg.model.backbone} at {size} px, batch {batch}, {os.cpu_count()} CPU cores"
    )
    print(f"training step:      {step_s:6.3f} s  ({batch / step_s:6.1f} images/s)")
    model.predict_on_batch(images)
    start = time.perf_counter()
    for _ in range(3):
        model.predict_on_batch(images)
    forward_s = (time.perf_counter() - start) / 3
    print(f"forward pass only:  {batch / forward_s:6.1f} images/s")
    with tempfile.TemporaryDirectory() as root:
        write_synthetic_rsna(
            root, SyntheticConfig(num_train=1, num_test=args.images), progress=False
        )
        paths = sorted(
            os.path.join(root, "stage_2_test_images", name)
            for name in os.listdir(os.path.join(root, "stage_2_test_images"))
        )
        predict_dicoms(model, cfg, paths[:batch], batch_size=batch)  # warm-up
        start = time.perf_counter()
        predict_dicoms(model, cfg, paths, batch_size=batch)
        end_to_end_s = time.perf_counter() - start
    print(
        f"end-to-end inference (DICOM -> detections + heatmap): "
        f"{len(paths) / end_to_end_s:6.1f} images/s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
