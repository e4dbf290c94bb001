"""The RSNA Pneumonia Detection Challenge metric, average precision, and their intervals.

Per image and IoU threshold `t` in 0.40, 0.45, ..., 0.75, predictions are matched to
ground-truth boxes one to one; matched predictions are true positives (TP), the others false
positives (FP), unmatched ground-truth boxes false negatives (FN). The image scores
`TP / (TP + FP + FN)` at each threshold, averaged over thresholds. An image with neither ground
truth nor predictions is **not counted**; an image with no ground truth but some predictions
scores 0. The metric is the mean over counted images.

How a match is decided is not fully pinned down by the competition. Its text calls a hit an IoU
*greater than* the threshold; the widely used public implementation (the Kaggle kernel most
teams copied) uses `>=`, and walks the ground-truth boxes in order, giving each the
highest-confidence unmatched prediction that overlaps it enough. `rsna_scores` follows, by
default, the rule written in the metric's description of mean average precision: predictions
visited by **decreasing confidence**, each taking the still-unmatched ground-truth box with
which it has the **highest IoU**, a hit when that IoU is **>= t**. Both other choices are
options (`matching="ground_truth_first"`, `strict_iou=True`); they differ only on exact ties
and on crowded images, and the tests show a case for each.

The greedy matching is sequential by definition (a match removes a box for what follows). The
implementation loops over prediction ranks (or ground-truth ranks), each step vectorized over
all images and all thresholds at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MATCHING_RULES",
    "RSNA_IOU_THRESHOLDS",
    "DetectionScores",
    "ImageLevelScores",
    "PairedDifference",
    "PrecisionRecall",
    "bootstrap_interval",
    "image_level_scores",
    "match_detections",
    "paired_bootstrap_difference",
    "pad_boxes",
    "pairwise_iou_batched",
    "precision_recall",
    "rsna_scores",
]

#: `"confidence_first"`: predictions by decreasing confidence each take the unmatched box of
#: highest IoU (the default). `"ground_truth_first"`: boxes in order each take the
#: highest-confidence unmatched prediction (the public Kaggle kernel).
MATCHING_RULES = ("confidence_first", "ground_truth_first")

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
        image_level: "Has this image an opacity?" from "has it a detection?" (image-level
            recall, precision and F1).
        detections_per_image: `(I,)` int, the predicted boxes of each image.
    """

    rsna_metric: float
    per_image: np.ndarray
    precision: float
    recall: float
    true_positives: np.ndarray
    false_positives: np.ndarray
    false_negatives: np.ndarray
    image_level: ImageLevelScores | None = None
    detections_per_image: np.ndarray | None = None


@dataclass(frozen=True)
class ImageLevelScores:
    """ "Does this image have an opacity?", answered by "has it at least one detection?".

    The question a screening reader asks, and the one the transfer-learning notes judge an
    imbalanced X-ray task by: recall (sensitivity), precision and F1, not accuracy (on data
    where 70 % of the images are negative, saying "no" everywhere is 70 % accurate).

    Attributes:
        true_positives: Images with an opacity and at least one detection.
        false_positives: Images without an opacity but with a detection.
        false_negatives: Images with an opacity and no detection.
        true_negatives: Images with neither.
    """

    true_positives: int
    false_positives: int
    false_negatives: int
    true_negatives: int

    @property
    def recall(self) -> float:
        """Share of the images with an opacity that got a detection (sensitivity)."""
        found = self.true_positives + self.false_negatives
        return self.true_positives / found if found else float("nan")

    @property
    def precision(self) -> float:
        """Share of the images with a detection that have an opacity."""
        flagged = self.true_positives + self.false_positives
        return self.true_positives / flagged if flagged else float("nan")

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall, `2 TP / (2 TP + FP + FN)`."""
        denominator = 2 * self.true_positives + self.false_positives + self.false_negatives
        return 2 * self.true_positives / denominator if denominator else float("nan")

    @property
    def specificity(self) -> float:
        """Share of the images without an opacity that got no detection."""
        clean = self.true_negatives + self.false_positives
        return self.true_negatives / clean if clean else float("nan")


def image_level_scores(has_opacity: np.ndarray, has_detection: np.ndarray) -> ImageLevelScores:
    """Counts the four outcomes of "does this image have an opacity?" over images.

    Args:
        has_opacity: `(I,)` bool, the image has at least one ground-truth box.
        has_detection: `(I,)` bool, the image has at least one detection.

    Returns:
        The counts, with recall, precision, F1 and specificity as properties.
    """
    truth = np.asarray(has_opacity, bool)
    flagged = np.asarray(has_detection, bool)
    if truth.shape != flagged.shape or truth.ndim != 1:
        raise ValueError(f"Need two (I,) arrays, got {truth.shape} and {flagged.shape}.")
    return ImageLevelScores(
        true_positives=int((truth & flagged).sum()),
        false_positives=int((~truth & flagged).sum()),
        false_negatives=int((truth & ~flagged).sum()),
        true_negatives=int((~truth & ~flagged).sum()),
    )


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


def pairwise_iou_batched(pred_xyxy: np.ndarray, gt_xyxy: np.ndarray) -> np.ndarray:
    """`(I, N, 4)` x `(I, G, 4)` -> `(I, N, G)` IoU (NumPy, for evaluation)."""
    top_left = np.maximum(pred_xyxy[:, :, None, :2], gt_xyxy[:, None, :, :2])
    bottom_right = np.minimum(pred_xyxy[:, :, None, 2:], gt_xyxy[:, None, :, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    area_pred = np.prod(np.clip(pred_xyxy[..., 2:] - pred_xyxy[..., :2], 0, None), axis=-1)
    area_gt = np.prod(np.clip(gt_xyxy[..., 2:] - gt_xyxy[..., :2], 0, None), axis=-1)
    union = area_pred[:, :, None] + area_gt[:, None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def _match_confidence_first(iou, pred_valid, gt_valid, hits):
    """Predictions by rank take the unmatched box of highest IoU. Returns `(I, T, N)` bool."""
    num_images, num_thresholds = hits.shape[0], hits.shape[1]
    available = np.repeat(gt_valid[:, None, :], num_thresholds, axis=1)  # (I, T, G)
    matched = np.zeros((num_images, num_thresholds, iou.shape[1]), bool)
    image_index = np.arange(num_images)[:, None]
    threshold_index = np.arange(num_thresholds)[None, :]
    for rank in range(iou.shape[1]):  # visit predictions by decreasing confidence
        candidates = available & hits[:, :, rank, :] & pred_valid[:, rank, None, None]
        best = np.argmax(np.where(candidates, iou[:, None, rank, :], -1.0), axis=-1)  # (I, T)
        found = candidates.any(axis=-1)  # (I, T)
        matched[:, :, rank] = found
        available[image_index, threshold_index, best] &= ~found
    return matched


def _match_ground_truth_first(iou, pred_valid, gt_valid, hits):
    """Boxes in order take the highest-confidence unmatched prediction. `(I, T, N)` bool."""
    num_images, num_thresholds = hits.shape[0], hits.shape[1]
    available = np.repeat(pred_valid[:, None, :], num_thresholds, axis=1)  # (I, T, N)
    image_index = np.arange(num_images)[:, None]
    threshold_index = np.arange(num_thresholds)[None, :]
    for box in range(iou.shape[2]):  # visit ground-truth boxes in their given order
        candidates = available & hits[:, :, :, box] & gt_valid[:, box, None, None]
        first = np.argmax(candidates, axis=-1)  # highest confidence: predictions are sorted
        found = candidates.any(axis=-1)
        available[image_index, threshold_index, first] &= ~found
    return pred_valid[:, None, :] & ~available


def _matched_predictions(
    gt_boxes_xyxy, pred_boxes_xyxy, pred_scores, thresholds, matching, strict_iou
):
    """Padded, score-sorted predictions and which of them are hits at each threshold.

    Returns:
        matched `(I, T, N)` bool, pred_valid `(I, N)`, gt_valid `(I, G)`, sorted scores `(I, N)`
        and the sorted boxes `(I, N, 4)`.
    """
    if matching not in MATCHING_RULES:
        raise ValueError(f"matching must be one of {MATCHING_RULES}, got {matching!r}.")
    if not len(gt_boxes_xyxy) == len(pred_boxes_xyxy) == len(pred_scores):
        raise ValueError("Need one entry per image in ground truth, boxes and scores.")
    gt, gt_valid = pad_boxes(gt_boxes_xyxy)
    pred, pred_valid, scores = pad_boxes(pred_boxes_xyxy, pred_scores)
    iou = pairwise_iou_batched(pred, gt)  # (I, N, G)
    limits = np.asarray(thresholds, np.float64)[None, :, None, None]
    hits = iou[:, None] > limits if strict_iou else iou[:, None] >= limits  # (I, T, N, G)
    hits &= gt_valid[:, None, None, :]
    rule = _match_confidence_first if matching == "confidence_first" else _match_ground_truth_first
    return rule(iou, pred_valid, gt_valid, hits), pred_valid, gt_valid, scores, pred


def match_detections(
    gt_boxes_xyxy: Sequence[np.ndarray],
    pred_boxes_xyxy: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    iou_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Which detections hit a ground-truth box at one IoU threshold (the metric's matching).

    Args:
        gt_boxes_xyxy: `I` arrays `(m_i, 4)`.
        pred_boxes_xyxy: `I` arrays `(n_i, 4)`.
        pred_scores: `I` arrays `(n_i,)`.
        iou_threshold: A hit needs IoU >= this.

    Returns:
        `boxes_xyxy (I, N, 4)`, `scores (I, N)`, `valid (I, N)` and `hit (I, N)`: each image's
        detections sorted by decreasing score and padded, and whether each is a true positive
        (confidence-first greedy matching, as `rsna_scores`).
    """
    matched, valid, _, scores, boxes_xyxy = _matched_predictions(
        gt_boxes_xyxy, pred_boxes_xyxy, pred_scores, (iou_threshold,), "confidence_first", False
    )
    return boxes_xyxy, scores, valid, matched[:, 0] & valid


def rsna_scores(
    gt_boxes_xyxy: Sequence[np.ndarray],
    pred_boxes_xyxy: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    iou_thresholds: np.ndarray = RSNA_IOU_THRESHOLDS,
    matching: str = "confidence_first",
    strict_iou: bool = False,
) -> DetectionScores:
    """Evaluates detections of many images with the RSNA rules (see the module docstring).

    Args:
        gt_boxes_xyxy: Per image, `(G_i, 4)` ground-truth boxes (any pixel frame, same as preds).
        pred_boxes_xyxy: Per image, `(N_i, 4)` predicted boxes.
        pred_scores: Per image, `(N_i,)` confidences (only their order matters).
        iou_thresholds: `(T,)` IoU thresholds.
        matching: One of `MATCHING_RULES`.
        strict_iou: Count a hit only for IoU > t (the competition text) instead of >= t.

    Returns:
        The metric, per-image scores, and precision/recall at IoU 0.5.
    """
    thresholds = np.asarray(iou_thresholds, np.float64)
    matched, pred_valid, gt_valid, _, _ = _matched_predictions(
        gt_boxes_xyxy, pred_boxes_xyxy, pred_scores, thresholds, matching, strict_iou
    )
    true_positives = matched.sum(axis=-1)  # (I, T)
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
        image_level=image_level_scores(num_gt[:, 0] > 0, num_pred[:, 0] > 0),
        detections_per_image=num_pred[:, 0].astype(np.int64),
    )


@dataclass(frozen=True)
class PrecisionRecall:
    """The precision-recall curve of a set of images at one IoU threshold.

    Attributes:
        average_precision: Area under the interpolated curve (all-point, as PASCAL VOC 2010+):
            the sum over recall steps of the best precision at that recall or beyond. 0 when
            there is no ground truth box.
        precision: `(D,)` precision after each detection, detections by decreasing score.
        recall: `(D,)` recall after each detection.
        scores: `(D,)` the detections' scores, decreasing.
        num_gt: Number of ground-truth boxes.
    """

    average_precision: float
    precision: np.ndarray
    recall: np.ndarray
    scores: np.ndarray
    num_gt: int


def precision_recall(
    gt_boxes_xyxy: Sequence[np.ndarray],
    pred_boxes_xyxy: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    iou_threshold: float = 0.5,
) -> PrecisionRecall:
    """Pooled precision-recall curve and average precision (a threshold-free summary).

    Detections of all images are pooled and sorted by score; each is a true positive if the
    per-image matching (confidence first, IoU >= `iou_threshold`) matched it. Pass detections
    with a low score threshold so that the curve reaches high recall.

    Args:
        gt_boxes_xyxy: Per image, `(G_i, 4)` ground-truth boxes.
        pred_boxes_xyxy: Per image, `(N_i, 4)` detections.
        pred_scores: Per image, `(N_i,)` their scores.
        iou_threshold: IoU needed for a hit.

    Returns:
        The curve and its average precision.
    """
    matched, pred_valid, gt_valid, scores, _ = _matched_predictions(
        gt_boxes_xyxy, pred_boxes_xyxy, pred_scores, [iou_threshold], "confidence_first", False
    )
    hit = matched[:, 0][pred_valid]  # (D,)
    detection_scores = scores[pred_valid]
    order = np.argsort(-detection_scores, kind="stable")
    hit, detection_scores = hit[order], detection_scores[order]
    num_gt = int(gt_valid.sum())
    true_positives = np.cumsum(hit)
    precision = true_positives / np.arange(1, len(hit) + 1)
    recall = true_positives / max(num_gt, 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at >= recall
    recall_steps = np.diff(np.concatenate([[0.0], recall]))
    average_precision = float(np.sum(recall_steps * envelope)) if num_gt else 0.0
    return PrecisionRecall(average_precision, precision, recall, detection_scores, num_gt)


def bootstrap_interval(
    per_image: np.ndarray,
    confidence: float = 0.95,
    num_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean over images (e.g. the RSNA metric).

    Images are resampled with replacement; NaN entries (images the metric does not count)
    are resampled too and skipped in each mean, exactly as the metric skips them.

    Args:
        per_image: `(I,)` per-image values, NaN for uncounted images.
        confidence: Coverage of the interval.
        num_resamples: Bootstrap resamples.
        seed: Seed of the resampling.

    Returns:
        `(low, high)`.
    """
    values = np.asarray(per_image, np.float64).reshape(-1)
    if not np.isfinite(values).any():
        raise ValueError("No counted image: the interval is undefined.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}.")
    rng = np.random.default_rng(seed)
    samples = values[rng.integers(0, len(values), size=(num_resamples, len(values)))]
    means = _nan_skipping_mean(samples)  # NaN where a resample drew no counted image
    means = means[np.isfinite(means)]
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedDifference:
    """Arm B minus arm A on the same seeds and the same images, with a bootstrap interval.

    Attributes:
        difference: Mean over seeds of `metric_B(seed) - metric_A(seed)`, each metric a mean
            over the counted images.
        low: Lower end of the interval.
        high: Upper end.
        confidence: Coverage of the interval (0.95).
        num_seeds: Seeds paired.
        num_images: Images paired.
    """

    difference: float
    low: float
    high: float
    confidence: float
    num_seeds: int
    num_images: int

    def verdict(self, better: str = "better", worse: str = "worse") -> str:
        """`better` / `worse` only when the interval excludes 0; otherwise "no difference
        found with N seeds"."""
        if self.low > 0:
            return better
        if self.high < 0:
            return worse
        seeds = "seed" if self.num_seeds == 1 else "seeds"
        return f"no difference found with {self.num_seeds} {seeds}"

    def row(self, digits: int = 3) -> dict:
        """The difference, its interval, the seeds and images paired and the verdict, as one
        table row (rounded to `digits`)."""
        return {
            "difference": round(self.difference, digits),
            "95% low": round(self.low, digits),
            "95% high": round(self.high, digits),
            "seeds": self.num_seeds,
            "images": self.num_images,
            "verdict": self.verdict(),
        }

    def __str__(self) -> str:
        percent = round(100 * self.confidence)
        return f"{self.difference:+.3f} ({percent} % CI {self.low:+.3f} to {self.high:+.3f})"


def _nan_skipping_mean(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis (images), skipping NaN; NaN where no image is counted."""
    counted = np.isfinite(values)
    sums = np.where(counted, values, 0.0).sum(axis=-1)
    counts = counted.sum(axis=-1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def paired_bootstrap_difference(
    per_image_a: np.ndarray,
    per_image_b: np.ndarray,
    confidence: float = 0.95,
    num_resamples: int = 2000,
    seed: int = 0,
) -> PairedDifference:
    """Paired difference of two arms (B - A) with a percentile bootstrap over seeds and images.

    Both arms were trained with the same seeds and scored on the same images. Each resample
    draws seeds with replacement and, independently, images with replacement, and applies
    the same draw to both arms (that is the pairing): its statistic is the mean over the drawn
    seeds of `nanmean(B[s, images]) - nanmean(A[s, images])`. NaN entries are images the
    metric does not count for that run (the RSNA metric skips an image without boxes and
    without detections); they are skipped in each mean, as the metric skips them. Resampling
    the seeds too makes the interval reflect training noise, not only the choice of images.

    Args:
        per_image_a: `(S, I)` per-image values of arm A, row `s` from seed `s`.
        per_image_b: `(S, I)` the same for arm B (same seeds, same images, same order).
        confidence: Coverage of the interval.
        num_resamples: Bootstrap resamples.
        seed: Seed of the resampling.

    Returns:
        The difference, its interval, and the number of seeds and images.

    Raises:
        ValueError: If the shapes differ, or a seed of either arm counts no image.
    """
    a = np.atleast_2d(np.asarray(per_image_a, np.float64))
    b = np.atleast_2d(np.asarray(per_image_b, np.float64))
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"Both arms need one (seeds, images) shape, got {a.shape}, {b.shape}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}.")
    if np.isnan(_nan_skipping_mean(a)).any() or np.isnan(_nan_skipping_mean(b)).any():
        raise ValueError("Every seed of both arms must count at least one image.")
    num_seeds, num_images = a.shape
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, num_seeds, size=(num_resamples, num_seeds))  # (R, S)
    image_draws = rng.integers(0, num_images, size=(num_resamples, num_images))  # (R, I)
    rows, columns = seed_draws[:, :, None], image_draws[:, None, :]  # (R, S, I) by broadcasting
    per_seed = _nan_skipping_mean(b[rows, columns]) - _nan_skipping_mean(a[rows, columns])  # (R, S)
    statistics = _nan_skipping_mean(per_seed)  # (R,); a seed with no counted image drawn is skipped
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(statistics[np.isfinite(statistics)], [tail, 1.0 - tail])
    return PairedDifference(
        difference=float(np.mean(_nan_skipping_mean(b) - _nan_skipping_mean(a))),
        low=float(low),
        high=float(high),
        confidence=confidence,
        num_seeds=num_seeds,
        num_images=num_images,
    )
