import numpy as np
import pytest

from retinanet_lib.metrics import RSNA_IOU_THRESHOLDS, pad_boxes, rsna_scores

from .test_boxes import iou_reference


def image_score_reference(gt, pred, scores, thresholds=RSNA_IOU_THRESHOLDS):
    """The competition rule written plainly, one image, one threshold at a time."""
    if len(gt) == 0 and len(pred) == 0:
        return None
    order = np.argsort(-np.asarray(scores), kind="stable")
    values = []
    for t in thresholds:
        unmatched = list(range(len(gt)))
        tp = fp = 0
        for i in order:
            ious = [(iou_reference(pred[i], gt[j]), j) for j in unmatched]
            best = max(ious, default=(0.0, None))
            if best[1] is not None and best[0] >= t:
                tp += 1
                unmatched.remove(best[1])
            else:
                fp += 1
        values.append(tp / (tp + fp + len(unmatched)))
    return float(np.mean(values))


def test_thresholds_are_the_competitions():
    np.testing.assert_allclose(RSNA_IOU_THRESHOLDS, [0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75])


def test_perfect_prediction_scores_one():
    gt = [np.array([[0, 0, 10, 10], [20, 20, 40, 30]], np.float32)]
    result = rsna_scores(gt, gt, [np.array([0.9, 0.8])])
    assert result.rsna_metric == 1.0 and result.precision == 1.0 and result.recall == 1.0


def test_empty_images_are_not_counted_but_false_positives_on_them_are():
    empty = np.zeros((0, 4), np.float32)
    box = np.array([[0, 0, 10, 10]], np.float32)
    result = rsna_scores([empty, box], [empty, box], [np.zeros(0), np.ones(1)])
    assert np.isnan(result.per_image[0]) and result.rsna_metric == 1.0
    result = rsna_scores([empty], [box], [np.ones(1)])  # all false positives
    assert result.rsna_metric == 0.0 and result.precision == 0.0
    result = rsna_scores([box], [empty], [np.zeros(0)])  # a missed box
    assert result.rsna_metric == 0.0 and result.recall == 0.0
    assert np.isnan(rsna_scores([empty], [empty], [np.zeros(0)]).rsna_metric)


def test_partial_iou_between_thresholds():
    # Prediction shifted so that IoU = 60 / 140 = 0.42857...: a hit at 0.40 only -> 1/8.
    gt = [np.array([[0, 0, 10, 10]], np.float32)]
    pred = [np.array([[4, 0, 14, 10]], np.float32)]
    iou = 60 / 140
    assert 0.40 < iou < 0.45
    assert rsna_scores(gt, pred, [np.ones(1)]).rsna_metric == pytest.approx(1 / 8)
    # IoU 0.6 exactly hits 0.40 .. 0.60 (5 thresholds): score 5/8.
    pred = [np.array([[2.5, 0, 12.5, 10]], np.float32)]  # 75 / 125 = 0.6
    assert rsna_scores(gt, pred, [np.ones(1)]).rsna_metric == pytest.approx(5 / 8)


def test_confidence_order_decides_who_gets_the_box():
    gt = [np.array([[0, 0, 10, 10]], np.float32)]
    pred = [np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)]
    # Duplicate: one TP, one FP at every threshold -> 1 / 2.
    assert rsna_scores(gt, pred, [np.array([0.3, 0.9])]).rsna_metric == pytest.approx(0.5)
    # A worse box (IoU 0.43) with higher confidence takes the box at t = 0.40 and leaves the
    # perfect box a false positive; above 0.40 it is the false positive: 1 TP + 1 FP each time.
    pred = [np.array([[0, 0, 10, 10], [4, 0, 14, 10]], np.float32)]
    got = rsna_scores(gt, pred, [np.array([0.1, 0.9])])
    assert got.rsna_metric == pytest.approx(0.5)
    assert got.true_positives.tolist() == [1] * 8 and got.false_positives.tolist() == [1] * 8
    # Two boxes, where the order matters: the confident loose box takes box A at low
    # thresholds; the precise box has nothing left there.
    gt = [np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32)]
    pred = [np.array([[4, 0, 14, 10], [0, 0, 10, 10]], np.float32)]
    confident_loose = rsna_scores(gt, pred, [np.array([0.9, 0.1])]).rsna_metric
    confident_precise = rsna_scores(gt, pred, [np.array([0.1, 0.9])]).rsna_metric
    assert confident_loose == pytest.approx(1 / 3)  # TP 1, FP 1, FN 1 at every threshold
    assert confident_precise == pytest.approx(1 / 3)
    assert confident_loose == image_score_reference(gt[0], pred[0], [0.9, 0.1])


def test_vectorized_metric_matches_the_plain_rule_on_random_cases():
    rng = np.random.default_rng(0)
    gts, preds, scores, expected = [], [], [], []
    for _ in range(60):
        num_gt, num_pred = rng.integers(0, 4), rng.integers(0, 6)
        gt = rng.uniform(0, 60, (num_gt, 2))
        gt = np.concatenate([gt, gt + rng.uniform(10, 40, (num_gt, 2))], 1).astype(np.float32)
        jitter = rng.normal(0, 6, (num_pred, 4))
        base = gt[rng.integers(0, num_gt, num_pred)] if num_gt else np.zeros((num_pred, 4))
        pred = (base + jitter).astype(np.float32) if num_gt else rng.uniform(0, 80, (num_pred, 4))
        pred = np.concatenate(
            [np.minimum(pred[:, :2], pred[:, 2:]), np.maximum(pred[:, :2], pred[:, 2:])], 1
        ).astype(np.float32)
        score = rng.uniform(size=num_pred)
        gts.append(gt)
        preds.append(pred)
        scores.append(score)
        expected.append(image_score_reference(gt, pred, score))
    result = rsna_scores(gts, preds, scores)
    counted = [e for e in expected if e is not None]
    assert result.rsna_metric == pytest.approx(np.mean(counted), abs=1e-9)
    for got, want in zip(result.per_image, expected, strict=True):
        assert (np.isnan(got) and want is None) or got == pytest.approx(want)


def test_pad_boxes_sorts_by_score():
    boxes = [np.array([[0, 0, 1, 1], [5, 5, 6, 6]], np.float32), np.zeros((0, 4))]
    padded, valid, scores = pad_boxes(boxes, [np.array([0.2, 0.7]), np.zeros(0)])
    np.testing.assert_array_equal(padded[0, 0], [5, 5, 6, 6])
    np.testing.assert_array_equal(valid, [[True, True], [False, False]])
    with pytest.raises(ValueError):
        rsna_scores([np.zeros((0, 4))], [], [])
