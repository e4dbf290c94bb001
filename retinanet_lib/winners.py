"""What won the RSNA challenge, as scored variants of trained models: gating, flips, ensembles.

The challenge's published solutions added three things to a single detector: an image-level
"any opacity?" decision in front of the boxes (gating), test-time flips, and ensembles of
several models. Given the outputs of a few trained models on the validation and test splits,
`score_variant` scores one such variant the way `data_scripts/train.py` would deploy it: its
score threshold (and gate) chosen on the validation split, the test split scored once at it.
`variant_predictions` builds a variant's outputs from the per-model ones (an ensemble
averages them anchor by anchor, `inference.ensemble_predictions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from retinanet_lib.config import RetinaNetConfig
from retinanet_lib.evaluate import (
    GATE_THRESHOLD_GRID,
    average_precision_at,
    choose_thresholds,
    score_at,
)
from retinanet_lib.inference import ensemble_predictions, image_probabilities
from retinanet_lib.metrics import bootstrap_interval

__all__ = ["ModelOutputs", "VariantScores", "score_variant", "variant_predictions"]


@dataclass(frozen=True)
class ModelOutputs:
    """One trained model's raw outputs on the validation and test splits.

    Attributes:
        validation: `(V, A, C)` outputs on the validation images.
        test: `(T, A, C)` outputs on the test images.
        validation_flipped: The same with flip test-time augmentation (or `None`).
        test_flipped: The same with flip test-time augmentation (or `None`).
    """

    validation: np.ndarray
    test: np.ndarray
    validation_flipped: np.ndarray | None = None
    test_flipped: np.ndarray | None = None


def variant_predictions(
    members: Sequence[ModelOutputs], flip: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The validation and test outputs of one model (one member) or of an ensemble.

    Args:
        members: The models to combine (one for a single model).
        flip: Use their flip-averaged outputs.

    Returns:
        `(validation (V, A, C), test (T, A, C))`, ensembled when there are several members.

    Raises:
        ValueError: If flips are asked for and a member has none.
    """
    if flip and any(m.validation_flipped is None or m.test_flipped is None for m in members):
        raise ValueError("A member has no flip-averaged outputs.")
    validation = [m.validation_flipped if flip else m.validation for m in members]
    test = [m.test_flipped if flip else m.test for m in members]
    return (
        ensemble_predictions(validation).numpy(),
        ensemble_predictions(test).numpy(),
    )


@dataclass(frozen=True)
class VariantScores:
    """A variant scored as deployed: thresholds from validation, the test split once.

    Attributes:
        row: `score_threshold`, `gate_threshold` (NaN: none), `val_rsna_metric` (at the
            chosen thresholds: in-sample, optimistic), `test_rsna_metric`, its bootstrap
            interval `test_ci_low` / `test_ci_high`, `test_precision`, `test_recall`,
            `test_ap50`, `test_images`, `test_negative_images_flagged` (share of test images
            without an opacity that keep a detection) and `test_positive_images_found`
            (share of images with one that keep at least one detection).
        per_image: One row per test image: `rsna_score` (NaN where the metric skips the
            image), `has_opacity`, `detections`, `image_probability`.
    """

    row: dict
    per_image: pd.DataFrame


def score_variant(
    validation: np.ndarray,
    validation_truth: Sequence[np.ndarray],
    test: np.ndarray,
    test_truth: Sequence[np.ndarray],
    cfg: RetinaNetConfig,
    gate: bool,
) -> VariantScores:
    """Chooses the score threshold (and, with `gate`, the image-level gate) on the
    validation split, then scores the test split once at them.

    Args:
        validation: `(V, A, C)` outputs on the validation images.
        validation_truth: Their ground truth, `(G_i, 4)` xyxy in model-input pixels.
        test: `(T, A, C)` outputs on the test images.
        test_truth: Their ground truth.
        cfg: The models' config (an image head's channel is read by gating).
        gate: Search a gate too (`evaluate.choose_thresholds`); otherwise none.

    Returns:
        The row and the per-image test table.
    """
    gates = GATE_THRESHOLD_GRID if gate else (None,)
    threshold, gate_threshold, table = choose_thresholds(
        validation, validation_truth, cfg, gate_thresholds=gates
    )
    val_best = float(table["rsna_metric"].max())
    scores = score_at(test, test_truth, cfg, threshold, gate_threshold)
    low, high = bootstrap_interval(scores.per_image)
    curve = average_precision_at(test, test_truth, cfg)
    has_opacity = np.array([len(boxes) > 0 for boxes in test_truth])
    flagged = scores.detections_per_image > 0
    row = {
        "score_threshold": threshold,
        "gate_threshold": np.nan if gate_threshold is None else gate_threshold,
        "val_rsna_metric": round(val_best, 4),
        "test_rsna_metric": round(scores.rsna_metric, 4),
        "test_ci_low": round(low, 4),
        "test_ci_high": round(high, 4),
        "test_precision": round(scores.precision, 4),
        "test_recall": round(scores.recall, 4),
        "test_ap50": round(curve.average_precision, 4),
        "test_images": len(test_truth),
        "test_negative_images_flagged": round(float(flagged[~has_opacity].mean()), 4),
        "test_positive_images_found": round(float(flagged[has_opacity].mean()), 4),
    }
    per_image = pd.DataFrame(
        {
            "rsna_score": np.round(scores.per_image, 4),
            "has_opacity": has_opacity,
            "detections": scores.detections_per_image,
            "image_probability": np.round(image_probabilities(test, cfg).numpy(), 4),
        }
    )
    return VariantScores(row, per_image)
