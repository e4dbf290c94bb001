"""Benchmark the training step over batch sizes and precisions, on any Keras backend.

    python data_scripts/benchmark_training.py                       # CPU default, TensorFlow
    RETINANET_MODE=full python data_scripts/benchmark_training.py \\
        --batch-sizes 1 8 32 64 --precisions float32 mixed_bfloat16  # the blog's setup, a GPU
    KERAS_BACKEND=jax RETINANET_MODE=full python data_scripts/benchmark_training.py ...
    python data_scripts/benchmark_training.py --csv timings.csv      # also write a table

For every batch size and precision it builds the project's own model (`build_retinanet`),
compiles it with `RetinaNetLoss` and the optimizer training uses (`optimizers.make_optimizer`,
so float16 gets its loss scaling), runs a few warm-up steps (compilation), then times `--steps`
calls of `train_on_batch` on one in-memory batch (each call waits for its loss, so the time is
the real step time; reading and decoding DICOMs is not included). It prints images/s and the
hours 25 epochs of the RSNA training split would take at that speed.

Nothing here imports TensorFlow: the model, the loss and the optimizer are written in
`keras.ops`, so the script also runs where only JAX or PyTorch is installed (set
`KERAS_BACKEND`). The targets are made with NumPy in the packed layout of
`retinanet_lib.targets` (background everywhere, a block of positive anchors per image); the
step's cost does not depend on their values.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from retinanet_lib.anchors import num_anchors  # noqa: E402
from retinanet_lib.config import (  # noqa: E402
    BACKGROUND_CLASS,
    PRECISIONS,
    RetinaNetConfig,
    config_for_mode,
    run_mode_from_env,
)
from retinanet_lib.losses import RetinaNetLoss  # noqa: E402
from retinanet_lib.model import build_retinanet  # noqa: E402
from retinanet_lib.optimizers import make_optimizer  # noqa: E402

#: Training images of one epoch of the blog's setup: the 26,684 labelled RSNA images less
#: the validation fifth (`DataConfig.validation_fraction`).
RSNA_TRAIN_IMAGES = 21_347
#: Positive anchors per image in the benchmark targets (a typical opacity's count).
POSITIVES_PER_IMAGE = 30


def packed_targets(batch: int, anchors: int, num_positives: int = POSITIVES_PER_IMAGE):
    """`(batch, anchors, 5)` float32 targets: background everywhere but `num_positives`
    class-0 anchors with zero deltas per image."""
    targets = np.zeros((batch, anchors, 5), np.float32)
    targets[..., 4] = BACKGROUND_CLASS
    targets[:, :num_positives, 4] = 0.0
    return targets


def time_training_step(
    cfg: RetinaNetConfig, batch: int, precision: str, steps: int, warmup: int
) -> float:
    """Seconds per training step (median of `steps` timed calls after `warmup` calls)."""
    train = dataclasses.replace(cfg.train, batch_size=batch, mixed_precision=precision)
    cfg = dataclasses.replace(cfg, train=train)
    keras.utils.set_random_seed(0)
    model = build_retinanet(cfg)
    model.compile(
        optimizer=make_optimizer(cfg.train, steps_per_epoch=1000),
        loss=RetinaNetLoss(cfg.num_classes, cfg.loss),
    )
    rng = np.random.default_rng(0)
    size = cfg.image_size
    images = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
    targets = packed_targets(batch, num_anchors(size, size, cfg.anchors))
    for _ in range(warmup):
        loss = model.train_on_batch(images, targets)
    if not np.isfinite(loss):
        raise RuntimeError(f"Non-finite loss {loss} at batch {batch}, {precision}.")
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(images, targets)  # returns the loss as a number: synchronised
        times.append(time.perf_counter() - start)
    keras.backend.clear_session()
    return float(np.median(times))


def describe_device() -> str:
    """The accelerator (or the CPU) the backend runs on, in words."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return f"{device.device_kind} ({device.platform}), Keras {keras.__version__} on JAX"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
            return f"{name}, Keras {keras.__version__} on TensorFlow {tf.__version__}"
        return f"{os.cpu_count()} CPU cores, Keras {keras.__version__} on TensorFlow"
    return f"Keras {keras.__version__} on {backend}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation)")
    parser.add_argument("--epochs", type=int, default=25, help="epochs for the hours column")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    mode = run_mode_from_env()
    cfg = config_for_mode(mode)
    # No download needed to time the architecture; the frozen backbone is kept frozen.
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone_weights=None))
    device = describe_device()
    print(f"mode {mode}: {cfg.model.backbone} at {cfg.image_size} px; {device}")
    rows = []
    for precision in args.precisions:
        for batch in args.batch_sizes:
            seconds = time_training_step(cfg, batch, precision, args.steps, args.warmup)
            images_per_s = batch / seconds
            hours = args.epochs * RSNA_TRAIN_IMAGES / images_per_s / 3600
            rows.append(
                {
                    "precision": precision,
                    "batch": batch,
                    "step_s": round(seconds, 4),
                    "images_per_s": round(images_per_s, 1),
                    f"hours_{args.epochs}_epochs": round(hours, 2),
                    "device": device,
                }
            )
            print(
                f"{precision:15s} batch {batch:3d}: {seconds * 1000:8.1f} ms/step, "
                f"{images_per_s:7.1f} images/s, {hours:6.2f} h for {args.epochs} epochs "
                f"of {RSNA_TRAIN_IMAGES:,} images",
                flush=True,
            )
    if args.csv is not None:
        pd.DataFrame(rows).to_csv(args.csv, index=False)
        print(f"table written to {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
