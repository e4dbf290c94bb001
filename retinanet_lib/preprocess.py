"""From a decoded X-ray to a model input: CLAHE, resize, channels, augmentation.

Image-side steps that run once per file (CLAHE, resize) use OpenCV on NumPy arrays; they are
cached by the pipeline. Steps that run every epoch (augmentation, backbone preprocessing) are
TensorFlow ops so they run inside `tf.data` in parallel. Every step that moves pixels moves the
boxes by exactly the same transform.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tensorflow as tf

from retinanet_lib.boxes import _as_boxes, clip_boxes, scale_boxes
from retinanet_lib.config import BACKBONES, DataConfig
from retinanet_lib.dicom_io import read_dicom_image

__all__ = [
    "apply_clahe",
    "augment",
    "load_preprocessed_image",
    "resize_image",
    "to_model_input",
    "transform_boxes",
]

TensorLike = Any


def apply_clahe(image: np.ndarray, clip_limit: float, tile_grid: int) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (OpenCV).

    Args:
        image: `(H, W)` uint8 grayscale image.
        clip_limit: Contrast limit per tile.
        tile_grid: Number of tiles along each side.

    Returns:
        `(H, W)` uint8 enhanced image.
    """
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"apply_clahe needs a 2-D uint8 image, got {image.dtype} {image.shape}.")
    clahe = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(tile_grid, tile_grid))
    return clahe.apply(image)


def resize_image(image: np.ndarray, size: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Resizes to `size x size` (area interpolation when shrinking).

    Returns:
        The resized image and `(scale_x, scale_y)`, the factors to apply to boxes (new / old);
        `1 / scale` maps boxes back to the original image.
    """
    height, width = image.shape[:2]
    shrinking = size < min(height, width)
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(image, (size, size), interpolation=interpolation)
    return resized, (size / width, size / height)


def load_preprocessed_image(
    path: str | Path, size: int, cfg: DataConfig
) -> tuple[np.ndarray, tuple[float, float]]:
    """DICOM -> 8-bit -> CLAHE (at the original resolution, as in the blog) -> resize.

    Returns:
        `(size, size)` uint8 image and the `(scale_x, scale_y)` applied to it.
    """
    image = read_dicom_image(path)
    image = apply_clahe(image, cfg.clahe_clip_limit, cfg.clahe_tile_grid)
    return resize_image(image, size)


def to_model_input(image: TensorLike, backbone: str) -> tf.Tensor:
    """Grayscale -> the 3-channel float input the backbone expects.

    `"resnet50"` uses Keras' own `resnet50.preprocess_input` (ImageNet "caffe" mode: BGR
    channel order, ImageNet mean subtracted); the small backbone, trained from scratch, takes
    values scaled to [-1, 1].

    Args:
        image: `(..., H, W)` or `(..., H, W, 1)` image with values in [0, 255].
        backbone: One of `BACKBONES`.

    Returns:
        `(..., H, W, 3)` float32 tensor.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}.")
    image = tf.cast(image, tf.float32)
    if image.shape.rank is not None and (image.shape.rank < 2):
        raise ValueError(f"image must be at least 2-D, got shape {image.shape}.")
    if image.shape[-1] != 1:
        image = image[..., None]
    image = tf.repeat(image, 3, axis=-1)
    if backbone == "resnet50":
        from keras.applications import resnet50

        return resnet50.preprocess_input(image)
    return image / 127.5 - 1.0


def _affine_matrix(angle: tf.Tensor, shift: tf.Tensor, flip: tf.Tensor, center):
    """3x3 forward transform (input -> output) about `center`: flip, rotate, shift."""
    flip_sign = tf.where(flip, -1.0, 1.0)
    flip_offset = tf.where(flip, 2.0 * center, 0.0)
    flip_matrix = tf.stack([[flip_sign, 0.0, flip_offset], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    cos, sin = tf.cos(angle), tf.sin(angle)
    # p' = R (p - c) + c + shift
    rotate = tf.stack(
        [
            [cos, -sin, center - cos * center + sin * center + shift[0]],
            [sin, cos, center - sin * center - cos * center + shift[1]],
            [0.0, 0.0, 1.0],
        ]
    )
    return rotate @ flip_matrix


def transform_boxes(boxes_xyxy: TensorLike, matrix: TensorLike, size: float) -> tf.Tensor:
    """Applies a 3x3 affine transform to boxes: the axis-aligned envelope of the moved corners,
    clipped to the image.

    Args:
        boxes_xyxy: `(G, 4)` boxes in `"xyxy"` (continuous pixel coordinates).
        matrix: `(3, 3)` forward transform in continuous coordinates.
        size: Image side (for clipping).

    Returns:
        `(G, 4)` float32 boxes; a box moved entirely out of the image becomes degenerate
        (zero area) and so never matches an anchor.
    """
    boxes = _as_boxes(boxes_xyxy, "boxes_xyxy")
    x0, y0, x1, y1 = tf.unstack(boxes, axis=-1)
    corners_x = tf.stack([x0, x1, x1, x0], axis=-1)  # (G, 4)
    corners_y = tf.stack([y0, y0, y1, y1], axis=-1)  # (G, 4)
    matrix = tf.convert_to_tensor(matrix, tf.float32)
    new_x = matrix[0, 0] * corners_x + matrix[0, 1] * corners_y + matrix[0, 2]
    new_y = matrix[1, 0] * corners_x + matrix[1, 1] * corners_y + matrix[1, 2]
    moved = tf.stack(
        [
            tf.reduce_min(new_x, axis=-1),
            tf.reduce_min(new_y, axis=-1),
            tf.reduce_max(new_x, axis=-1),
            tf.reduce_max(new_y, axis=-1),
        ],
        axis=-1,
    )
    return clip_boxes(moved, size, size)


def augment(
    image: TensorLike, boxes_xyxy: TensorLike, cfg: DataConfig, seed: TensorLike
) -> tuple[tf.Tensor, tf.Tensor]:
    """Random horizontal flip, small rotation and shift of a square image and its boxes.

    The blog's diagnosis of its results was a position bias (lesions always in the same
    places); moving them around during training is its suggested fix. Deterministic given
    `seed` (stateless random ops), so runs are reproducible.

    Args:
        image: `(S, S)` or `(S, S, C)` image.
        boxes_xyxy: `(G, 4)` boxes in `"xyxy"` pixels of that image.
        cfg: Which augmentations and how strong.
        seed: `(2,)` int seed for the stateless random ops.

    Returns:
        The transformed image (same shape and dtype float32; uncovered pixels are 0) and boxes.
    """
    image = tf.convert_to_tensor(image)
    squeeze = image.shape.rank == 2
    image = tf.cast(image[..., None] if squeeze else image, tf.float32)
    size = image.shape[0] or tf.shape(image)[0]
    size_f = tf.cast(size, tf.float32)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=3)
    flip = cfg.horizontal_flip & (tf.random.stateless_uniform([], seeds[0]) < 0.5)
    max_angle = cfg.max_rotation_degrees * math.pi / 180.0
    angle = tf.random.stateless_uniform([], seeds[1], -max_angle, max_angle)
    max_shift = cfg.max_shift_fraction * size_f
    shift = tf.random.stateless_uniform([2], seeds[2], -1.0, 1.0) * max_shift
    # Continuous coordinates (pixel i covers [i, i + 1)) for boxes; pixel indices for pixels.
    box_matrix = _affine_matrix(angle, shift, flip, size_f / 2.0)
    pixel_matrix = _affine_matrix(angle, shift, flip, (size_f - 1.0) / 2.0)
    inverse = tf.linalg.inv(pixel_matrix)  # the op maps output pixels to input pixels
    transform = tf.reshape(inverse, [-1])[:8] / inverse[2, 2]
    moved = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=transform[None],
        output_shape=tf.shape(image)[:2],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )[0]
    moved_boxes = transform_boxes(boxes_xyxy, box_matrix, size_f)
    return (moved[..., 0] if squeeze else moved), moved_boxes


def resize_boxes_to_input(boxes_xyxy: TensorLike, scale_xy: TensorLike) -> tf.Tensor:
    """Scales original-image boxes by `(scale_x, scale_y)` from `resize_image`."""
    scale_xy = tf.convert_to_tensor(scale_xy, tf.float32)
    return scale_boxes(boxes_xyxy, scale_xy[0], scale_xy[1])
