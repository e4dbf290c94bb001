"""Per-pixel probability maps from scored boxes (the blog's heatmap).

The blog's author dropped NMS and, for every pixel, averaged the scores of all boxes covering it:
`heatmap = score_sum / divider`, where `divider` counts the boxes covering the pixel. Done with a
loop over boxes and pixels that is slow for the ~49,000 boxes of a 512 px image. Here it is
vectorized with 2-D difference arrays: each box adds its score at its top-left corner, subtracts it
at the two corners beyond its right and bottom edges, adds it back beyond the bottom-right corner;
two cumulative sums then spread every box over exactly its pixels. The same is done with 1 in
place of the score to get the divider. Cost: O(boxes + pixels), not O(boxes x box area).

Pixel `(row, col)` is covered by a box `(x0, y0, x1, y1)` when its centre `(col + 0.5, row + 0.5)`
lies in `[x0, x1) x [y0, y1)`. Pixels covered by no box get 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["HEATMAP_REDUCTIONS", "box_coverage", "score_heatmap"]

#: `"mean"`: the blog's average score of the covering boxes. `"score_weighted"`: average
#: weighted by the scores themselves (sum of s^2 / sum of s), so the many low-score boxes of a
#: detector without NMS dilute confident ones less.
HEATMAP_REDUCTIONS = ("mean", "score_weighted")

TensorLike = Any


def _pixel_extents(boxes_xyxy: np.ndarray, height: int, width: int) -> np.ndarray:
    """Integer `[col0, row0, col1, row1)` pixel ranges covered by each box, clipped."""
    starts = np.ceil(boxes_xyxy[:, :2] - 0.5)  # first pixel whose centre is >= x0
    ends = np.ceil(boxes_xyxy[:, 2:] - 0.5)  # first pixel whose centre is >= x1 (exclusive)
    limits = np.array([width, height], np.float64)
    starts = np.clip(starts, 0, limits)
    ends = np.clip(ends, 0, limits)
    return np.concatenate([starts, ends], axis=1).astype(np.int64)


def _accumulate(extents: np.ndarray, weights: np.ndarray, height: int, width: int) -> np.ndarray:
    """Sum of `weights` of the boxes covering each pixel, by a 2-D difference array."""
    difference = np.zeros((height + 1, width + 1), np.float64)
    col0, row0, col1, row1 = extents.T
    np.add.at(difference, (row0, col0), weights)
    np.add.at(difference, (row0, col1), -weights)
    np.add.at(difference, (row1, col0), -weights)
    np.add.at(difference, (row1, col1), weights)
    return difference.cumsum(axis=0).cumsum(axis=1)[:height, :width]


def box_coverage(boxes_xyxy: TensorLike, image_shape: tuple[int, int]) -> np.ndarray:
    """How many boxes cover each pixel (the blog's `divider`), `(H, W)` float64."""
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    height, width = image_shape
    extents = _pixel_extents(boxes, height, width)
    return _accumulate(extents, np.ones(len(boxes)), height, width)


def score_heatmap(
    boxes_xyxy: TensorLike,
    scores: TensorLike,
    image_shape: tuple[int, int],
    reduce: str = "mean",
) -> np.ndarray:
    """Per-pixel probability from scored boxes.

    Args:
        boxes_xyxy: `(N, 4)` boxes in `"xyxy"` pixels of the target image (decoded anchors of
            one image, typically without NMS).
        scores: `(N,)` probabilities in [0, 1].
        image_shape: `(height, width)` of the map.
        reduce: One of `HEATMAP_REDUCTIONS`.

    Returns:
        `(height, width)` float32 map in [0, 1]; 0 where no box covers a pixel.
    """
    if reduce not in HEATMAP_REDUCTIONS:
        raise ValueError(f"reduce must be one of {HEATMAP_REDUCTIONS}, got {reduce!r}.")
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(scores) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores.")
    height, width = image_shape
    extents = _pixel_extents(boxes, height, width)
    if reduce == "mean":
        numerator = _accumulate(extents, scores, height, width)
        denominator = _accumulate(extents, np.ones(len(boxes)), height, width)
    else:
        numerator = _accumulate(extents, scores**2, height, width)
        denominator = _accumulate(extents, scores, height, width)
    # Round-off of the cumulative sums can leave tiny non-zero values on uncovered pixels.
    covered = denominator > 0.5 if reduce == "mean" else denominator > 1e-12
    heatmap = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=covered)
    return np.clip(heatmap, 0.0, 1.0).astype(np.float32)
