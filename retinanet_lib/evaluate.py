"""Evaluating a trained model on a split: predictions, ground truth, the RSNA metric and AP.

`predict_split` runs a split through the same fast path as prediction (parallel decoding
overlapped with the compiled forward pass) and keeps each image's ground truth next to its
predictions. The score threshold matters a lot for the RSNA metric (every low-confidence
detection on a negative image is a false positive), so `evaluate_thresholds` scores several
and `choose_score_threshold` picks one; choose on one split, report on another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from retinanet_lib.boxes import xywh_to_xyxy
from retinanet_lib.config import RetinaNetConfig
from retinanet_lib.heatmap import score_heatmap
from retinanet_lib.inference import (
    compiled_predictor,
    decode_predictions,
    image_probabilities,
    non_max_suppression,
)
from retinanet_lib.metrics import (
    DetectionScores,
    PrecisionRecall,
    bootstrap_interval,
    precision_recall,
    rsna_scores,
)
from retinanet_lib.pipeline import Records, load_images
from retinanet_lib.preprocess import resize_boxes_to_input, to_model_input
from retinanet_lib.rejects import RejectLog

__all__ = [
    "AP_SCORE_THRESHOLD",
    "figure29_picks",
    "heatmaps_of",
    "metric_table",
    "SCORE_THRESHOLD_GRID",
    "SplitPredictions",
    "average_precision_at",
    "GATE_THRESHOLD_GRID",
    "choose_score_threshold",
    "choose_thresholds",
    "detections_of",
    "evaluate_thresholds",
    "predict_split",
    "score_at",
    "split_images",
]

#: The score thresholds `choose_score_threshold` tries: 0.01, 0.02, 0.03, then 0.05, 0.10, ...,
#: 0.90. The low end is there for models whose scores run low (plain cross-entropy), so that a
#: timid model is not judged at a threshold it can never reach.
SCORE_THRESHOLD_GRID = (0.01, 0.02, 0.03) + tuple(np.round(np.arange(0.05, 0.91, 0.05), 2).tolist())
#: The image-level gates `choose_thresholds` tries (`None`: no gate), 0.05 to 0.95.
GATE_THRESHOLD_GRID = (None,) + tuple(np.round(np.arange(0.05, 0.96, 0.05), 2).tolist())
#: Detections down to this score enter the precision-recall curve (so it reaches high recall).
AP_SCORE_THRESHOLD = 0.01


@dataclass(frozen=True)
class SplitPredictions:
    """A model's raw outputs on a split, aligned with the ground truth.

    Attributes:
        predictions: `(N, num_anchors, 4 + K)` float32 model outputs.
        gt_boxes_xyxy: `N` arrays `(G_i, 4)`, ground truth in model-input pixels.
        indices: `(N,)` positions in the records of the images that could be read.
        images: `(N, S, S)` uint8 model-input images, if asked for.
        rejects: Files that could not be read (skipped), `file` and `error`.
    """

    predictions: np.ndarray
    gt_boxes_xyxy: list[np.ndarray]
    indices: np.ndarray
    images: np.ndarray | None
    rejects: pd.DataFrame

    def __len__(self) -> int:
        return len(self.gt_boxes_xyxy)


def predict_split(
    model: keras.Model,
    records: Records,
    cfg: RetinaNetConfig,
    batch_size: int = 8,
    keep_images: bool = False,
) -> SplitPredictions:
    """Model outputs and ground truth of every readable record, in order.

    Decoding, CLAHE and resizing run in `tf.data`'s thread pool, overlapped with the compiled
    forward pass (`inference.compiled_predictor`, with flip TTA if `cfg.decode.flip_tta`).

    Args:
        model: A RetinaNet for `cfg`.
        records: Images and their boxes.
        cfg: The model's config.
        batch_size: Images per forward pass.
        keep_images: Also return the `(N, S, S)` uint8 model-input images (memory: N x S^2).

    Returns:
        The predictions, ground truth, kept indices and skipped files.
    """
    predict = compiled_predictor(model, cfg)
    rejects = RejectLog()
    dataset = load_images(records.paths, cfg, rejects).batch(batch_size)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    outputs, gt_boxes, indices, images = [], [], [], []
    for batch_indices, batch_images, scales_xy in dataset:
        inputs = to_model_input(batch_images, cfg.model.backbone)
        outputs.append(predict(inputs).numpy())
        gt_boxes += _input_boxes(records, batch_indices, scales_xy)
        indices.append(batch_indices.numpy())
        if keep_images:
            images.append(batch_images.numpy())
    size = cfg.image_size
    empty_output = np.zeros((0, *model.output_shape[1:]), np.float32)
    return SplitPredictions(
        predictions=np.concatenate(outputs) if outputs else empty_output,
        gt_boxes_xyxy=gt_boxes,
        indices=np.concatenate(indices) if indices else np.zeros(0, np.int64),
        images=(np.concatenate(images) if images else np.zeros((0, size, size), np.uint8))
        if keep_images
        else None,
        rejects=rejects.table(),
    )


def _input_boxes(records: Records, indices: tf.Tensor, scales_xy: tf.Tensor) -> list:
    """The ground truth of a batch of records, in model-input pixels (`(G_i, 4)` xyxy each)."""
    return [
        resize_boxes_to_input(xywh_to_xyxy(records.boxes_xywh[index]), scale_xy).numpy()
        for index, scale_xy in zip(indices.numpy(), scales_xy, strict=True)
    ]


def split_images(
    records: Records, cfg: RetinaNetConfig, batch_size: int = 8
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The model-input images and ground truth of every readable record, without a model
    (unreadable files are skipped, as in `predict_split`).

    Returns:
        `(N, S, S)` uint8 images and `N` ground-truth arrays `(G_i, 4)` in their pixels.
    """
    dataset = load_images(records.paths, cfg, RejectLog()).batch(batch_size)
    images, gt_boxes = [], []
    for batch_indices, batch_images, scales_xy in dataset:
        images.append(batch_images.numpy())
        gt_boxes += _input_boxes(records, batch_indices, scales_xy)
    size = cfg.image_size
    return (np.concatenate(images) if images else np.zeros((0, size, size), np.uint8)), gt_boxes


def _detections(boxes_xyxy, probabilities, cfg, score_threshold):
    decode_cfg = dataclasses.replace(cfg.decode, score_threshold=score_threshold)
    detections = non_max_suppression(boxes_xyxy, probabilities, decode_cfg)
    per_image = [detections.for_image(i) for i in range(int(boxes_xyxy.shape[0]))]
    return [p[0] for p in per_image], [p[1] for p in per_image]


def _gated(boxes, scores, image_probability, gate_threshold):
    """Per-image detections with those of images below the gate removed (`None`: no gate)."""
    if gate_threshold is None:
        return boxes, scores
    keep = np.asarray(image_probability) >= gate_threshold
    return (
        [b if k else b[:0] for b, k in zip(boxes, keep, strict=True)],
        [s if k else s[:0] for s, k in zip(scores, keep, strict=True)],
    )


def detections_of(predictions: np.ndarray, cfg: RetinaNetConfig) -> list:
    """What the model reports for each image: NMS at `cfg.decode.score_threshold`.

    Returns:
        `N` pairs `(boxes_xyxy (n_i, 4), scores (n_i,))`, scores descending.
    """
    boxes, scores = _detections(
        *decode_predictions(predictions, cfg), cfg, cfg.decode.score_threshold
    )
    return list(zip(boxes, scores, strict=True))


def score_at(
    predictions: np.ndarray,
    gt_boxes_xyxy: Sequence[np.ndarray],
    cfg: RetinaNetConfig,
    score_threshold: float,
    gate_threshold: float | None = None,
) -> DetectionScores:
    """RSNA metric, precision and recall with detections above one score threshold, and
    with image-level gating if `gate_threshold` is given (`inference.image_probabilities`)."""
    boxes, scores = _detections(*decode_predictions(predictions, cfg), cfg, score_threshold)
    if gate_threshold is not None:
        image_probability = image_probabilities(predictions, cfg).numpy()
        boxes, scores = _gated(boxes, scores, image_probability, gate_threshold)
    return rsna_scores(gt_boxes_xyxy, boxes, scores)


def average_precision_at(
    predictions: np.ndarray,
    gt_boxes_xyxy: Sequence[np.ndarray],
    cfg: RetinaNetConfig,
    iou_threshold: float = 0.5,
) -> PrecisionRecall:
    """Precision-recall curve and average precision at one IoU (threshold-free), from the
    detections after NMS down to a score of `AP_SCORE_THRESHOLD`."""
    boxes, scores = _detections(*decode_predictions(predictions, cfg), cfg, AP_SCORE_THRESHOLD)
    return precision_recall(gt_boxes_xyxy, boxes, scores, iou_threshold)


def evaluate_thresholds(
    predictions: np.ndarray,
    gt_boxes_xyxy: Sequence[np.ndarray],
    cfg: RetinaNetConfig,
    score_thresholds: Sequence[float] = SCORE_THRESHOLD_GRID,
) -> pd.DataFrame:
    """One row per score threshold: RSNA metric, precision and recall at IoU 0.5.

    The predictions are decoded once; only NMS and the metric run per threshold.
    """
    table = _threshold_table(predictions, gt_boxes_xyxy, cfg, score_thresholds, (None,))
    return table.drop(columns="gate_threshold").set_index("score_threshold")


def _threshold_table(predictions, gt_boxes_xyxy, cfg, score_thresholds, gate_thresholds):
    """RSNA metric, precision and recall for every (score threshold, gate) pair: the
    predictions are decoded once, NMS runs once per score threshold, and each gate is only a
    per-image mask on its detections."""
    boxes_xyxy, probabilities = decode_predictions(predictions, cfg)
    gating = any(gate is not None for gate in gate_thresholds)
    image_probability = image_probabilities(predictions, cfg).numpy() if gating else None
    rows = []
    for threshold in score_thresholds:  # a handful of thresholds, each fully vectorized
        boxes, scores = _detections(boxes_xyxy, probabilities, cfg, float(threshold))
        for gate in gate_thresholds:
            result = rsna_scores(gt_boxes_xyxy, *_gated(boxes, scores, image_probability, gate))
            rows.append(
                {
                    "score_threshold": float(threshold),
                    "gate_threshold": np.nan if gate is None else float(gate),
                    "rsna_metric": result.rsna_metric,
                    "precision": result.precision,
                    "recall": result.recall,
                }
            )
    return pd.DataFrame(rows)


def choose_score_threshold(
    predictions: np.ndarray,
    gt_boxes_xyxy: Sequence[np.ndarray],
    cfg: RetinaNetConfig,
    score_thresholds: Sequence[float] = SCORE_THRESHOLD_GRID,
) -> tuple[float, pd.DataFrame]:
    """The score threshold with the highest RSNA metric (the lowest one on a tie).

    Returns:
        The threshold and the `evaluate_thresholds` table behind it.
    """
    table = evaluate_thresholds(predictions, gt_boxes_xyxy, cfg, score_thresholds)
    return float(table["rsna_metric"].idxmax()), table


def choose_thresholds(
    predictions: np.ndarray,
    gt_boxes_xyxy: Sequence[np.ndarray],
    cfg: RetinaNetConfig,
    score_thresholds: Sequence[float] = SCORE_THRESHOLD_GRID,
    gate_thresholds: Sequence[float | None] = GATE_THRESHOLD_GRID,
) -> tuple[float, float | None, pd.DataFrame]:
    """The score threshold and image-level gate with the highest RSNA metric, searched
    together (on a tie: the lowest score threshold, then no gate, then the lowest gate).

    Without an image head the gate compares an image's top anchor probability, so a gate at
    or below the score threshold changes nothing; with one, it is the head's probability.

    Returns:
        The score threshold, the gate (`None`: no gating) and the table of every pair
        (`score_threshold`, `gate_threshold` (NaN for none), `rsna_metric`, `precision`,
        `recall`).
    """
    table = _threshold_table(predictions, gt_boxes_xyxy, cfg, score_thresholds, gate_thresholds)
    best = table.loc[table["rsna_metric"].idxmax()]  # first maximum: the grid order breaks ties
    gate = None if np.isnan(best["gate_threshold"]) else float(best["gate_threshold"])
    return float(best["score_threshold"]), gate, table


def heatmaps_of(predictions: np.ndarray, cfg: RetinaNetConfig, reduce: str = "mean") -> list:
    """The blog's per-pixel heatmap of each image's predictions (every anchor, no NMS).

    Args:
        predictions: `(N, num_anchors, 4 + K)` model outputs.
        cfg: The model's config.
        reduce: `"mean"` (the blog's) or `"score_weighted"`.

    Returns:
        `N` float32 maps `(S, S)` in model-input pixels.
    """
    boxes_xyxy, probabilities = decode_predictions(predictions, cfg)
    size = (cfg.image_size, cfg.image_size)
    return [
        score_heatmap(boxes, probs[:, 0], size, reduce=reduce)
        for boxes, probs in zip(boxes_xyxy.numpy(), probabilities.numpy(), strict=True)
    ]


def figure29_picks(
    scores: DetectionScores, gt_boxes_xyxy: Sequence[np.ndarray], predictions: np.ndarray
) -> list[tuple[int, str]]:
    """Four images in the spirit of the blog's Figure 29: the two positive images with the best
    per-image score, the negative image the model gives its highest anchor probability, and the
    positive image with the worst score.

    Args:
        scores: `score_at` result of the split (per-image scores).
        gt_boxes_xyxy: The split's ground truth.
        predictions: The split's `(N, A, 4 + K)` model outputs.

    Returns:
        `[(index, label), ...]`, labels "(a) found", "(b) found", "(c) negative",
        "(d) worst positive".
    """
    positives = [i for i, boxes in enumerate(gt_boxes_xyxy) if len(boxes)]
    negatives = [i for i, boxes in enumerate(gt_boxes_xyxy) if not len(boxes)]
    if len(positives) < 3 or not negatives:
        raise ValueError("figure29_picks needs at least 3 positive and 1 negative image.")
    per_image = np.nan_to_num(scores.per_image)
    ranked = sorted(positives, key=lambda i: (-per_image[i], i))
    highest_logit = predictions[..., 4:].max(axis=(1, 2))
    false_alarm = max(negatives, key=lambda i: highest_logit[i])
    return [
        (ranked[0], "(a) found"),
        (ranked[1], "(b) found"),
        (false_alarm, "(c) negative"),
        (ranked[-1], "(d) worst positive"),
    ]


def metric_table(
    splits: dict[str, SplitPredictions], cfg: RetinaNetConfig, score_threshold: float
) -> tuple[pd.DataFrame, dict[str, DetectionScores]]:
    """RSNA metric with its 95 % bootstrap interval, precision and recall, per split.

    Args:
        splits: Row label (say which data: "test (synthetic)") -> the split's predictions.
        cfg: The model's config.
        score_threshold: The one threshold used for every split.

    Returns:
        The table (one row per split: images, positive images, metric, interval, precision
        and recall at IoU 0.5, and the image-level recall, precision and F1 of "has this image
        an opacity?") and each split's full `DetectionScores`.
    """
    rows, scores = {}, {}
    for label, split in splits.items():
        result = score_at(split.predictions, split.gt_boxes_xyxy, cfg, score_threshold)
        low, high = bootstrap_interval(result.per_image)
        rows[label] = {
            "images": len(split),
            "positive": sum(len(boxes) > 0 for boxes in split.gt_boxes_xyxy),
            "RSNA metric": round(result.rsna_metric, 3),
            "95% interval": f"{low:.2f} to {high:.2f}",
            "precision@0.5": round(result.precision, 3),
            "recall@0.5": round(result.recall, 3),
            "image recall": round(result.image_level.recall, 3),
            "image precision": round(result.image_level.precision, 3),
            "image F1": round(result.image_level.f1, 3),
        }
        scores[label] = result
    return pd.DataFrame(rows).T, scores
