"""What a label set says without any image: box geometry, anchor coverage, the view shortcut,
and the score of a "detector" that only knows where boxes usually are.

Used on the real RSNA labels (`real_labels`) and on the synthetic set, so that the book can
put the two side by side. Everything is vectorized over boxes and anchors; the loops are over
the few image sizes, folds and candidate priors.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import tensorflow as tf
from scipy import stats

from retinanet_lib.anchors import anchor_level_ids, generate_anchors
from retinanet_lib.boxes import pairwise_iou, xywh_to_xyxy
from retinanet_lib.config import EncoderConfig, RetinaNetConfig
from retinanet_lib.encoding import match_anchors
from retinanet_lib.metrics import pad_boxes, rsna_scores
from retinanet_lib.rsna import RSNA_IMAGE_SIZE, RsnaLabels

__all__ = [
    "BOX_QUANTITIES",
    "anchor_coverage",
    "box_table",
    "boxes_per_positive_image",
    "compare_label_sets",
    "location_prior_floor",
    "positive_anchors_per_box",
    "positive_rate_by_view",
    "view_only_auc",
]

#: The per-box quantities compared between label sets (columns of `box_table`).
BOX_QUANTITIES = ("width", "height", "aspect", "area_fraction", "midline_distance", "centre_y")
#: Two label sets "differ" in a quantity where the two-sample test's p-value is below this.
DIFFERENCE_ALPHA = 0.01
#: Boxes per positive image are compared in these bins: 1, 2, and 3 or more.
_COUNT_BINS = (1, 2, 3)
#: Images matched together in `anchor_coverage` (bounds the `(images, A, G)` IoU memory).
_IMAGES_PER_CHUNK = 256


def box_table(labels: RsnaLabels, image_size: float = RSNA_IMAGE_SIZE) -> pd.DataFrame:
    """One row per box, in the frame of a 1024-pixel image whatever the set's image size.

    Args:
        labels: Parsed labels.
        image_size: Side of the images the labels refer to (the synthetic set may be smaller).

    Returns:
        Columns `patientId`, `width`, `height` (pixels of a 1024 x 1024 image), `aspect`
        (height / width), `centre_x`, `centre_y` (fractions of the image side, 0 = left / top),
        `midline_distance` (`|centre_x - 0.5|`: how far from the image's vertical midline, the
        one-lobed measure of a two-lung quantity) and `area_fraction` (box area / image area).
    """
    ids = [pid for pid, boxes in labels.boxes_xywh.items() if len(boxes)]
    if not ids:
        return pd.DataFrame(columns=["patientId", *BOX_QUANTITIES, "centre_x"])
    boxes_xywh = np.concatenate([labels.boxes_xywh[pid] for pid in ids]).astype(np.float64)
    counts = [len(labels.boxes_xywh[pid]) for pid in ids]
    to_1024 = RSNA_IMAGE_SIZE / float(image_size)
    x, y, width, height = (boxes_xywh[:, k] for k in range(4))
    return pd.DataFrame(
        {
            "patientId": np.repeat(ids, counts),
            "width": width * to_1024,
            "height": height * to_1024,
            "aspect": height / width,
            "centre_x": (x + width / 2) / image_size,
            "centre_y": (y + height / 2) / image_size,
            "midline_distance": np.abs((x + width / 2) / image_size - 0.5),
            "area_fraction": width * height / float(image_size) ** 2,
        }
    )


def boxes_per_positive_image(labels: RsnaLabels) -> np.ndarray:
    """`(P,)` int number of boxes of each patient with at least one box."""
    counts = np.array([len(boxes) for boxes in labels.boxes_xywh.values()], np.int64)
    return counts[counts > 0]


def compare_label_sets(
    reference: RsnaLabels,
    other: RsnaLabels,
    reference_image_size: float = RSNA_IMAGE_SIZE,
    other_image_size: float = RSNA_IMAGE_SIZE,
    alpha: float = DIFFERENCE_ALPHA,
) -> pd.DataFrame:
    """Two-sample tests of box geometry and boxes per image between two label sets.

    Per-box quantities (`BOX_QUANTITIES`) get the Kolmogorov-Smirnov test; its statistic is the
    largest gap between the two cumulative distributions (0 = identical, 1 = disjoint). Boxes
    per positive image (1, 2, 3 or more) get a chi-square test of the 2 x 3 table.

    Args:
        reference: The set compared against (e.g. the real labels).
        other: The set tested (e.g. the synthetic generator's labels).
        reference_image_size: Image side of `reference`'s labels.
        other_image_size: Image side of `other`'s labels.
        alpha: A p-value below this reads "differs".

    Returns:
        One row per quantity: `quantity`, `reference_median`, `other_median`, `test`,
        `statistic`, `p_value`, `n_reference`, `n_other`, `verdict`.
    """
    table_ref = box_table(reference, reference_image_size)
    table_other = box_table(other, other_image_size)
    if table_ref.empty or table_other.empty:
        raise ValueError("Both label sets need at least one box to be compared.")
    rows = []
    for quantity in BOX_QUANTITIES:
        a, b = table_ref[quantity].to_numpy(), table_other[quantity].to_numpy()
        result = stats.ks_2samp(a, b)
        rows.append(
            (
                quantity,
                np.median(a),
                np.median(b),
                "Kolmogorov-Smirnov",
                result.statistic,
                result.pvalue,
                len(a),
                len(b),
            )
        )
    counts_ref, counts_other = boxes_per_positive_image(reference), boxes_per_positive_image(other)
    edges = [*_COUNT_BINS, np.inf]
    table = np.stack([np.histogram(c, bins=edges)[0] for c in (counts_ref, counts_other)])  # (2, 3)
    table = table[:, table.sum(axis=0) > 0]  # an empty bin has no expected count
    chi2 = stats.chi2_contingency(table) if table.shape[1] > 1 else None
    rows.append(
        (
            "boxes per positive image",
            np.median(counts_ref),
            np.median(counts_other),
            "chi-square (1, 2, 3+)",
            chi2.statistic if chi2 else 0.0,
            chi2.pvalue if chi2 else 1.0,
            len(counts_ref),
            len(counts_other),
        )
    )
    frame = pd.DataFrame(
        rows,
        columns=[
            "quantity",
            "reference_median",
            "other_median",
            "test",
            "statistic",
            "p_value",
            "n_reference",
            "n_other",
        ],
    )
    frame["verdict"] = np.where(frame["p_value"] < alpha, "differs", "no difference found")
    return frame


def _padded_boxes_xyxy(labels: RsnaLabels, scale: float) -> np.ndarray:
    """`(P, G, 4)` float32 "xyxy" boxes of the positive patients, scaled, zero-padded."""
    boxes_xywh = [b for b in labels.boxes_xywh.values() if len(b)]
    padded_xywh, _ = pad_boxes(boxes_xywh)
    return (xywh_to_xyxy(padded_xywh).numpy() * scale).astype(np.float32)


@tf.function(reduce_retracing=True)
def _positives_per_box(gt_xyxy, anchors_xyxy, encoder: EncoderConfig):
    """`(I, G, 4)` boxes -> `(I, G)` int32 positive anchors of each box (per-image matching)."""
    num_slots = tf.shape(gt_xyxy)[1]

    def one_image(image_boxes):  # (G, 4) -> (G,)
        matched, positive, _ = match_anchors(pairwise_iou(anchors_xyxy, image_boxes), encoder)
        hits = tf.one_hot(tf.where(positive, matched, -1), num_slots, dtype=tf.int32)  # (A, G)
        return tf.reduce_sum(hits, axis=0)

    return tf.vectorized_map(one_image, gt_xyxy)


def _level_can_match(box_areas: np.ndarray, anchor_areas: np.ndarray, match_iou: float):
    """`(I,)` bool: whether any box of an image could reach `match_iou` with an anchor of one
    level. IoU never exceeds the smaller area over the larger, so a box whose area lies
    outside `[min_area * match_iou, max_area / match_iou]` cannot match that level."""
    low, high = anchor_areas.min() * match_iou, anchor_areas.max() / match_iou
    return ((box_areas >= low) & (box_areas <= high)).any(axis=1)


def positive_anchors_per_box(
    labels: RsnaLabels,
    cfg: RetinaNetConfig,
    image_size: int,
    label_image_size: float = RSNA_IMAGE_SIZE,
) -> np.ndarray:
    """The positive anchors of every box once the image is resized to `image_size`.

    Each image's boxes are scaled and matched with `encoding.match_anchors` (the encoder's
    own rule, `cfg.encoder`), every image on its own. The matching runs one pyramid level at
    a time and only for the images with a box whose area could reach the match IoU with that
    level's anchors (the others have no positive anchor there), which gives the same counts
    as matching all anchors at once. With `match_low_quality` (a box's best anchor over all
    levels is also positive) all anchors are matched at once.

    Args:
        labels: Parsed labels.
        cfg: Detector config: its anchors and encoder thresholds (its image size is not used).
        image_size: Model input side.
        label_image_size: Side of the images the labels refer to.

    Returns:
        `(num_boxes,)` int64 counts, boxes in `labels` order (patients, then their boxes).
    """
    encoder = cfg.encoder
    anchors_xyxy = np.asarray(generate_anchors(int(image_size), int(image_size), cfg.anchors))
    levels = anchor_level_ids(int(image_size), int(image_size), cfg.anchors)
    gt_xyxy = _padded_boxes_xyxy(labels, image_size / float(label_image_size))  # (I, G, 4)
    box_areas = np.prod(gt_xyxy[..., 2:] - gt_xyxy[..., :2], axis=-1)  # (I, G), 0 = padding
    counts = np.zeros(box_areas.shape, np.int64)
    if encoder.match_low_quality:  # a box's best anchor over all levels: match all at once
        _add_positive_counts(counts, gt_xyxy, np.arange(len(gt_xyxy)), anchors_xyxy, encoder)
        return counts[box_areas > 0]
    for level in np.unique(levels):
        level_anchors = anchors_xyxy[levels == level]
        anchor_areas = np.prod(level_anchors[:, 2:] - level_anchors[:, :2], axis=-1)
        images = np.flatnonzero(_level_can_match(box_areas, anchor_areas, encoder.match_iou))
        _add_positive_counts(counts, gt_xyxy, images, level_anchors, encoder)
    return counts[box_areas > 0]


def _add_positive_counts(counts, gt_xyxy, images, anchors_xyxy, encoder) -> None:
    """Adds, for the `images` (indices), each box's positive anchors among `anchors_xyxy`."""
    for start in range(0, len(images), _IMAGES_PER_CHUNK):
        chunk = images[start : start + _IMAGES_PER_CHUNK]
        counts[chunk] += _positives_per_box(
            tf.constant(gt_xyxy[chunk]), tf.constant(anchors_xyxy), encoder
        ).numpy()


def anchor_coverage(
    labels: RsnaLabels,
    cfg: RetinaNetConfig,
    image_sizes: tuple[int, ...],
    label_image_size: float = RSNA_IMAGE_SIZE,
    anchor_scale: float = 1.0,
) -> pd.DataFrame:
    """How the library's anchors and matching cover a label set's boxes at each input size.

    Args:
        labels: Parsed labels.
        cfg: Detector config: its anchors and encoder thresholds.
        image_sizes: Model input sides to report.
        label_image_size: Side of the images the labels refer to.
        anchor_scale: Multiplies every level's anchor base size (0.5: the halved anchors of
            Chapter 5's resolution study).

    Returns:
        One row per size: `image_size`, `anchor_scale`, `boxes`, `boxes_without_anchor`,
        `share_without_anchor`, and the positive anchors per box (`positive_anchors_per_box`):
        `median`, `mean`, `p10` (10th percentile) and `max`.
    """
    if anchor_scale <= 0:
        raise ValueError(f"anchor_scale must be positive, got {anchor_scale}.")
    base_sizes = tuple(side * anchor_scale for side in cfg.anchors.base_sizes)
    cfg = dataclasses.replace(cfg, anchors=dataclasses.replace(cfg.anchors, base_sizes=base_sizes))
    rows = []
    for size in image_sizes:
        per_box = positive_anchors_per_box(labels, cfg, int(size), label_image_size)
        rows.append(
            {
                "image_size": int(size),
                "anchor_scale": float(anchor_scale),
                "boxes": len(per_box),
                "boxes_without_anchor": int((per_box == 0).sum()),
                "share_without_anchor": float((per_box == 0).mean()),
                "median": float(np.median(per_box)),
                "mean": float(per_box.mean()),
                "p10": float(np.percentile(per_box, 10)),
                "max": int(per_box.max()),
            }
        )
    return pd.DataFrame(rows)


def positive_rate_by_view(labels: RsnaLabels, view_by_patient: pd.Series) -> pd.DataFrame:
    """The share of patients with an opacity per view position.

    Args:
        labels: Parsed labels.
        view_by_patient: Patient id -> view (`"AP"` / `"PA"`); patients missing here are
            counted in the `no valid header` row.

    Returns:
        Indexed by view: `patients`, `with_opacity`, `positive_rate`.
    """
    positive = pd.Series(
        {pid: len(boxes) > 0 for pid, boxes in labels.boxes_xywh.items()}, dtype=bool
    )
    view = view_by_patient.reindex(positive.index).fillna("no valid header")
    table = positive.groupby(view).agg(patients="size", with_opacity="sum")
    table["positive_rate"] = table["with_opacity"] / table["patients"]
    return table


def view_only_auc(labels: RsnaLabels, view_by_patient: pd.Series, risky_view: str = "AP") -> float:
    """Area under the ROC curve of an image-level "classifier" that sees only the view.

    It scores 1 for `risky_view` and 0 otherwise; ties count one half (Mann-Whitney U / n1 n2).
    Patients without a view are left out.
    """
    view = view_by_patient.reindex(list(labels.boxes_xywh)).dropna()
    positive = np.array([len(labels.boxes_xywh[pid]) > 0 for pid in view.index])
    score = (view.to_numpy() == risky_view).astype(float)
    if positive.all() or not positive.any():
        raise ValueError("Need patients with and without an opacity.")
    u_statistic = stats.mannwhitneyu(score[positive], score[~positive]).statistic
    return float(u_statistic / (positive.sum() * (~positive).sum()))


def _median_box_per_half(boxes_xyxy: np.ndarray, image_size: float) -> tuple[np.ndarray, ...]:
    """The median box of each image half (left / right of the vertical midline) that holds
    boxes, and the share of boxes there: `(H, 4)` boxes and `(H,)` shares, `H` <= 2."""
    left = (boxes_xyxy[:, 0] + boxes_xyxy[:, 2]) / 2 < image_size / 2
    halves = [h for h in (boxes_xyxy[left], boxes_xyxy[~left]) if len(h)]
    return np.stack([np.median(h, axis=0) for h in halves]), np.array(
        [len(h) / len(boxes_xyxy) for h in halves]
    )


def location_prior_floor(
    labels: RsnaLabels,
    num_folds: int = 5,
    seed: int = 0,
    gate_view: pd.Series | None = None,
    image_size: float = RSNA_IMAGE_SIZE,
) -> pd.DataFrame:
    """The RSNA metric of a "detector" that never looks at the image, fitted and scored by fold.

    The prior is fitted on the other folds' boxes: the median box of each image half, scored
    by that half's share of boxes. Two candidates, both boxes or only the more common half's,
    are compared on the training folds and the better one is scored on the held-out fold.
    The same prior is scored three ways: on every image (no gate), only on the images that
    hold an opacity (a perfect image-level gate, the true label), and, with `gate_view`, only
    on the images of view `"AP"` (a gate that looks at nothing but the view position).

    Args:
        labels: Parsed labels (ground truth and the patients).
        num_folds: Folds, by patient.
        seed: Seed of the patient permutation.
        gate_view: Patient id -> view position, for the view gate.
        image_size: Side of the images the labels refer to.

    Returns:
        One row per fold: `fold`, `images`, `with_opacity`, `prior_boxes`, `no_gate`,
        `perfect_gate` and (with `gate_view`) `view_gate`.
    """
    ids = np.asarray(labels.patient_ids)
    gt_xywh = [labels.boxes_xywh[pid] for pid in ids]
    gt_xyxy = [np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1) for b in gt_xywh]
    positive = np.array([len(b) > 0 for b in gt_xyxy])
    folds = np.random.default_rng(seed).permutation(len(ids)) % num_folds
    rows = []

    def score(indices, prior_xyxy, prior_scores, predict):
        """RSNA metric on `indices`, with the prior on the images where `predict` holds."""
        none = np.zeros((0, 4), np.float32)
        preds = [prior_xyxy if p else none for p in predict[indices]]
        scores = [prior_scores if p else np.zeros(0) for p in predict[indices]]
        result = rsna_scores([gt_xyxy[i] for i in indices], preds, scores).rsna_metric
        return 0.0 if np.isnan(result) else result  # nothing counted: no hit either

    is_ap = None
    if gate_view is not None:
        is_ap = gate_view.reindex(ids).to_numpy() == "AP"
    for fold in range(num_folds):
        train, held_out = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        boxes = np.concatenate([gt_xyxy[i] for i in train if positive[i]])
        halves, shares = _median_box_per_half(boxes, image_size)
        common = int(np.argmax(shares))
        candidates = [(halves, shares), (halves[common : common + 1], shares[common : common + 1])]
        everywhere = np.ones(len(ids), bool)
        fitted = [score(train, c[0], c[1], everywhere) for c in candidates]
        prior_xyxy, prior_scores = candidates[int(np.argmax(fitted))]
        row = {
            "fold": fold,
            "images": len(held_out),
            "with_opacity": int(positive[held_out].sum()),
            "prior_boxes": len(prior_xyxy),
            "no_gate": score(held_out, prior_xyxy, prior_scores, everywhere),
            "perfect_gate": score(held_out, prior_xyxy, prior_scores, positive),
        }
        if is_ap is not None:
            row["view_gate"] = score(held_out, prior_xyxy, prior_scores, is_ap)
        rows.append(row)
    return pd.DataFrame(rows)
