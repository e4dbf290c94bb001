"""Anchor boxes for a fixed input size.

Every feature-map cell of pyramid level `l` (stride `s = 2**l`) carries
`len(aspect_ratios) * len(scales)` anchors centred at `((j + 0.5) * s, (i + 0.5) * s)`.
The anchors of one image are ordered level by level, then row `i`, column `j`, then shape
(ratio-major, scale-minor). The model's heads flatten their outputs in exactly this order, so the
`k`-th prediction belongs to the `k`-th anchor.

Example:
    >>> from retinanet_lib.config import AnchorConfig
    >>> int(generate_anchors(512, 512, AnchorConfig()).shape[0])
    49104
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops

from retinanet_lib.config import AnchorConfig

__all__ = [
    "anchor_level_ids",
    "anchor_shapes_per_level",
    "feature_map_sizes",
    "fit_aspect_ratios",
    "generate_anchors",
    "num_anchors",
]


def _check_image_size(image_height: int, image_width: int) -> None:
    if int(image_height) != image_height or int(image_width) != image_width:
        raise ValueError(f"Image size must be integers, got {image_height}x{image_width}.")
    if image_height < 1 or image_width < 1:
        raise ValueError(f"Image size must be positive, got {image_height}x{image_width}.")


def feature_map_sizes(
    image_height: int, image_width: int, cfg: AnchorConfig
) -> list[tuple[int, int]]:
    """Height and width of each pyramid level's feature map.

    A stride-2 convolution with "same" padding maps `n` cells to `ceil(n / 2)`, so level `l`
    has `ceil(image_size / 2**l)` cells along each axis.

    Args:
        image_height: Model input height in pixels.
        image_width: Model input width in pixels.
        cfg: Anchor configuration.

    Returns:
        One `(height, width)` pair per level, in `cfg.levels` order.
    """
    _check_image_size(image_height, image_width)
    return [
        (math.ceil(image_height / stride), math.ceil(image_width / stride))
        for stride in cfg.strides
    ]


def num_anchors(image_height: int, image_width: int, cfg: AnchorConfig) -> int:
    """Total number of anchors for one image (e.g. 49,104 at 512x512 with the defaults)."""
    cells = sum(h * w for h, w in feature_map_sizes(image_height, image_width, cfg))
    return cells * cfg.num_anchors_per_location


def anchor_shapes_per_level(cfg: AnchorConfig) -> np.ndarray:
    """Width and height of every anchor shape on every level.

    An anchor of base size `b`, scale `s` and aspect ratio `r = width / height` has area
    `(b * s)**2`, width `b * s * sqrt(r)` and height `b * s / sqrt(r)`.

    Args:
        cfg: Anchor configuration.

    Returns:
        `(num_levels, num_anchors_per_location, 2)` float32 array of `(width, height)`.
    """
    base = np.asarray(cfg.base_sizes, np.float64)[:, None, None]  # (L, 1, 1)
    ratios = np.asarray(cfg.aspect_ratios, np.float64)[None, :, None]  # (1, R, 1)
    scales = np.asarray(cfg.scales, np.float64)[None, None, :]  # (1, 1, S)
    side = base * scales  # (L, 1, S)
    widths = side * np.sqrt(ratios)  # (L, R, S)
    heights = side / np.sqrt(ratios)  # (L, R, S)
    shapes = np.stack([widths, heights], axis=-1)  # (L, R, S, 2)
    return shapes.reshape(len(cfg.levels), cfg.num_anchors_per_location, 2).astype(np.float32)


def _anchors_one_level(grid_height: int, grid_width: int, stride: int, shapes_wh: np.ndarray):
    """`(grid_height * grid_width * A, 4)` center_xywh anchors of one level."""
    num_shapes = shapes_wh.shape[0]
    centers_x = (ops.arange(grid_width, dtype="float32") + 0.5) * stride  # (W,)
    centers_y = (ops.arange(grid_height, dtype="float32") + 0.5) * stride  # (H,)
    grid_x, grid_y = ops.meshgrid(centers_x, centers_y)  # (H, W) each
    centers = ops.stack([grid_x, grid_y], axis=-1)  # (H, W, 2)
    centers = ops.tile(centers[:, :, None, :], [1, 1, num_shapes, 1])  # (H, W, A, 2)
    sizes = ops.broadcast_to(shapes_wh, [grid_height, grid_width, num_shapes, 2])  # (H, W, A, 2)
    anchors = ops.concatenate([centers, sizes], axis=-1)  # (H, W, A, 4)
    return ops.reshape(anchors, [-1, 4])  # (H*W*A, 4)


def generate_anchors(image_height: int, image_width: int, cfg: AnchorConfig):
    """All anchors of an image, in the order the model's heads predict them.

    Args:
        image_height: Model input height in pixels.
        image_width: Model input width in pixels.
        cfg: Anchor configuration.

    Returns:
        `(num_anchors, 4)` float32 anchors in `"xyxy"` input-pixel coordinates, a tensor of the
        Keras backend (a `tf.Tensor` under TensorFlow). Anchors near the border extend past
        the image; they are not clipped (as in the paper).
    """
    shapes = anchor_shapes_per_level(cfg)
    per_level = [
        _anchors_one_level(h, w, stride, shapes[index])
        for index, ((h, w), stride) in enumerate(
            zip(feature_map_sizes(image_height, image_width, cfg), cfg.strides, strict=True)
        )
    ]
    anchors_center_xywh = ops.concatenate(per_level, axis=0)  # (num_anchors, 4)
    centers, half_sizes = anchors_center_xywh[:, :2], anchors_center_xywh[:, 2:] / 2.0
    return ops.concatenate([centers - half_sizes, centers + half_sizes], axis=-1)  # xyxy


def anchor_level_ids(image_height: int, image_width: int, cfg: AnchorConfig) -> np.ndarray:
    """Pyramid level of every anchor, aligned with `generate_anchors`.

    Returns:
        `(num_anchors,)` int32 array holding values from `cfg.levels`.
    """
    counts = [
        h * w * cfg.num_anchors_per_location
        for h, w in feature_map_sizes(image_height, image_width, cfg)
    ]
    return np.repeat(np.asarray(cfg.levels, np.int32), counts)


def fit_aspect_ratios(boxes_xywh: np.ndarray, num_ratios: int = 3) -> tuple[float, ...]:
    """Anchor aspect ratios (width / height) fitted to a set of boxes.

    The ratios are the quantiles `(k + 0.5) / num_ratios` of the boxes' width / height: for
    three ratios the 1/6, 1/2 and 5/6 quantiles, each standing for a third of the boxes.
    RSNA opacities are tall (median height / width about 1.45), so their ratios sit below 1,
    where the paper's (0.5, 1, 2) spends a third of its anchors on wide shapes.

    Args:
        boxes_xywh: `(N, 4)` boxes `(x, y, width, height)` with positive sizes, N >= 1.
        num_ratios: How many ratios.

    Returns:
        `num_ratios` ratios, increasing, rounded to 2 decimals.
    """
    boxes = np.asarray(boxes_xywh, np.float64).reshape(-1, 4)
    if len(boxes) == 0 or (boxes[:, 2:] <= 0).any():
        raise ValueError("fit_aspect_ratios needs at least one box with positive sizes.")
    if num_ratios < 1:
        raise ValueError(f"num_ratios must be >= 1, got {num_ratios}.")
    levels = (np.arange(num_ratios) + 0.5) / num_ratios
    ratios = np.quantile(boxes[:, 2] / boxes[:, 3], levels)
    return tuple(float(r) for r in np.round(ratios, 2))
