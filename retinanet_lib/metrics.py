"""The RSNA Pneumonia Detection Challenge metric, precision and recall.

Per image and IoU threshold `t` in 0.40, 0.45, ..., 0.75: predictions are visited by decreasing
confidence; each is a true positive if some still-unmatched ground-truth box overlaps it with
IoU >= `t` (it takes the one with the highest IoU), otherwise a false positive; ground-truth boxes
left unmatched are false negatives. The image scores `TP / (TP + FP + FN)` at each threshold,
averaged over thresholds. An image with neither ground truth nor predictions is **not counted**;
an image with no ground truth but some predictions scores 0. The metric is the mean over counted
images.

The greedy matching is sequential by definition (a match removes a ground-truth box for the
predictions that follow). The implementation visits prediction *ranks* in a loop of
`max_detections` steps, each step vectorized over all images and all thresholds at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["RSNA_IOU_THRESHOLDS", "DetectionScores", "pad_boxes", "rsna_scores"]

#: The competition's IoU thresholds: 0.40, 0.45, ..., 0.75.
RSNA_IOU_THRESHOLDS = np.round(np.arange(0.40, 0.751, 0.05), 2)


@dataclass(frozen=True)
class DetectionScores:
    """Evaluation of a set of images.

    Attributes:
        rsna_metric: Mean over counted images of the per-image score (NaN if none counted).
        per_image: `(I,)` per-image scores, NaN for images that are not counted.
        precision: Overall TP / (TP + FP) at IoU 0.5.
        recall: Overall TP / (TP + FN) at IoU 0.5.
        true_positives: `(T,)` totals per threshold; likewise the next two.
        false_positives: `(T,)`.
        false_negatives: `(T,)`.
    """

    rsna_metric: float
    per_image: np.ndarray
    precision: float
    recall: float
    true_positives: np.ndarray
    false_positives: np.ndarray
    false_negatives: np.ndarray


def pad_boxes(boxes: Sequence[np.ndarray], scores: Sequence[np.ndarray] | None = None):
    """Stacks ragged per-image boxes `(n_i, 4)` into `(I, N, 4)` plus a validity mask `(I, N)`.

    With `scores`, rows are sorted by decreasing score and padded scores are returned too.
    """
    count = max([len(b) for b in boxes] + [1])
    padded = np.zeros((len(boxes), count, 4), np.float32)
    padded_scores = np.zeros((len(boxes), count), np.float32)
    lengths = np.array([len(b) for b in boxes], int)
    valid = np.arange(count)[None, :] < lengths[:, None]
    flat_boxes = np.concatenate([np.asarray(b, np.float32).reshape(-1, 4) for b in boxes])
    padded[valid] = flat_boxes
    if scores is None:
        return padded, valid
    flat_scores = np.concatenate([np.asarray(s, np.float32).reshape(-1) for s in scores])
    if len(flat_scores) != len(flat_boxes):
        raise ValueError("boxes and scores must have the same lengths per image.")
    padded_scores[valid] = flat_scores
    order = np.argsort(np.where(valid, -padded_scores, np.inf), axis=1, kind="stable")
    padded = np.take_along_axis(padded, order[..., None], axis=1)
    padded_scores = np.take_along_axis(padded_scores, order, axis=1)
    valid = np.take_along_axis(valid, order, axis=1)
    return padded, valid, padded_scores


def _pairwise_iou_batched(pred_xyxy: np.ndarray, gt_xyxy: np.ndarray) -> np.ndarray:
    """`(I, N, 4)` x `(I, G, 4)` -> `(I, N, G)` IoU (NumPy, for evaluation)."""
    top_left = np.maximum(pred_xyxy[:, :, None, :2], gt_xyxy[:, None, :, :2])
    bottom_right = np.minimum(pred_xyxy[:, :, None, 2:], gt_xyxy[:, None, :, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    area_pred = np.prod(np.clip(pred_xyxy[..., 2:] - pred_xyxy[..., :2], 0, None), axis=-1)
    area_gt = np.prod(np.clip(gt_xyxy[..., 2:] - gt_xyxy[..., :2], 0, None), axis=-1)
    union = area_pred[:, :, None] + area_gt[:, None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def rsna_scores(
    gt_boxes_xyxy: Sequence[np.ndarray],
    pred_boxes_xyxy: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    iou_thresholds: np.ndarray = RSNA_IOU_THRESHOLDS,
) -> DetectionScores:
    """Evaluates detections of many images with the RSNA rules (see the module docstring).

    Args:
        gt_boxes_xyxy: Per image, `(G_i, 4)` ground-truth boxes (any pixel frame, same as preds).
        pred_boxes_xyxy: Per image, `(N_i, 4)` predicted boxes.
        pred_scores: Per image, `(N_i,)` confidences (only their order matters).
        iou_thresholds: `(T,)` IoU thresholds.

    Returns:
        The metric, per-image scores, and precision/recall at IoU 0.5.
    """
    if not len(gt_boxes_xyxy) == len(pred_boxes_xyxy) == len(pred_scores):
        raise ValueError("Need one entry per image in ground truth, boxes and scores.")
    gt, gt_valid = pad_boxes(gt_boxes_xyxy)
    pred, pred_valid, _ = pad_boxes(pred_boxes_xyxy, pred_scores)
    thresholds = np.asarray(iou_thresholds, np.float64)
    iou = _pairwise_iou_batched(pred, gt)  # (I, N, G)
    num_images, num_thresholds = len(gt), len(thresholds)
    available = np.repeat(gt_valid[:, None, :], num_thresholds, axis=1)  # (I, T, G)
    true_positives = np.zeros((num_images, num_thresholds), int)
    image_index = np.arange(num_images)[:, None]
    threshold_index = np.arange(num_thresholds)[None, :]
    for rank in range(pred.shape[1]):  # visit predictions by decreasing confidence
        iou_rank = iou[:, rank, None, :]  # (I, 1, G)
        candidates = available & (iou_rank >= thresholds[None, :, None])
        candidates &= pred_valid[:, rank, None, None]
        best = np.argmax(np.where(candidates, iou_rank, -1.0), axis=-1)  # (I, T)
        matched = candidates.any(axis=-1)  # (I, T)
        true_positives += matched
        available[image_index, threshold_index, best] &= ~matched
    num_pred = pred_valid.sum(axis=1)[:, None]
    num_gt = gt_valid.sum(axis=1)[:, None]
    false_positives = num_pred - true_positives
    false_negatives = num_gt - true_positives
    denominator = true_positives + false_positives + false_negatives  # (I, T)
    counted = (num_pred[:, 0] + num_gt[:, 0]) > 0
    per_threshold = np.divide(
        true_positives, denominator, out=np.zeros(denominator.shape), where=denominator > 0
    )
    per_image = np.where(counted, per_threshold.mean(axis=1), np.nan)
    at_half = int(np.argmin(np.abs(thresholds - 0.5)))
    tp, fp, fn = (
        int(a[:, at_half].sum()) for a in (true_positives, false_positives, false_negatives)
    )
    return DetectionScores(
        rsna_metric=float(np.nanmean(per_image)) if counted.any() else float("nan"),
        per_image=per_image,
        precision=tp / (tp + fp) if tp + fp else 0.0,
        recall=tp / (tp + fn) if tp + fn else 0.0,
        true_positives=true_positives.sum(axis=0),
        false_positives=false_positives.sum(axis=0),
        false_negatives=false_negatives.sum(axis=0),
    )
