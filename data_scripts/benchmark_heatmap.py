"""Benchmark the vectorized heatmap against the blog's loop over boxes.

    python data_scripts/benchmark_heatmap.py            # 49,104 boxes of a 512 px image

The boxes are the decoded anchors of a 512 px image (every anchor jittered a little), with random
scores, i.e. exactly what the no-NMS decoder hands to the heatmap.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402

from retinanet_lib.anchors import generate_anchors  # noqa: E402
from retinanet_lib.boxes import clip_boxes  # noqa: E402
from retinanet_lib.config import AnchorConfig  # noqa: E402
from retinanet_lib.heatmap import score_heatmap  # noqa: E402


def heatmap_per_box_loop(boxes_xyxy: np.ndarray, scores: np.ndarray, shape) -> np.ndarray:
    """The blog's construction: for every box, add its score to its pixels and count."""
    score_sum, divider = np.zeros(shape), np.zeros(shape)
    starts = np.clip(np.ceil(boxes_xyxy[:, :2] - 0.5), 0, None).astype(int)
    ends = np.clip(np.ceil(boxes_xyxy[:, 2:] - 0.5), 0, None).astype(int)
    for (c0, r0), (c1, r1), score in zip(starts, ends, scores, strict=True):
        score_sum[r0:r1, c0:c1] += score
        divider[r0:r1, c0:c1] += 1
    return np.divide(score_sum, divider, out=np.zeros(shape), where=divider > 0)


def timings(function, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def summary_ms(seconds: list[float]) -> str:
    """Median and range in milliseconds."""
    median = statistics.median(seconds) * 1000
    return f"{median:8.1f} ms (range {min(seconds) * 1000:.1f} to {max(seconds) * 1000:.1f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    size = args.image_size
    anchors = generate_anchors(size, size, AnchorConfig()).numpy()
    boxes = anchors + rng.normal(0, 2, anchors.shape).astype(np.float32)
    boxes = clip_boxes(boxes, size, size).numpy()
    scores = rng.uniform(0, 1, len(boxes))
    loop = heatmap_per_box_loop(boxes, scores, (size, size))
    fast = score_heatmap(boxes, scores, (size, size))
    difference = float(np.abs(loop - fast).max())
    loop_s = timings(lambda: heatmap_per_box_loop(boxes, scores, (size, size)), args.repeats)
    fast_s = timings(lambda: score_heatmap(boxes, scores, (size, size)), args.repeats)
    print(
        f"{len(boxes):,} boxes on a {size} x {size} map, {os.cpu_count()} CPU cores "
        f"(median and range of {args.repeats} runs)"
    )
    speedup = statistics.median(loop_s) / statistics.median(fast_s)
    print(f"per-box loop:      {summary_ms(loop_s)}")
    print(f"difference arrays: {summary_ms(fast_s)}, {speedup:.0f}x faster")
    print(f"max |difference|:   {difference:.2e}")
    return 0 if difference < 1e-5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
