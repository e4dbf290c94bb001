"""Matching anchors to ground-truth boxes, and encoding/decoding box deltas.

Training targets for one image are packed as a `(num_anchors, 5)` float32 tensor:
columns 0-3 are the box deltas `(dx, dy, dw, dh) / box_variance`, column 4 the class target:
the class id for a positive anchor, `BACKGROUND_CLASS` (-1) or `IGNORE_CLASS` (-2) otherwise.
Use `split_targets` (from `retinanet_lib.targets`, re-exported here) rather than slicing by
hand.

An image with no boxes (most RSNA images) encodes to all-background targets with zero deltas.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from retinanet_lib.anchors import generate_anchors
from retinanet_lib.boxes import _as_boxes, center_xywh_to_xyxy, pairwise_iou, xyxy_to_center_xywh
from retinanet_lib.config import (
    BACKGROUND_CLASS,
    IGNORE_CLASS,
    MAX_DELTA_LOG_SCALE,
    EncoderConfig,
    RetinaNetConfig,
)
from retinanet_lib.targets import split_targets

__all__ = [
    "LabelEncoder",
    "decode_box_deltas",
    "encode_box_deltas",
    "match_anchors",
    "split_targets",
]

TensorLike = Any


def match_anchors(
    iou_anchor_gt: TensorLike, cfg: EncoderConfig
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Assigns each anchor to its best ground-truth box, or to background, or ignores it.

    Args:
        iou_anchor_gt: `(A, G)` IoU of every anchor with every ground-truth box; `G` may be 0.
        cfg: Thresholds (`match_iou`, `ignore_iou`) and the low-quality-match switch.

    Returns:
        matched_gt_index: `(A,)` int32 index of the matched box for positive anchors, -1
            elsewhere.
        positive_mask: `(A,)` bool, best IoU >= `match_iou` (or a low-quality match).
        ignore_mask: `(A,)` bool, `ignore_iou` <= best IoU < `match_iou` and not positive.
        Anchors in neither mask are background.
    """
    iou = tf.convert_to_tensor(iou_anchor_gt, tf.float32)
    if iou.shape.rank != 2:
        raise ValueError(f"iou_anchor_gt must have shape (A, G), got {iou.shape}.")
    # A zero column makes max/argmax well defined when there are no boxes (G = 0).
    padded = tf.concat([iou, tf.zeros([tf.shape(iou)[0], 1])], axis=1)  # (A, G + 1)
    best_iou = tf.reduce_max(padded, axis=1)  # (A,)
    best_index = tf.argmax(padded, axis=1, output_type=tf.int32)  # (A,)
    positive_mask = best_iou >= cfg.match_iou
    if cfg.match_low_quality:
        best_iou_per_gt = tf.reduce_max(padded[:, :-1], axis=0, keepdims=True)  # (1, G)
        is_best_for_a_gt = (iou >= best_iou_per_gt) & (iou > 0.0)  # (A, G)
        positive_mask |= tf.reduce_any(is_best_for_a_gt, axis=1)
    ignore_mask = (best_iou >= cfg.ignore_iou) & ~positive_mask
    matched_gt_index = tf.where(positive_mask, best_index, -1)
    return matched_gt_index, positive_mask, ignore_mask


def encode_box_deltas(
    anchors_xyxy: TensorLike, boxes_xyxy: TensorLike, box_variance: tuple[float, ...]
) -> tf.Tensor:
    """Offsets that move each anchor onto its box, divided by the variance.

    `[(gx - ax) / aw, (gy - ay) / ah, log(gw / aw), log(gh / ah)] / box_variance`, with
    `(ax, ay, aw, ah)` and `(gx, gy, gw, gh)` the anchor and box in `"center_xywh"`.

    Args:
        anchors_xyxy: `(..., 4)` anchors in `"xyxy"`.
        boxes_xyxy: `(..., 4)` boxes in `"xyxy"`, broadcastable against the anchors. Boxes must
            have positive width and height (log of 0 is -inf).
        box_variance: Four divisors.

    Returns:
        `(..., 4)` float32 deltas.
    """
    anchors = xyxy_to_center_xywh(anchors_xyxy)
    boxes = xyxy_to_center_xywh(boxes_xyxy)
    center_offsets = (boxes[..., :2] - anchors[..., :2]) / anchors[..., 2:]
    log_sizes = tf.math.log(boxes[..., 2:] / anchors[..., 2:])
    deltas = tf.concat([center_offsets, log_sizes], axis=-1)
    return deltas / tf.constant(box_variance, tf.float32)


def decode_box_deltas(
    anchors_xyxy: TensorLike, box_deltas: TensorLike, box_variance: tuple[float, ...]
) -> tf.Tensor:
    """Inverse of `encode_box_deltas`: applies deltas to anchors.

    Size deltas are clamped at `MAX_DELTA_LOG_SCALE` so an untrained head cannot overflow
    `exp`; encoded targets of real boxes are far below that bound.

    Args:
        anchors_xyxy: `(A, 4)` anchors in `"xyxy"`.
        box_deltas: `(..., A, 4)` deltas as produced by `encode_box_deltas` or the box head.
        box_variance: Four divisors used at encoding.

    Returns:
        `(..., A, 4)` float32 boxes in `"xyxy"`.
    """
    anchors = xyxy_to_center_xywh(anchors_xyxy)
    deltas = _as_boxes(box_deltas, "box_deltas") * tf.constant(box_variance, tf.float32)
    centers = deltas[..., :2] * anchors[..., 2:] + anchors[..., :2]
    sizes = tf.exp(tf.minimum(deltas[..., 2:], MAX_DELTA_LOG_SCALE)) * anchors[..., 2:]
    return center_xywh_to_xyxy(tf.concat([centers, sizes], axis=-1))


def _checked_inputs(gt_boxes_xyxy, gt_classes, batched: bool, caller: str):
    """Converts boxes and classes and checks their ranks (`(G, 4)`/`(G,)`, or batched)."""
    gt_boxes_xyxy = _as_boxes(gt_boxes_xyxy, "gt_boxes_xyxy")
    gt_classes = tf.convert_to_tensor(gt_classes)
    box_rank, lead = (3, "B, G") if batched else (2, "G")
    if gt_boxes_xyxy.shape.rank != box_rank or gt_classes.shape.rank != box_rank - 1:
        raise ValueError(
            f"{caller} needs gt_boxes_xyxy ({lead}, 4) and gt_classes ({lead}), got "
            f"{gt_boxes_xyxy.shape} and {gt_classes.shape}."
        )
    return gt_boxes_xyxy, gt_classes


class LabelEncoder:
    """Turns ground-truth boxes into per-anchor training targets.

    The anchors are generated once from the config; the decoder must use the same ones
    (`encoder.anchors_xyxy`).

    Args:
        cfg: The detector config (anchors, encoder thresholds, box variance, image size).
        image_height: Model input height; defaults to `cfg.image_size`.
        image_width: Model input width; defaults to `cfg.image_size`.

    Example:
        >>> encoder = LabelEncoder(RetinaNetConfig(image_size=128))
        >>> targets = encoder.encode_sample(tf.zeros((0, 4)), tf.zeros((0,), tf.int32))
        >>> targets.shape.as_list(), float(tf.reduce_max(targets[:, 4]))
        ([3069, 5], -1.0)
    """

    def __init__(
        self,
        cfg: RetinaNetConfig,
        image_height: int | None = None,
        image_width: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.image_height = int(image_height or cfg.image_size)
        self.image_width = int(image_width or cfg.image_size)
        self.anchors_xyxy = generate_anchors(self.image_height, self.image_width, cfg.anchors)

    @property
    def num_anchors(self) -> int:
        return int(self.anchors_xyxy.shape[0])

    def _match(self, gt_boxes_xyxy: TensorLike, gt_classes: TensorLike):
        gt_boxes_xyxy, gt_classes = _checked_inputs(
            gt_boxes_xyxy, gt_classes, batched=False, caller="encode_sample"
        )
        iou = pairwise_iou(self.anchors_xyxy, gt_boxes_xyxy)  # (A, G)
        matched, positive_mask, ignore_mask = match_anchors(iou, self.cfg.encoder)
        return gt_boxes_xyxy, tf.cast(gt_classes, tf.float32), matched, positive_mask, ignore_mask

    def encode_sample(self, gt_boxes_xyxy: TensorLike, gt_classes: TensorLike) -> tf.Tensor:
        """Targets for one image.

        Args:
            gt_boxes_xyxy: `(G, 4)` boxes in `"xyxy"` model-input pixels; `G` may be 0.
                Zero-area rows (padding, degenerate boxes) never match an anchor.
            gt_classes: `(G,)` integer class ids in `[0, num_classes)`.

        Returns:
            `(num_anchors, 5)` float32 packed targets (see module docstring).
        """
        return self._encode(*self._match(gt_boxes_xyxy, gt_classes))

    def _encode(self, gt_boxes_xyxy, gt_classes, matched, positive_mask, ignore_mask):
        safe_index = tf.maximum(matched, 0)  # any valid row; only positives are kept below
        # A dummy unit box keeps the gather valid when there are no boxes at all.
        padded_boxes = tf.concat([gt_boxes_xyxy, tf.constant([[0.0, 0.0, 1.0, 1.0]])], axis=0)
        padded_classes = tf.concat([gt_classes, tf.constant([0.0])], axis=0)
        matched_boxes = tf.gather(padded_boxes, safe_index)  # (A, 4)
        deltas = encode_box_deltas(self.anchors_xyxy, matched_boxes, self.cfg.encoder.box_variance)
        deltas = tf.where(positive_mask[:, None], deltas, 0.0)  # (A, 4)
        classes = tf.where(
            positive_mask,
            tf.gather(padded_classes, safe_index),
            tf.where(ignore_mask, float(IGNORE_CLASS), float(BACKGROUND_CLASS)),
        )  # (A,)
        return tf.concat([deltas, classes[:, None]], axis=-1)  # (A, 5)

    def encode_sample_with_stats(
        self, gt_boxes_xyxy: TensorLike, gt_classes: TensorLike
    ) -> tuple[tf.Tensor, dict[str, int]]:
        """`encode_sample` plus counts: positive, ignored and background anchors, and
        `num_unmatched_gt`, the ground-truth boxes that no anchor was assigned to (they give
        no box-regression signal; use `match_low_quality=True` or other anchor sizes).

        Eager mode only (returns Python ints).
        """
        gt_boxes_xyxy, gt_classes, matched, positive_mask, ignore_mask = self._match(
            gt_boxes_xyxy, gt_classes
        )
        targets = self._encode(gt_boxes_xyxy, gt_classes, matched, positive_mask, ignore_mask)
        num_gt = int(gt_boxes_xyxy.shape[0])
        matched_gt = tf.unique(tf.boolean_mask(matched, positive_mask))[0]
        num_positive = int(tf.reduce_sum(tf.cast(positive_mask, tf.int32)))
        num_ignored = int(tf.reduce_sum(tf.cast(ignore_mask, tf.int32)))
        stats = {
            "num_positive": num_positive,
            "num_ignored": num_ignored,
            "num_background": self.num_anchors - num_positive - num_ignored,
            "num_unmatched_gt": num_gt - int(tf.size(matched_gt)),
        }
        return targets, stats

    def encode_batch(self, gt_boxes_xyxy: TensorLike, gt_classes: TensorLike) -> tf.Tensor:
        """Targets for a padded batch.

        Args:
            gt_boxes_xyxy: `(B, G, 4)` boxes in `"xyxy"`, padded with all-zero rows.
            gt_classes: `(B, G)` class ids (any value on padding rows).

        Returns:
            `(B, num_anchors, 5)` float32 packed targets.
        """
        gt_boxes_xyxy, gt_classes = _checked_inputs(
            gt_boxes_xyxy, gt_classes, batched=True, caller="encode_batch"
        )
        return tf.map_fn(
            lambda sample: self.encode_sample(sample[0], sample[1]),
            (gt_boxes_xyxy, gt_classes),
            fn_output_signature=tf.TensorSpec((self.num_anchors, 5), tf.float32),
        )

    def decode(self, box_deltas: TensorLike) -> tf.Tensor:
        """Boxes in `"xyxy"` from `(..., num_anchors, 4)` deltas, with this encoder's anchors."""
        return decode_box_deltas(self.anchors_xyxy, box_deltas, self.cfg.encoder.box_variance)
