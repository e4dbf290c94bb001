"""From model outputs to boxes: decoding every anchor, and detections after NMS.

Two modes, as in the blog:

* `decode_all` decodes **every** anchor's box and class probability, without NMS. The blog's
  author dropped NMS and drew all of them as a heatmap (Chapter 5).
* `detect` keeps the usual detector output: a score threshold, then non-maximum suppression,
  then at most `max_detections` boxes per image.

Boxes are in model-input pixels; `rescale_to_original` maps them back to the 1024 x 1024 image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from retinanet_lib.boxes import clip_boxes, scale_boxes
from retinanet_lib.config import DecodeConfig, RetinaNetConfig
from retinanet_lib.encoding import decode_box_deltas
from retinanet_lib.model import split_predictions

__all__ = [
    "Detections",
    "decode_all",
    "detect",
    "non_max_suppression",
    "predict_images",
    "rescale_to_original",
]

TensorLike = Any


def predict_images(model: Any, images: TensorLike, batch_size: int = 8) -> np.ndarray:
    """Model outputs for an in-memory `(N, S, S, 3)` batch of model inputs, `batch_size` at a
    time, by calling the model directly (no `tf.data` pipeline or re-traced function per call).

    Returns:
        `(N, num_anchors, 4 + K)` float32 array.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    outputs = [
        model(images[start : start + batch_size], training=False).numpy()
        for start in range(0, int(images.shape[0]), batch_size)
    ]
    if not outputs:
        return np.zeros((0, *model.output_shape[1:]), np.float32)
    return np.concatenate(outputs)


def decode_all(
    predictions: TensorLike, anchors_xyxy: TensorLike, cfg: RetinaNetConfig
) -> tuple[tf.Tensor, tf.Tensor]:
    """Every anchor's decoded box and class probabilities (no threshold, no NMS).

    Args:
        predictions: `(B, A, 4 + K)` model output.
        anchors_xyxy: `(A, 4)` the anchors the model was trained with.
        cfg: Detector config (box variance, image size for clipping).

    Returns:
        `boxes_xyxy (B, A, 4)` clipped to the input image, and `probabilities (B, A, K)`.
    """
    box_deltas, cls_logits = split_predictions(tf.convert_to_tensor(predictions, tf.float32))
    if box_deltas.shape[-2] is not None and box_deltas.shape[-2] != anchors_xyxy.shape[0]:
        raise ValueError(f"{box_deltas.shape[-2]} predictions but {anchors_xyxy.shape[0]} anchors.")
    boxes = decode_box_deltas(anchors_xyxy, box_deltas, cfg.encoder.box_variance)
    return clip_boxes(boxes, cfg.image_size, cfg.image_size), tf.sigmoid(cls_logits)


@dataclass(frozen=True)
class Detections:
    """Detections of a batch after NMS, padded to `max_detections`.

    Attributes:
        boxes_xyxy: `(B, D, 4)` float32 in model-input pixels.
        scores: `(B, D)` float32 probabilities, descending; 0 on padding.
        classes: `(B, D)` int32 class ids.
        num_detections: `(B,)` int32 valid entries per image.
    """

    boxes_xyxy: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    num_detections: np.ndarray

    def for_image(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`(boxes_xyxy (n, 4), scores (n,), classes (n,))` of one image, without padding."""
        count = int(self.num_detections[index])
        return (
            self.boxes_xyxy[index, :count],
            self.scores[index, :count],
            self.classes[index, :count],
        )


def non_max_suppression(
    boxes_xyxy: TensorLike, probabilities: TensorLike, decode_cfg: DecodeConfig
) -> Detections:
    """Score threshold + per-class NMS (`tf.image.combined_non_max_suppression`) on boxes that
    are already decoded (the output of `decode_all`).

    Args:
        boxes_xyxy: `(B, A, 4)` decoded boxes in model-input pixels.
        probabilities: `(B, A, K)` class probabilities.
        decode_cfg: Score threshold, NMS IoU threshold, detections per image.

    Returns:
        Padded `Detections`.
    """
    # combined NMS wants (B, A, 1, 4) boxes shared by all classes, in (y1, x1, y2, x2).
    boxes_yxyx = tf.gather(boxes_xyxy, [1, 0, 3, 2], axis=-1)[:, :, None, :]
    result = tf.image.combined_non_max_suppression(
        boxes_yxyx,
        probabilities,
        max_output_size_per_class=decode_cfg.max_detections,
        max_total_size=decode_cfg.max_detections,
        iou_threshold=decode_cfg.nms_iou_threshold,
        score_threshold=decode_cfg.score_threshold,
        clip_boxes=False,
    )
    return Detections(
        boxes_xyxy=tf.gather(result.nmsed_boxes, [1, 0, 3, 2], axis=-1).numpy(),
        scores=result.nmsed_scores.numpy(),
        classes=tf.cast(result.nmsed_classes, tf.int32).numpy(),
        num_detections=result.valid_detections.numpy().astype(np.int32),
    )


def detect(
    predictions: TensorLike,
    anchors_xyxy: TensorLike,
    cfg: RetinaNetConfig,
    decode_cfg: DecodeConfig | None = None,
) -> Detections:
    """`decode_all`, then score threshold + per-class NMS (`non_max_suppression`).

    Args:
        predictions: `(B, A, 4 + K)` model output.
        anchors_xyxy: `(A, 4)` anchors.
        cfg: Detector config.
        decode_cfg: Overrides `cfg.decode` (e.g. another score threshold).

    Returns:
        Padded `Detections`.
    """
    boxes_xyxy, probabilities = decode_all(predictions, anchors_xyxy, cfg)
    return non_max_suppression(boxes_xyxy, probabilities, decode_cfg or cfg.decode)


def rescale_to_original(boxes_xyxy: TensorLike, input_to_original_scale: float) -> np.ndarray:
    """Model-input boxes -> original-image boxes (e.g. x4 from 256 px back to 1024 px)."""
    return scale_boxes(boxes_xyxy, input_to_original_scale, input_to_original_scale).numpy()
