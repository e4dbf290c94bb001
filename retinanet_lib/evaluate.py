"""Evaluating a trained model on a split: predictions, ground truth and the RSNA metric.

The score threshold matters a lot for the RSNA metric (every low-confidence detection on a
negative image is a false positive), so `evaluate_thresholds` scores several; choose one on the
training split and report it on the held-out split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from retinanet_lib.anchors import generate_anchors
from retinanet_lib.config import RetinaNetConfig
from retinanet_lib.inference import decode_all, non_max_suppression
from retinanet_lib.metrics import DetectionScores, rsna_scores
from retinanet_lib.pipeline import Records, make_dataset

__all__ = [
    "evaluate_thresholds",
    "ground_truth_boxes",
    "predict_records",
    "score_at",
]


def _images_only(images, _targets):
    return images


def predict_records(
    model: keras.Model, records: Records, cfg: RetinaNetConfig, batch_size: int = 8
) -> np.ndarray:
    """Model outputs for every record, in order: `(N, num_anchors, 4 + K)` float32."""
    dataset = make_dataset(records, cfg, batch_size, training=False)
    return model.predict(dataset.map(_images_only), verbose=0)


def ground_truth_boxes(records: Records, cfg: RetinaNetConfig) -> list[np.ndarray]:
    """Ground-truth boxes in model-input pixels (`"xyxy"`), through the pipeline's own resize."""
    raw = make_dataset(records, cfg, 1, training=False, encode=False)
    return [boxes.numpy() for _, boxes in raw]


def _score_decoded(boxes_xyxy, probabilities, gt_boxes_xyxy, cfg, score_threshold):
    decode_cfg = dataclasses.replace(cfg.decode, score_threshold=score_threshold)
    detections = non_max_suppression(boxes_xyxy, probabilities, decode_cfg)
    per_image = [detections.for_image(i) for i in range(len(gt_boxes_xyxy))]
    return rsna_scores(gt_boxes_xyxy, [p[0] for p in per_image], [p[1] for p in per_image])


def _decode(predictions: np.ndarray, cfg: RetinaNetConfig):
    anchors_xyxy = generate_anchors(cfg.image_size, cfg.image_size, cfg.anchors)
    return decode_all(tf.constant(predictions), anchors_xyxy, cfg)


def score_at(
    predictions: np.ndarray,
    gt_boxes_xyxy: Sequence[np.ndarray],
    cfg: RetinaNetConfig,
    score_threshold: float,
) -> DetectionScores:
    """RSNA metric, precision and recall with detections above one score threshold."""
    return _score_decoded(*_decode(predictions, cfg), gt_boxes_xyxy, cfg, score_threshold)


def evaluate_thresholds(
    predictions: np.ndarray,
    gt_boxes_xyxy: Sequence[np.ndarray],
    cfg: RetinaNetConfig,
    score_thresholds: Sequence[float],
) -> pd.DataFrame:
    """One row per score threshold: RSNA metric, precision and recall at IoU 0.5.

    The predictions are decoded once; only NMS and the metric run per threshold.
    """
    boxes_xyxy, probabilities = _decode(predictions, cfg)
    rows = []
    for threshold in score_thresholds:  # a handful of thresholds, each fully vectorized
        scores = _score_decoded(boxes_xyxy, probabilities, gt_boxes_xyxy, cfg, float(threshold))
        rows.append(
            {
                "score_threshold": float(threshold),
                "rsna_metric": scores.rsna_metric,
                "precision": scores.precision,
                "recall": scores.recall,
            }
        )
    return pd.DataFrame(rows).set_index("score_threshold")
