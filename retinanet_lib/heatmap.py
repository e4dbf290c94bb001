"""Per-pixel maps of mean box scores (the blog's heatmap).

The blog's author dropped NMS and, for every pixel, averaged the scores of all boxes covering it:
`heatmap = score_sum / divider`, where `divider` counts the boxes covering the pixel. Done with a
loop over boxes and pixels that is slow for the ~49,000 boxes of a 512 px image. Here it is
vectorized with 2-D difference arrays: each box adds its score at its top-left corner, subtracts it
at the two corners beyond its right and bottom edges, adds it back beyond the bottom-right corner;
a 2-D prefix sum (OpenCV's integral image) then spreads every box over exactly its pixels. The
same is done with 1 in place of the score to get the divider. Cost: O(boxes + pixels), not
O(boxes x box area).

Pixel `(row, col)` is covered by a box `(x0, y0, x1, y1)` when its centre `(col + 0.5, row + 0.5)`
lies in `[x0, x1) x [y0, y1)`. Pixels covered by no box get 0.

The blog reads the map as a probability of pneumonia. Its values are means of detector scores:
sigmoid outputs trained by the focal loss, which are not calibrated probabilities, averaged over
overlapping boxes. The book therefore calls it a map of mean box scores.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

__all__ = [
    "HEATMAP_REDUCTIONS",
    "box_coverage",
    "covering_mean",
    "score_heatmap",
    "score_heatmap_tf",
]

#: `"mean"`: the blog's average score of the covering boxes. `"score_weighted"`: average
#: weighted by the scores themselves (sum of s^2 / sum of s), so the many low-score boxes of a
#: detector without NMS dilute confident ones less.
HEATMAP_REDUCTIONS = ("mean", "score_weighted")

TensorLike = Any


def _pixel_extents(boxes_xyxy: np.ndarray, height: int, width: int) -> np.ndarray:
    """Integer `[col0, row0, col1, row1)` pixel ranges covered by each box, clipped."""
    limits = np.array([width, height, width, height], np.float64)
    extents = boxes_xyxy - 0.5
    np.ceil(extents, out=extents)  # first pixel whose centre is >= the edge (end exclusive)
    np.clip(extents, 0.0, limits, out=extents)
    return extents.astype(np.int64)


def _accumulate(extents: np.ndarray, weights: np.ndarray, height: int, width: int) -> np.ndarray:
    """Per pixel, the sum of each weight channel over the boxes covering it.

    Every box puts its weights, with signs +, -, -, +, at its four corners of a 2-D difference
    array (one `np.bincount` over flattened corner indices per channel); OpenCV's integral image
    (a 2-D prefix sum) then spreads each weight over exactly the box's pixels.

    Args:
        extents: `(N, 4)` int pixel ranges from `_pixel_extents`.
        weights: `(N, C)` float64 weights per box.
        height: Map height.
        width: Map width.

    Returns:
        `(C, height, width)` float64 sums.
    """
    col0, row0, col1, row1 = extents.T
    stride, plane = width + 1, (height + 1) * (width + 1)
    corners = np.concatenate(
        [row0 * stride + col0, row0 * stride + col1, row1 * stride + col0, row1 * stride + col1]
    )  # (4N,)
    sums = []
    for channel in weights.T:  # C <= 2 channels, each one scatter and one prefix sum
        signed = np.concatenate([channel, -channel, -channel, channel])  # (4N,)
        difference = np.bincount(corners, signed, minlength=plane).astype(np.float64, copy=False)
        integral = cv2.integral(difference.reshape(height + 1, width + 1), sdepth=cv2.CV_64F)
        sums.append(integral[1 : height + 1, 1 : width + 1])
    return np.stack(sums)


def box_coverage(boxes_xyxy: TensorLike, image_shape: tuple[int, int]) -> np.ndarray:
    """How many boxes cover each pixel (the blog's `divider`), `(H, W)` float64."""
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    height, width = image_shape
    extents = _pixel_extents(boxes, height, width)
    return _accumulate(extents, np.ones((len(boxes), 1)), height, width)[0]


def _boxes_and_values(
    boxes_xyxy: TensorLike, values: TensorLike, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """`(N, 4)` and `(N,)` float64 arrays, checked to have one value per box."""
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    values = np.asarray(values, np.float64).reshape(-1)
    if len(values) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(values)} {name}.")
    return boxes, values


def _ratio_of_sums(
    boxes: np.ndarray,
    numerator: np.ndarray,
    denominator: np.ndarray,
    image_shape: tuple[int, int],
    floor: float,
) -> np.ndarray:
    """Per pixel, the sum of `numerator` over the covering boxes divided by the sum of
    `denominator`; 0 where the denominator's sum is at most `floor` (round-off of the prefix
    sums can leave tiny non-zero sums on uncovered pixels)."""
    height, width = image_shape
    extents = _pixel_extents(boxes, height, width)
    channels = np.stack([numerator, denominator], axis=1)
    top, bottom = _accumulate(extents, channels, height, width)
    return np.divide(top, bottom, out=np.zeros_like(top), where=bottom > floor)


def covering_mean(
    boxes_xyxy: TensorLike, values: TensorLike, image_shape: tuple[int, int]
) -> np.ndarray:
    """Per pixel, the mean of `values` over the boxes covering it; 0 where no box does.

    The blog's mean heatmap without its clip to [0, 1]: `values` may be any numbers (e.g. the
    score drops of occlusion sensitivity, `explain.occlusion_map`).

    Args:
        boxes_xyxy: `(N, 4)` boxes in `"xyxy"` pixels of the map.
        values: `(N,)` one number per box.
        image_shape: `(height, width)` of the map.

    Returns:
        `(height, width)` float64 means.
    """
    boxes, values = _boxes_and_values(boxes_xyxy, values, "values")
    return _ratio_of_sums(boxes, values, np.ones_like(values), image_shape, floor=0.5)


def score_heatmap(
    boxes_xyxy: TensorLike,
    scores: TensorLike,
    image_shape: tuple[int, int],
    reduce: str = "mean",
) -> np.ndarray:
    """Per-pixel mean (or score-weighted mean) of the scores of the boxes covering a pixel.

    Args:
        boxes_xyxy: `(N, 4)` boxes in `"xyxy"` pixels of the target image (decoded anchors of
            one image, typically without NMS).
        scores: `(N,)` box scores in [0, 1].
        image_shape: `(height, width)` of the map.
        reduce: One of `HEATMAP_REDUCTIONS`.

    Returns:
        `(height, width)` float32 map in [0, 1]; 0 where no box covers a pixel.
    """
    if reduce not in HEATMAP_REDUCTIONS:
        raise ValueError(f"reduce must be one of {HEATMAP_REDUCTIONS}, got {reduce!r}.")
    boxes, scores = _boxes_and_values(boxes_xyxy, scores, "scores")
    if reduce == "mean":  # the blog's: covering_mean, clipped to [0, 1]
        heatmap = covering_mean(boxes, scores, image_shape)
    else:  # sum of score^2 / sum of scores
        heatmap = _ratio_of_sums(boxes, scores**2, scores, image_shape, floor=1e-12)
    return np.clip(heatmap, 0.0, 1.0).astype(np.float32)


def score_heatmap_tf(
    boxes_xyxy: TensorLike, scores: TensorLike, image_size: int, reduce: str = "mean"
) -> Any:
    """`score_heatmap` for a batch, as TensorFlow ops (for the exported inference graph).

    The same difference arrays, scattered with `unsorted_segment_sum` and spread with two
    cumulative sums, in float64.

    Args:
        boxes_xyxy: `(B, N, 4)` boxes in pixels of the square `image_size` map.
        scores: `(B, N)` box scores.
        image_size: Side of the map.
        reduce: One of `HEATMAP_REDUCTIONS`.

    Returns:
        `(B, image_size, image_size)` float32 maps in [0, 1].
    """
    import tensorflow as tf  # only this function needs TensorFlow

    if reduce not in HEATMAP_REDUCTIONS:
        raise ValueError(f"reduce must be one of {HEATMAP_REDUCTIONS}, got {reduce!r}.")
    boxes = tf.cast(boxes_xyxy, tf.float64)
    scores = tf.cast(scores, tf.float64)
    extents = tf.cast(tf.clip_by_value(tf.math.ceil(boxes - 0.5), 0.0, float(image_size)), tf.int64)
    col0, row0, col1, row1 = tf.unstack(extents, axis=-1)  # (B, N) each
    stride, plane = image_size + 1, (image_size + 1) ** 2
    batch = tf.shape(boxes, out_type=tf.int64)[0]
    offsets = tf.range(batch, dtype=tf.int64)[:, None] * plane  # (B, 1)
    corners = (
        tf.concat(
            [
                row0 * stride + col0,
                row0 * stride + col1,
                row1 * stride + col0,
                row1 * stride + col1,
            ],
            axis=1,
        )
        + offsets
    )  # (B, 4N)
    if reduce == "mean":
        numerator_weights, denominator_weights = scores, tf.ones_like(scores)
    else:
        numerator_weights, denominator_weights = scores**2, scores
    sums = []
    for weights in (numerator_weights, denominator_weights):
        signed = tf.concat([weights, -weights, -weights, weights], axis=1)  # (B, 4N)
        difference = tf.math.unsorted_segment_sum(
            tf.reshape(signed, [-1]), tf.reshape(corners, [-1]), batch * plane
        )
        difference = tf.reshape(difference, [batch, image_size + 1, image_size + 1])
        spread = tf.cumsum(tf.cumsum(difference, axis=1), axis=2)
        sums.append(spread[:, :image_size, :image_size])
    numerator, denominator = sums
    covered = denominator > (0.5 if reduce == "mean" else 1e-12)
    heatmap = tf.where(covered, numerator / tf.where(covered, denominator, 1.0), 0.0)
    return tf.cast(tf.clip_by_value(heatmap, 0.0, 1.0), tf.float32)
