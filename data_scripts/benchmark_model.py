"""Benchmark training steps, the forward pass and end-to-end inference, with a stage breakdown.

    python data_scripts/benchmark_model.py                 # CPU default model (256 px)
    RETINANET_MODE=full python data_scripts/benchmark_model.py --batch-size 2 --images 16
    python data_scripts/benchmark_model.py --repeats 5     # median and range over 5 runs

Prints, in one run:

* the training step (forward + backward + update, after compilation);
* forward only: the compiled forward pass on in-memory batches (images/s);
* end to end: `predict.iter_predictions` on synthetic DICOM files, everything
  `data_scripts/predict.py` computes per image (DICOM decode, CLAHE, resize in parallel
  `tf.data`, overlapped with the compiled forward pass, decoding every anchor, threshold + NMS,
  and the heatmap), images/s, and its ratio to forward only;
* the per-stage breakdown (ms per image, each stage timed alone, sequentially, on one core
  unless it is TensorFlow's own).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from retinanet_lib.anchors import generate_anchors  # noqa: E402
from retinanet_lib.config import SyntheticConfig, config_for_mode, run_mode_from_env  # noqa: E402
from retinanet_lib.dicom_io import read_dicom_image  # noqa: E402
from retinanet_lib.encoding import LabelEncoder  # noqa: E402
from retinanet_lib.heatmap import score_heatmap  # noqa: E402
from retinanet_lib.inference import compiled_predictor, decode_all, nms_tensors  # noqa: E402
from retinanet_lib.losses import RetinaNetLoss  # noqa: E402
from retinanet_lib.model import build_retinanet  # noqa: E402
from retinanet_lib.predict import iter_predictions  # noqa: E402
from retinanet_lib.preprocess import load_preprocessed_image, to_model_input  # noqa: E402
from retinanet_lib.synthetic import write_synthetic_rsna  # noqa: E402
from retinanet_lib.train import make_optimizer  # noqa: E402


def _per_image_ms(function, items, count: int) -> float:
    start = time.perf_counter()
    for item in items:
        function(item)
    return 1000 * (time.perf_counter() - start) / count


def _stages(model, cfg, paths, batch: int) -> dict[str, float]:
    """Milliseconds per image of each stage, timed alone."""
    predict = compiled_predictor(model, cfg)
    anchors_xyxy = generate_anchors(cfg.image_size, cfg.image_size, cfg.anchors)
    loaded = [load_preprocessed_image(p, cfg.image_size, cfg.data)[0] for p in paths]
    batches = [
        to_model_input(np.stack(loaded[i : i + batch]), cfg.model.backbone)
        for i in range(0, len(loaded) - batch + 1, batch)
    ]
    count = len(batches) * batch
    predictions = [predict(x) for x in batches]
    decoded = [decode_all(p, anchors_xyxy, cfg) for p in predictions]
    return {
        "DICOM read": _per_image_ms(read_dicom_image, paths, len(paths)),
        "read + CLAHE + resize": _per_image_ms(
            lambda p: load_preprocessed_image(p, cfg.image_size, cfg.data), paths, len(paths)
        ),
        "forward (compiled)": _per_image_ms(lambda x: predict(x).numpy(), batches, count),
        "decode every anchor": _per_image_ms(
            lambda p: [t.numpy() for t in decode_all(p, anchors_xyxy, cfg)], predictions, count
        ),
        "threshold + NMS": _per_image_ms(
            lambda d: nms_tensors(*d, cfg.decode)["scores"].numpy(), decoded, count
        ),
        "heatmap": _per_image_ms(
            lambda d: [
                score_heatmap(b, s[:, 0], (cfg.image_size, cfg.image_size))
                for b, s in zip(d[0].numpy(), d[1].numpy(), strict=True)
            ],
            decoded,
            count,
        ),
    }


def _one_run(model, cfg, paths, batch: int, images: np.ndarray) -> tuple[float, float]:
    """(forward-only images/s, end-to-end images/s)."""
    predict = compiled_predictor(model, cfg)
    inputs = tf.constant(images)
    predict(inputs)
    start = time.perf_counter()
    rounds = max(2, len(paths) // batch)
    for _ in range(rounds):
        predict(inputs).numpy()
    forward = rounds * batch / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in iter_predictions(model, cfg, paths, batch_size=batch):
        pass
    end_to_end = len(paths) / (time.perf_counter() - start)
    return forward, end_to_end


def _summary(values: list[float], digits: int = 1) -> str:
    """Median, and the range when there are several values."""
    median = f"{statistics.median(values):.{digits}f}"
    if len(values) == 1:
        return median
    return f"{median} (range {min(values):.{digits}f} to {max(values):.{digits}f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=10, help="training steps timed")
    parser.add_argument("--images", type=int, default=256, help="DICOM files for inference")
    parser.add_argument("--repeats", type=int, default=3, help="inference timings repeated")
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
    gpus = tf.config.list_physical_devices("GPU")
    device = f"{len(gpus)} GPU(s)" if gpus else f"{os.cpu_count()} CPU cores"
    print(f"mode {mode}: {cfg.model.backbone} at {size} px, batch {batch}, {device}")
    print(f"training step:      {step_s:6.3f} s  ({batch / step_s:6.1f} images/s)")
    with tempfile.TemporaryDirectory() as root:
        write_synthetic_rsna(root, SyntheticConfig(num_train=1, num_test=args.images), False)
        paths = sorted(str(p) for p in Path(root, "stage_2_test_images").glob("*.dcm"))
        for _ in iter_predictions(model, cfg, paths[:batch], batch_size=batch):
            pass  # warm-up: traces the inference graph
        runs = [_one_run(model, cfg, paths, batch, images) for _ in range(args.repeats)]
        stages = _stages(model, cfg, paths, batch)
    forward = [f for f, _ in runs]
    end_to_end = [e for _, e in runs]
    ratios = [e / f for f, e in runs]
    print(f"forward pass only:  {_summary(forward)} images/s")
    print(f"end to end (DICOM -> detections + heatmap): {_summary(end_to_end)} images/s")
    print(f"end to end / forward only: {_summary(ratios, 2)} over {args.repeats} runs")
    print("stages, timed alone (ms per image):")
    for name, ms in stages.items():
        print(f"  {name:24s} {ms:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
