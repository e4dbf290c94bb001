"""Box geometry: format conversion, area, pairwise IoU, clipping, scaling.

All functions take `(..., 4)` arrays or tensors (NumPy, Python lists or `tf.Tensor`) and return
`float32` `tf.Tensor`s. They are pure TensorFlow ops, so they also run inside `tf.data` maps and
`tf.function`s.

The format names are those of Keras 3 (`keras.utils.bounding_boxes`):

* `"xyxy"`: `(x_min, y_min, x_max, y_max)`, the library's internal format;
* `"xywh"`: `(x_min, y_min, width, height)`, top-left corner plus size, as in the RSNA CSV;
* `"center_xywh"`: `(x_center, y_center, width, height)`, used only to encode box deltas.

Degenerate boxes (zero or negative width/height, e.g. an `xyxy` box with `x_max < x_min`) have
area 0 and IoU 0 with every box, including themselves.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from retinanet_lib.config import BOX_FORMATS

__all__ = [
    "box_area",
    "center_xywh_to_xyxy",
    "clip_boxes",
    "convert_boxes",
    "pairwise_iou",
    "scale_boxes",
    "xywh_to_xyxy",
    "xyxy_to_center_xywh",
    "xyxy_to_xywh",
]

TensorLike = Any


def _as_boxes(boxes: TensorLike, name: str = "boxes") -> tf.Tensor:
    """Converts to a float32 tensor and checks that the last axis holds 4 coordinates."""
    boxes = tf.cast(boxes, tf.float32) if tf.is_tensor(boxes) else tf.constant(boxes, tf.float32)
    if boxes.shape.rank is None or boxes.shape.rank == 0 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (..., 4), got {boxes.shape}.")
    return boxes


def _check_format(box_format: str) -> None:
    if box_format not in BOX_FORMATS:
        raise ValueError(f"Unknown box format {box_format!r}; expected one of {BOX_FORMATS}.")


def xywh_to_xyxy(boxes_xywh: TensorLike) -> tf.Tensor:
    """Top-left + size -> corners.

    Args:
        boxes_xywh: `(..., 4)` boxes `(x_min, y_min, width, height)`.

    Returns:
        `(..., 4)` float32 boxes `(x_min, y_min, x_max, y_max)`.
    """
    boxes_xywh = _as_boxes(boxes_xywh, "boxes_xywh")
    top_left, size = boxes_xywh[..., :2], boxes_xywh[..., 2:]
    return tf.concat([top_left, top_left + size], axis=-1)


def xyxy_to_xywh(boxes_xyxy: TensorLike) -> tf.Tensor:
    """Corners -> top-left + size.

    Args:
        boxes_xyxy: `(..., 4)` boxes `(x_min, y_min, x_max, y_max)`.

    Returns:
        `(..., 4)` float32 boxes `(x_min, y_min, width, height)`.
    """
    boxes_xyxy = _as_boxes(boxes_xyxy, "boxes_xyxy")
    top_left, bottom_right = boxes_xyxy[..., :2], boxes_xyxy[..., 2:]
    return tf.concat([top_left, bottom_right - top_left], axis=-1)


def xyxy_to_center_xywh(boxes_xyxy: TensorLike) -> tf.Tensor:
    """Corners -> centre + size.

    Args:
        boxes_xyxy: `(..., 4)` boxes `(x_min, y_min, x_max, y_max)`.

    Returns:
        `(..., 4)` float32 boxes `(x_center, y_center, width, height)`.
    """
    boxes_xyxy = _as_boxes(boxes_xyxy, "boxes_xyxy")
    top_left, bottom_right = boxes_xyxy[..., :2], boxes_xyxy[..., 2:]
    return tf.concat([(top_left + bottom_right) / 2.0, bottom_right - top_left], axis=-1)


def center_xywh_to_xyxy(boxes_center_xywh: TensorLike) -> tf.Tensor:
    """Centre + size -> corners.

    Args:
        boxes_center_xywh: `(..., 4)` boxes `(x_center, y_center, width, height)`.

    Returns:
        `(..., 4)` float32 boxes `(x_min, y_min, x_max, y_max)`.
    """
    boxes = _as_boxes(boxes_center_xywh, "boxes_center_xywh")
    center, half_size = boxes[..., :2], boxes[..., 2:] / 2.0
    return tf.concat([center - half_size, center + half_size], axis=-1)


_TO_XYXY = {"xyxy": _as_boxes, "xywh": xywh_to_xyxy, "center_xywh": center_xywh_to_xyxy}
_FROM_XYXY = {"xyxy": _as_boxes, "xywh": xyxy_to_xywh, "center_xywh": xyxy_to_center_xywh}


def convert_boxes(boxes: TensorLike, source: str, target: str) -> tf.Tensor:
    """Converts boxes between any two of `"xyxy"`, `"xywh"` and `"center_xywh"`.

    Args:
        boxes: `(..., 4)` boxes in the `source` format.
        source: Format of `boxes`.
        target: Wanted format.

    Returns:
        `(..., 4)` float32 boxes in the `target` format.

    Raises:
        ValueError: For an unknown format name or a last axis that is not 4.

    Example:
        >>> convert_boxes([[10, 20, 30, 40]], "xywh", "xyxy").numpy().tolist()
        [[10.0, 20.0, 40.0, 60.0]]
    """
    _check_format(source)
    _check_format(target)
    return _FROM_XYXY[target](_TO_XYXY[source](boxes))


def box_area(boxes_xyxy: TensorLike) -> tf.Tensor:
    """Area of each box; 0 for degenerate boxes.

    Args:
        boxes_xyxy: `(..., 4)` boxes in `"xyxy"`.

    Returns:
        `(...)` float32 areas, never negative.
    """
    boxes_xyxy = _as_boxes(boxes_xyxy, "boxes_xyxy")
    size = tf.maximum(boxes_xyxy[..., 2:] - boxes_xyxy[..., :2], 0.0)
    return size[..., 0] * size[..., 1]


def pairwise_iou(boxes1_xyxy: TensorLike, boxes2_xyxy: TensorLike) -> tf.Tensor:
    """Intersection over union for every pair of boxes.

    Args:
        boxes1_xyxy: `(N, 4)` boxes in `"xyxy"` pixel coordinates.
        boxes2_xyxy: `(M, 4)` boxes in `"xyxy"` pixel coordinates.

    Returns:
        `(N, M)` float32 IoU in [0, 1]; 0 where the union is empty (two degenerate boxes).
        `N` or `M` may be 0.

    Example:
        >>> float(pairwise_iou([[0, 0, 2, 2]], [[1, 0, 3, 2]])[0, 0])  # 2 / (4 + 4 - 2)
        0.3333333432674408
    """
    boxes1_xyxy = _as_boxes(boxes1_xyxy, "boxes1_xyxy")
    boxes2_xyxy = _as_boxes(boxes2_xyxy, "boxes2_xyxy")
    if boxes1_xyxy.shape.rank != 2 or boxes2_xyxy.shape.rank != 2:
        raise ValueError(
            f"pairwise_iou needs (N, 4) and (M, 4), got {boxes1_xyxy.shape} and "
            f"{boxes2_xyxy.shape}."
        )
    top_left = tf.maximum(boxes1_xyxy[:, None, :2], boxes2_xyxy[None, :, :2])  # (N, M, 2)
    bottom_right = tf.minimum(boxes1_xyxy[:, None, 2:], boxes2_xyxy[None, :, 2:])  # (N, M, 2)
    overlap = tf.maximum(bottom_right - top_left, 0.0)  # (N, M, 2)
    intersection = overlap[..., 0] * overlap[..., 1]  # (N, M)
    union = box_area(boxes1_xyxy)[:, None] + box_area(boxes2_xyxy)[None, :] - intersection
    return tf.math.divide_no_nan(intersection, union)


def clip_boxes(boxes_xyxy: TensorLike, image_height: float, image_width: float) -> tf.Tensor:
    """Clips boxes to the image `[0, width] x [0, height]`.

    A box entirely outside the image becomes degenerate (area 0).

    Args:
        boxes_xyxy: `(..., 4)` boxes in `"xyxy"` pixel coordinates.
        image_height: Image height in pixels.
        image_width: Image width in pixels.

    Returns:
        `(..., 4)` float32 clipped boxes.
    """
    boxes_xyxy = _as_boxes(boxes_xyxy, "boxes_xyxy")
    static = not (tf.is_tensor(image_height) or tf.is_tensor(image_width))
    if static and (image_height <= 0 or image_width <= 0):
        raise ValueError(f"Image size must be positive, got {image_height}x{image_width}.")
    height, width = tf.cast(image_height, tf.float32), tf.cast(image_width, tf.float32)
    return tf.clip_by_value(boxes_xyxy, 0.0, tf.stack([width, height, width, height]))


def scale_boxes(boxes_xyxy: TensorLike, scale_x: float, scale_y: float) -> tf.Tensor:
    """Multiplies x coordinates by `scale_x` and y coordinates by `scale_y`.

    This is what resizing an image does to its boxes (1024 -> 512 px: scale 0.5).

    Args:
        boxes_xyxy: `(..., 4)` boxes in `"xyxy"` pixel coordinates.
        scale_x: Horizontal factor (new width / old width).
        scale_y: Vertical factor (new height / old height).

    Returns:
        `(..., 4)` float32 scaled boxes.
    """
    boxes_xyxy = _as_boxes(boxes_xyxy, "boxes_xyxy")
    scale_x, scale_y = tf.cast(scale_x, tf.float32), tf.cast(scale_y, tf.float32)
    return boxes_xyxy * tf.stack([scale_x, scale_y, scale_x, scale_y])
