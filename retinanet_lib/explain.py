"""Where does the detector look? Grad-CAM and occlusion sensitivity for RetinaNet.

Two answers to a question the blog's box-score map answers a third way:

* **Grad-CAM** (Selvaraju et al., 2017) asks which *features* drive a score. Take the gradient
  of the target score with respect to a feature map `A` (`(h, w, C)`, e.g. a pyramid level),
  average it over the map's positions to get one weight per channel,
  `alpha_c = mean_hw d score / d A[h, w, c]`, and form `ReLU(sum_c alpha_c A[:, :, c])`:
  positive evidence only, at the map's resolution, then upsampled to the input.
* **Occlusion sensitivity** (Zeiler and Fergus, 2014) asks which *pixels* the score needs, with
  no gradient and no knowledge of the network: cover a patch of the image, run the model, and
  record how far the target score falls; slide the patch over the image. The occluded copies
  are built and run in batches, not one by one, and each pixel averages the drops of the
  patches that covered it with the heatmap's difference arrays.

The target is a score computed from the model's `(B, A, 4 + K)` output: by default the
highest class score over all anchors (`top_anchor_score`), or one anchor's logit
(`anchor_logit`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import keras
import numpy as np
import tensorflow as tf

from retinanet_lib.heatmap import covering_mean

__all__ = ["anchor_logit", "grad_cam", "occlusion_map", "top_anchor_score"]

TensorLike = Any
Target = Callable[[Any], Any]  # (B, A, 4 + K) predictions -> (B,) scores


def top_anchor_score(predictions: TensorLike) -> Any:
    """`(B,)`: the highest class score (sigmoid) over all anchors and classes of each image."""
    logits = predictions[..., 4:]
    return tf.reduce_max(tf.sigmoid(logits), axis=[1, 2])


def anchor_logit(anchor_index: int, class_index: int = 0) -> Target:
    """A target: the class logit of one anchor (e.g. a chosen detection's), per image."""

    def target(predictions: TensorLike) -> Any:
        return predictions[:, anchor_index, 4 + class_index]

    return target


def _feature_model(model: keras.Model, layer_name: str, output_index: int | None) -> keras.Model:
    """The model with a second output: the feature map Grad-CAM weighs."""
    features = model.get_layer(layer_name).output
    if output_index is not None:
        features = features[output_index]
    return keras.Model(model.inputs, [features, model.outputs[0]])


def grad_cam(
    model: keras.Model,
    images: TensorLike,
    layer_name: str,
    output_index: int | None = None,
    target: Target = top_anchor_score,
) -> np.ndarray:
    """Grad-CAM maps of `target` on the feature map of one layer, upsampled to the input.

    Args:
        model: A functional model (e.g. `build_retinanet`'s).
        images: `(B, H, W, C)` model inputs (already preprocessed).
        layer_name: The layer whose output is the feature map (`"fpn"` for the pyramid).
        output_index: For a layer with several outputs, which one (the FPN's: 0 is P3).
        target: `(B, A, 4 + K) predictions -> (B,)` scores to explain.

    Returns:
        `(B, H, W)` float32 maps in [0, 1], each divided by its maximum (all 0 where no
        positive evidence exists).
    """
    images = tf.convert_to_tensor(images, tf.float32)
    feature_model = _feature_model(model, layer_name, output_index)
    with tf.GradientTape() as tape:
        features, predictions = feature_model(images, training=False)
        scores = target(predictions)
    gradients = tape.gradient(scores, features)  # (B, h, w, C)
    weights = tf.reduce_mean(gradients, axis=[1, 2], keepdims=True)  # (B, 1, 1, C)
    cams = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1)).numpy()  # (B, h, w)
    height, width = int(images.shape[1]), int(images.shape[2])
    upsampled = np.stack(
        [cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR) for cam in cams]
    )
    peaks = upsampled.reshape(len(upsampled), -1).max(axis=1)
    scale = np.where(peaks > 0, peaks, 1.0)[:, None, None]
    return (upsampled / scale).astype(np.float32)


def occlusion_map(
    model: keras.Model,
    image: TensorLike,
    patch_size: int,
    stride: int,
    fill_value: float = 0.0,
    target: Target = top_anchor_score,
    batch_size: int = 16,
) -> np.ndarray:
    """How far `target` falls when each patch of the image is covered.

    Every `patch_size` square on a `stride` grid is set to `fill_value` in a copy of the
    image; the copies run through the model `batch_size` at a time. A pixel's value is the
    mean drop over the patches that covered it (`heatmap.covering_mean`).

    Args:
        model: The model.
        image: `(H, W, C)` one model input (already preprocessed).
        patch_size: Side of the square patch, in pixels.
        stride: Step between patch positions (`<= patch_size` covers every pixel).
        fill_value: What a covered pixel becomes (0: the preprocessed mean grey).
        target: `(B, A, 4 + K) predictions -> (B,)` scores.
        batch_size: Occluded copies per forward pass.

    Returns:
        `(H, W)` float32 drops (positive: covering the pixel lowers the score).
    """
    image = np.asarray(image, np.float32)
    height, width = image.shape[:2]
    if not 0 < stride <= patch_size or patch_size > min(height, width):
        raise ValueError(
            f"Need 0 < stride <= patch_size <= image side, got stride {stride}, patch "
            f"{patch_size}, image {height} x {width}."
        )
    tops = np.arange(0, height - patch_size + 1, stride)
    lefts = np.arange(0, width - patch_size + 1, stride)
    top_grid, left_grid = (a.ravel() for a in np.meshgrid(tops, lefts, indexing="ij"))
    rows, cols = np.arange(height), np.arange(width)
    base = float(np.asarray(target(model(image[None], training=False)))[0])
    drops = np.zeros(len(top_grid), np.float32)
    for start in range(0, len(top_grid), batch_size):  # batches of occluded copies
        top = top_grid[start : start + batch_size, None]
        left = left_grid[start : start + batch_size, None]
        covered_rows = (rows >= top) & (rows < top + patch_size)  # (n, H)
        covered_cols = (cols >= left) & (cols < left + patch_size)  # (n, W)
        covered = covered_rows[:, :, None] & covered_cols[:, None, :]  # (n, H, W)
        batch = np.where(covered[..., None], fill_value, image[None])
        scores = np.asarray(target(model(batch, training=False)))
        drops[start : start + len(scores)] = base - scores
    patches_xyxy = np.stack(
        [left_grid, top_grid, left_grid + patch_size, top_grid + patch_size], axis=1
    )
    return covering_mean(patches_xyxy, drops, (height, width)).astype(np.float32)
