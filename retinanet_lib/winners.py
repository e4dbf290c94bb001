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
from retinanet_lib.metrics import (
    PairedDifference,
    bootstrap_interval,
    paired_bootstrap_difference,
)

__all__ = [
    "ModelOutputs",
    "VariantScores",
    "score_variant",
    "variant_difference",
    "variant_predictions",
    "variant_table",
]


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


def _grid(per_image: pd.DataFrame, arm: str, variant: str) -> pd.DataFrame:
    rows = per_image[(per_image["arm"] == arm) & (per_image["variant"] == variant)]
    if rows.empty:
        raise ValueError(f"No per-image rows for {arm!r}, {variant!r}.")
    return rows.pivot(index="seeds", columns="image", values="rsna_score").sort_index()


def variant_difference(
    per_image: pd.DataFrame,
    a: tuple[str, str],
    b: tuple[str, str],
    num_resamples: int = 2000,
) -> PairedDifference:
    """`b - a` on the same test images, with a 95 % paired bootstrap interval over seeds and
    images (`metrics.paired_bootstrap_difference`).

    Single-model variants pair seed by seed. An ensemble (one row, its `seeds` like "0+1+2")
    against single models is paired with each of them: its row is repeated once per seed, so
    the interval still carries the spread between the single models' seeds.

    Args:
        per_image: `winners_test_per_image.csv`: `arm`, `variant`, `seeds`, `image`,
            `rsna_score`.
        a: `(arm, variant)` of the reference.
        b: `(arm, variant)` compared with it.
        num_resamples: Bootstrap resamples.

    Raises:
        ValueError: If the two were scored on different images, or both have several seeds
            that differ.
    """
    grid_a, grid_b = _grid(per_image, *a), _grid(per_image, *b)
    if set(grid_a.columns) != set(grid_b.columns):
        raise ValueError(f"{a} and {b} were not scored on the same images.")
    grid_b = grid_b[grid_a.columns]
    if len(grid_a) == 1 and len(grid_b) > 1:
        grid_a = pd.concat([grid_a] * len(grid_b))
    elif len(grid_b) == 1 and len(grid_a) > 1:
        grid_b = pd.concat([grid_b] * len(grid_a))
    elif list(grid_a.index) != list(grid_b.index):
        raise ValueError(
            f"{a} and {b} have different seeds: {list(grid_a.index)}, {list(grid_b.index)}."
        )
    return paired_bootstrap_difference(
        grid_a.to_numpy(), grid_b.to_numpy(), num_resamples=num_resamples
    )


def variant_table(
    per_image: pd.DataFrame,
    pairs: Sequence[tuple[tuple[str, str], tuple[str, str]]],
    num_resamples: int = 2000,
) -> pd.DataFrame:
    """`variant_difference` for several pairs, one row each, ready to print.

    Returns:
        Indexed by `"b vs a"` (each `"arm: variant"`): `difference`, `95% low`, `95% high`,
        `seeds`, `images` and `verdict` ("better" / "worse" only when the interval
        excludes 0).
    """
    rows = {}
    for a, b in pairs:
        result = variant_difference(per_image, a, b, num_resamples)
        rows[f"{b[0]}: {b[1]} vs {a[0]}: {a[1]}"] = result.row()
    return pd.DataFrame.from_dict(rows, orient="index")
