"""The RetinaNet loss: sigmoid focal loss for classes, smooth L1 for boxes.

Per image, with `P` positive anchors:

    loss = (sum of focal losses over positive and background anchors
            + box_loss_weight * sum of smooth-L1 losses over positive anchors) / max(P, 1)

Ignored anchors contribute nothing. An image with no positive anchor (no opacity) still trains
the classifier on its background anchors and has a finite loss. The keras.io example (and so the
blog) divides by `P` per image with `divide_no_nan`, which gives an image without positives a
loss of exactly 0: on RSNA, where most images have no opacity, their background would never be
trained. Dividing by `max(P, 1)` keeps them; Keras then averages over the batch.

With `LossConfig.hard_negative_ratio` set, the classification sum runs over the positive
anchors and only the hardest background anchors of each image (online hard example mining,
`hard_negative_mask`), the sampling heuristic the focal loss was designed to replace.

For a model with an image head (`ModelConfig.image_head`), each image adds
`LossConfig.image_loss_weight` times the binary cross-entropy of its "any opacity?" logit;
its label is 1 when any of its anchors is positive.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from retinanet_lib.config import IGNORE_CLASS, LossConfig
from retinanet_lib.model import split_predictions
from retinanet_lib.targets import split_targets

__all__ = ["RetinaNetLoss", "hard_negative_mask", "sigmoid_focal_loss", "smooth_l1_loss"]

TensorLike = Any


def sigmoid_focal_loss(
    labels: TensorLike, logits: TensorLike, alpha: float | None = 0.25, gamma: float = 2.0
) -> Any:
    """Element-wise focal loss `-alpha_t (1 - p_t)^gamma log(p_t)`.

    `p_t` is the predicted probability of the true label: `p` where `labels` is 1, `1 - p`
    where it is 0. With `gamma = 0` this is (alpha-balanced) binary cross-entropy; with
    `alpha=None` as well, plain binary cross-entropy. Computed from logits, so it is stable for
    any logit value.

    Args:
        labels: `(...)` 0/1 targets.
        logits: `(...)` raw class scores, same shape.
        alpha: Weight of positives (negatives get `1 - alpha`), or `None` for no weighting.
        gamma: Focusing parameter, >= 0.

    Returns:
        `(...)` float32 losses.
    """
    labels = ops.cast(labels, "float32")
    logits = ops.cast(logits, "float32")
    cross_entropy = ops.binary_crossentropy(labels, logits, from_logits=True)  # -log(p_t)
    probs = ops.sigmoid(logits)
    p_t = labels * probs + (1.0 - labels) * (1.0 - probs)
    loss = cross_entropy if gamma == 0 else ops.power(1.0 - p_t, gamma) * cross_entropy
    if alpha is not None:
        loss = (labels * alpha + (1.0 - labels) * (1.0 - alpha)) * loss
    return loss


def smooth_l1_loss(y_true: TensorLike, y_pred: TensorLike, delta: float = 1.0) -> Any:
    """Element-wise smooth L1: `0.5 d^2 / delta` for `|d| < delta`, else `|d| - 0.5 delta`.

    Quadratic near zero (smooth gradients for small errors), linear beyond `delta` (robust to
    large ones); continuous with a continuous derivative at `|d| = delta`, for any `delta`.

    Returns:
        `(...)` float32 losses.
    """
    if delta <= 0:
        raise ValueError(f"delta must be positive, got {delta}.")
    difference = ops.abs(ops.cast(y_true, "float32") - ops.cast(y_pred, "float32"))
    return ops.where(difference < delta, 0.5 * difference**2 / delta, difference - 0.5 * delta)


def hard_negative_mask(
    anchor_losses: TensorLike,
    negative_mask: TensorLike,
    num_positives: TensorLike,
    ratio: float,
    minimum: int,
) -> Any:
    """The background anchors online hard example mining keeps: per image, the
    `max(ratio x P, minimum)` negatives with the highest loss (all of them if there are fewer).

    Ranks come from two `argsort`s over the anchors, so there is no loop over images or
    anchors; the selection carries no gradient (the loss of a kept anchor does).

    Args:
        anchor_losses: `(B, A)` classification loss of every anchor (>= 0).
        negative_mask: `(B, A)` 1.0 on background anchors, 0.0 elsewhere.
        num_positives: `(B,)` positive anchors per image.
        ratio: Negatives kept per positive.
        minimum: Negatives kept at least, per image.

    Returns:
        `(B, A)` float32 mask, 1.0 on the kept negatives.
    """
    negative_mask = ops.cast(negative_mask, "float32")
    candidates = ops.where(negative_mask > 0, ops.cast(anchor_losses, "float32"), -1.0)
    order = ops.argsort(-ops.stop_gradient(candidates), axis=-1)  # hardest first
    rank = ops.argsort(order, axis=-1)  # (B, A) position of each anchor in that order
    wanted = ops.maximum(ratio * ops.cast(num_positives, "float32"), float(minimum))
    keep = ops.minimum(wanted, ops.sum(negative_mask, axis=-1))  # (B,)
    return ops.cast(ops.cast(rank, "float32") < keep[:, None], "float32") * negative_mask


@keras.saving.register_keras_serializable(package="retinanet_lib")
class RetinaNetLoss(keras.losses.Loss):
    """Focal + smooth L1 loss on packed targets and predictions.

    Args:
        num_classes: Number of classes `K`.
        cfg: Loss settings.

    Call args:
        y_true: `(B, A, 5)` packed targets from `LabelEncoder` (deltas, class code).
        y_pred: `(B, A, 4 + K)` model output, or `(B, A, 4 + K + 1)` from a model with an
            image head: the last channel is then its image-level logit, trained with binary
            cross-entropy.

    Returns:
        `(B,)` per-image losses (Keras averages them).
    """

    def __init__(self, num_classes: int = 1, cfg: LossConfig | None = None, **kwargs) -> None:
        kwargs.setdefault("name", "retinanet_loss")
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.cfg = cfg or LossConfig()

    def components(self, y_true: TensorLike, y_pred: TensorLike) -> dict[str, Any]:
        """Per-image classification and box losses (already normalised), and positives."""
        box_targets, class_targets = split_targets(y_true)  # (B, A, 4), (B, A)
        channels = y_pred.shape[-1]
        image_head = channels == 5 + self.num_classes  # one channel more: the image logit
        if channels is not None and channels not in (4 + self.num_classes, 5 + self.num_classes):
            raise ValueError(
                f"Predictions carry {y_pred.shape[-1]} channels per anchor; the loss expects "
                f"{4 + self.num_classes} ({self.num_classes} classes), or one more from a "
                "model with an image head."
            )
        box_deltas, cls_logits = split_predictions(y_pred[..., : 4 + self.num_classes])
        positive_mask = ops.cast(class_targets >= 0, "float32")  # (B, A)
        keep_mask = ops.cast(ops.not_equal(class_targets, float(IGNORE_CLASS)), "float32")
        # Background (-1) and ignore (-2) codes one-hot to all-zero rows.
        labels = ops.one_hot(ops.cast(class_targets, "int32"), self.num_classes)  # (B, A, K)
        focal = sigmoid_focal_loss(labels, cls_logits, self.cfg.alpha, self.cfg.gamma)
        anchor_losses = ops.sum(focal, axis=-1)  # (B, A)
        num_positives = ops.sum(positive_mask, axis=-1)  # (B,)
        if self.cfg.hard_negative_ratio is not None:  # OHEM: the hardest negatives only
            keep_mask = positive_mask + hard_negative_mask(
                anchor_losses,
                keep_mask - positive_mask,
                num_positives,
                self.cfg.hard_negative_ratio,
                self.cfg.hard_negative_minimum,
            )
        cls_loss = ops.sum(anchor_losses * keep_mask, axis=-1)  # (B,)
        box = ops.sum(smooth_l1_loss(box_targets, box_deltas, self.cfg.smooth_l1_delta), axis=-1)
        box_loss = ops.sum(box * positive_mask, axis=-1)  # (B,)
        normalizer = ops.maximum(num_positives, 1.0)
        parts = {
            "classification": cls_loss / normalizer,
            "box": self.cfg.box_loss_weight * box_loss / normalizer,
            "num_positives": num_positives,
        }
        if image_head:  # "any opacity?": plain BCE, label 1 if any anchor is positive
            has_opacity = ops.cast(num_positives > 0, "float32")  # (B,)
            bce = sigmoid_focal_loss(has_opacity, y_pred[:, 0, -1], alpha=None, gamma=0.0)
            parts["image"] = self.cfg.image_loss_weight * bce
        return parts

    def call(self, y_true, y_pred):
        parts = self.components(y_true, y_pred)
        total = parts["classification"] + parts["box"]
        return total + parts["image"] if "image" in parts else total

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "cfg": vars(self.cfg).copy()})
        return config

    @classmethod
    def from_config(cls, config: dict) -> RetinaNetLoss:
        config = dict(config)
        config["cfg"] = LossConfig(**config.pop("cfg"))
        return cls(**config)
