import numpy as np
import pytest

from retinanet_lib.metrics import (
    RSNA_IOU_THRESHOLDS,
    match_detections,
    pad_boxes,
    rsna_scores,
)

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


def average_precision_reference(gts, preds, scores, iou_threshold=0.5):
    """VOC all-point AP written plainly: pool detections, walk them by score."""
    pooled = []
    for image, (gt, pred, score) in enumerate(zip(gts, preds, scores, strict=True)):
        order = np.argsort(-np.asarray(score), kind="stable")
        unmatched = list(range(len(gt)))
        for i in order:
            ious = [(iou_reference(pred[i], gt[j]), j) for j in unmatched]
            best = max(ious, default=(0.0, None))
            hit = best[1] is not None and best[0] >= iou_threshold
            if hit:
                unmatched.remove(best[1])
            pooled.append((float(score[i]), image, hit))
    pooled.sort(key=lambda item: -item[0])
    num_gt = sum(len(g) for g in gts)
    tp, points = 0, []
    for rank, (_, _, hit) in enumerate(pooled, start=1):
        tp += hit
        points.append((tp / num_gt, tp / rank))
    ap, previous_recall = 0.0, 0.0
    for k, (recall, _) in enumerate(points):
        best_precision = max(p for _, p in points[k:])
        ap += (recall - previous_recall) * best_precision
        previous_recall = recall
    return ap


def random_case(rng, num_images=40):
    gts, preds, scores = [], [], []
    for _ in range(num_images):
        num_gt, num_pred = rng.integers(0, 4), rng.integers(0, 6)
        gt = rng.uniform(0, 60, (num_gt, 2))
        gt = np.concatenate([gt, gt + rng.uniform(10, 40, (num_gt, 2))], 1).astype(np.float32)
        base = (
            gt[rng.integers(0, num_gt, num_pred)] if num_gt else rng.uniform(0, 60, (num_pred, 4))
        )
        pred = (base + rng.normal(0, 5, (num_pred, 4))).astype(np.float32)
        pred = np.concatenate(
            [np.minimum(pred[:, :2], pred[:, 2:]), np.maximum(pred[:, :2], pred[:, 2:])], 1
        )
        gts.append(gt)
        preds.append(pred)
        scores.append(rng.uniform(size=num_pred))
    return gts, preds, scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_matches_the_plain_computation(seed):
    from retinanet_lib.metrics import precision_recall

    gts, preds, scores = random_case(np.random.default_rng(seed))
    curve = precision_recall(gts, preds, scores)
    assert curve.average_precision == pytest.approx(
        average_precision_reference(gts, preds, scores), abs=1e-12
    )
    assert curve.num_gt == sum(len(g) for g in gts)
    assert (np.diff(curve.scores) <= 0).all() and (np.diff(curve.recall) >= 0).all()


def test_average_precision_hand_values():
    from retinanet_lib.metrics import precision_recall

    box = np.array([[0, 0, 10, 10]], np.float32)
    far = np.array([[50, 50, 60, 60]], np.float32)
    # Two images, one box each. Detections by score: hit (0.9), miss (0.8), hit (0.7).
    # Precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1: AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    gts = [box, box]
    preds = [np.concatenate([box, far]), box]
    curve = precision_recall(gts, preds, [np.array([0.9, 0.8]), np.array([0.7])])
    assert curve.average_precision == pytest.approx(5 / 6)
    np.testing.assert_allclose(curve.precision, [1, 1 / 2, 2 / 3])
    no_truth = precision_recall([np.zeros((0, 4))], [box], [np.ones(1)])
    assert no_truth.average_precision == 0.0


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_images():
    from retinanet_lib.metrics import bootstrap_interval

    rng = np.random.default_rng(0)
    small = rng.uniform(0, 1, 30)
    large = rng.uniform(0, 1, 3000)
    low, high = bootstrap_interval(small)
    assert low < small.mean() < high
    large_low, large_high = bootstrap_interval(large)
    assert large_high - large_low < (high - low) / 5  # ~ 1 / sqrt(100)
    # The standard error of a uniform mean is sqrt(1/12 / n): 95 % width about 3.92 of it.
    assert large_high - large_low == pytest.approx(3.92 * np.sqrt(1 / 12 / 3000), rel=0.15)
    with_uncounted = np.concatenate([small, [np.nan] * 10])
    assert bootstrap_interval(with_uncounted)[0] < np.nanmean(with_uncounted)
    constant = bootstrap_interval(np.full(10, 0.4))
    assert constant == pytest.approx((0.4, 0.4))
    with pytest.raises(ValueError):
        bootstrap_interval(np.array([np.nan, np.nan]))


def test_strict_iou_differs_only_on_an_exact_tie():
    gt = [np.array([[0, 0, 2, 2]], np.float32)]
    pred = [np.array([[0, 0, 2, 1]], np.float32)]  # IoU exactly 2 / 4 = 0.5
    # >= 0.5 hits at 0.40, 0.45 and 0.50: 3 of 8 thresholds. > 0.5 only at 0.40, 0.45.
    assert rsna_scores(gt, pred, [np.ones(1)]).rsna_metric == pytest.approx(3 / 8)
    strict = rsna_scores(gt, pred, [np.ones(1)], strict_iou=True)
    assert strict.rsna_metric == pytest.approx(2 / 8)


def test_ground_truth_first_matching_differs_from_confidence_first():
    a = [0, 0, 10, 10]
    b = [4, 0, 14, 10]
    p1 = [3, 0, 13, 10]  # confident; IoU with A 7/13 = 0.54, with B 9/11 = 0.82
    p2 = [0, 0, 10, 10]  # less confident; IoU with A 1.0, with B 6/14 = 0.43
    gt = [np.array([a, b], np.float32)]
    preds = [np.array([p1, p2], np.float32)]
    scores = [np.array([0.9, 0.5])]
    at_half = np.array([0.5])
    # Confidence first: p1 takes B (its best IoU), p2 takes A: 2 TP, score 1.
    by_confidence = rsna_scores(gt, preds, scores, at_half)
    assert by_confidence.true_positives.tolist() == [2] and by_confidence.rsna_metric == 1.0
    # Ground truth first (the public kernel): A takes the most confident prediction that
    # overlaps it enough, p1; B is left with p2 at IoU 0.43 < 0.5: 1 TP, 1 FP, 1 FN -> 1/3.
    by_box = rsna_scores(gt, preds, scores, at_half, matching="ground_truth_first")
    assert by_box.true_positives.tolist() == [1]
    assert by_box.rsna_metric == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="matching"):
        rsna_scores(gt, preds, scores, at_half, matching="best")


def matches_reference(gt, pred, score, threshold, rule):
    """Which predictions are true positives, by the two rules written plainly."""
    order = list(np.argsort(-np.asarray(score), kind="stable"))
    matched = set()
    if rule == "confidence_first":
        free = list(range(len(gt)))
        for i in order:
            ious = [(iou_reference(pred[i], gt[j]), j) for j in free]
            best = max(ious, default=(0.0, None))
            if best[1] is not None and best[0] >= threshold:
                free.remove(best[1])
                matched.add(i)
    else:  # the public kernel: boxes in order take the first unmatched prediction
        for j in range(len(gt)):
            for i in order:
                if i not in matched and iou_reference(pred[i], gt[j]) >= threshold:
                    matched.add(i)
                    break
    return len(matched)


@pytest.mark.parametrize("rule", ["confidence_first", "ground_truth_first"])
def test_both_matching_rules_match_their_plain_versions(rule):
    gts, preds, scores = random_case(np.random.default_rng(5), num_images=80)
    thresholds = np.array([0.4, 0.6])
    result = rsna_scores(gts, preds, scores, thresholds, matching=rule)
    expected = [
        sum(matches_reference(g, p, s, t, rule) for g, p, s in zip(gts, preds, scores, strict=True))
        for t in thresholds
    ]
    assert result.true_positives.tolist() == expected


def _paired_reference(a, b, confidence, num_resamples, seed):
    """Slow, obvious paired bootstrap: the same draws, one resample and one seed at a time."""
    rng = np.random.default_rng(seed)
    num_seeds, num_images = a.shape
    seed_draws = rng.integers(0, num_seeds, size=(num_resamples, num_seeds))
    image_draws = rng.integers(0, num_images, size=(num_resamples, num_images))
    statistics = []
    for seeds, images in zip(seed_draws, image_draws, strict=True):
        differences = []
        for s in seeds:
            mean_b = [b[s, i] for i in images if not np.isnan(b[s, i])]
            mean_a = [a[s, i] for i in images if not np.isnan(a[s, i])]
            if mean_a and mean_b:
                differences.append(np.mean(mean_b) - np.mean(mean_a))
        if differences:
            statistics.append(np.mean(differences))
    tail = (1 - confidence) / 2
    return tuple(np.quantile(statistics, [tail, 1 - tail]))


def test_paired_bootstrap_difference_matches_a_slow_reference():
    from retinanet_lib.metrics import paired_bootstrap_difference

    rng = np.random.default_rng(5)
    a = rng.uniform(0, 1, (3, 25))
    b = a + rng.normal(0.05, 0.1, (3, 25))
    a[0, :6] = np.nan  # images the metric does not count in some runs
    b[2, 3:9] = np.nan
    result = paired_bootstrap_difference(a, b, num_resamples=300, seed=7)
    low, high = _paired_reference(a, b, 0.95, 300, 7)
    assert (result.low, result.high) == pytest.approx((low, high), abs=1e-12)
    per_seed = [np.nanmean(b[s]) - np.nanmean(a[s]) for s in range(3)]
    assert result.difference == pytest.approx(np.mean(per_seed))
    assert result.low < result.difference < result.high
    assert (result.num_seeds, result.num_images) == (3, 25)


def test_paired_bootstrap_difference_hand_values_and_verdicts():
    from retinanet_lib.metrics import paired_bootstrap_difference

    a = np.array([[0.2, 0.4, np.nan, 0.6], [0.1, 0.3, 0.5, np.nan]])
    # B is A plus exactly 0.1 on every counted image: every resample differs by 0.1.
    shifted = paired_bootstrap_difference(a, a + 0.1)
    assert (shifted.difference, shifted.low, shifted.high) == pytest.approx((0.1, 0.1, 0.1))
    assert shifted.verdict() == "better"
    assert paired_bootstrap_difference(a + 0.1, a).verdict() == "worse"
    assert str(shifted) == "+0.100 (95 % CI +0.100 to +0.100)"
    # Seed 0 gains 0.3 on every image, seed 1 loses 0.3: the mean is 0, and the interval,
    # which resamples seeds, spans both signs.
    b = a + np.array([[0.3], [-0.3]])
    mixed = paired_bootstrap_difference(a, b)
    assert mixed.difference == pytest.approx(0.0, abs=1e-12)
    assert mixed.low == pytest.approx(-0.3) and mixed.high == pytest.approx(0.3)
    assert mixed.verdict() == "no difference found with 2 seeds"
    one = paired_bootstrap_difference(a[:1], a[:1])  # one seed: no difference at all
    assert one.verdict() == "no difference found with 1 seed"
    # Pairing matters: a noisy but constant per-image gain is found, although the two arms'
    # own intervals overlap.
    rng = np.random.default_rng(0)
    noisy = rng.uniform(0, 1, (3, 200))
    gained = paired_bootstrap_difference(noisy, noisy + 0.02)
    assert gained.verdict() == "better"
    with pytest.raises(ValueError, match="shape"):
        paired_bootstrap_difference(a, a[:, :3])
    with pytest.raises(ValueError, match="at least one image"):
        paired_bootstrap_difference(np.full((1, 3), np.nan), np.zeros((1, 3)))


def test_image_level_scores_hand_values():
    from retinanet_lib.metrics import image_level_scores

    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    flagged = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0], bool)
    scores = image_level_scores(truth, flagged)
    counts = (scores.true_positives, scores.false_positives)
    assert counts + (scores.false_negatives, scores.true_negatives) == (3, 1, 1, 5)
    assert scores.recall == pytest.approx(3 / 4)
    assert scores.precision == pytest.approx(3 / 4)
    assert scores.f1 == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert scores.specificity == pytest.approx(5 / 6)
    nothing = image_level_scores(np.zeros(4, bool), np.zeros(4, bool))
    assert np.isnan(nothing.recall) and np.isnan(nothing.precision) and nothing.specificity == 1
    with pytest.raises(ValueError, match=r"\(I,\)"):
        image_level_scores(truth, flagged[:5])


def test_rsna_scores_report_the_image_level_question_too():
    box = np.array([[0, 0, 10, 10]], np.float32)
    empty = np.zeros((0, 4), np.float32)
    far = np.array([[50, 50, 60, 60]], np.float32)
    gt = [box, box, empty, empty]
    preds = [far, empty, box, empty]  # image 0 flagged (a wrong box still flags the image)
    scores = rsna_scores(gt, preds, [np.ones(len(p)) for p in preds])
    level = scores.image_level
    assert (level.true_positives, level.false_negatives) == (1, 1)
    assert (level.false_positives, level.true_negatives) == (1, 1)
    assert scores.recall == 0.0  # no box is found at IoU 0.5, yet half the images are flagged
    two = [np.concatenate([far, box]), empty, box, empty]
    counted = rsna_scores(gt, two, [np.ones(len(p)) for p in two]).detections_per_image
    np.testing.assert_array_equal(counted, [2, 0, 1, 0])


def test_match_detections_hand_values_and_agreement_with_the_metric():
    gt = [np.array([[0, 0, 10, 10]], np.float32)]
    pred = [np.array([[0, 0, 10, 10], [4, 0, 14, 10]], np.float32)]  # IoU 1 and 60/140
    scores = [np.array([0.1, 0.9])]
    boxes, sorted_scores, valid, hit = match_detections(gt, pred, scores, 0.4)
    assert sorted_scores[0].tolist() == pytest.approx([0.9, 0.1])  # sorted by score
    assert boxes[0, 0].tolist() == [4, 0, 14, 10]
    assert valid.tolist() == [[True, True]]
    assert hit.tolist() == [[True, False]]  # the confident loose box takes the truth at 0.4
    assert match_detections(gt, pred, scores, 0.5)[3].tolist() == [[False, True]]
    rng = np.random.default_rng(5)
    gts, preds, confidences = [], [], []
    for _ in range(40):  # random images: hits at 0.5 equal the metric's true positives at 0.5
        num_gt, num_pred = rng.integers(0, 3), rng.integers(0, 5)
        corner = rng.uniform(0, 50, (num_gt + num_pred, 2))
        box = np.concatenate([corner, corner + rng.uniform(5, 30, corner.shape)], 1)
        gts.append(box[:num_gt].astype(np.float32))
        preds.append(box[num_gt:].astype(np.float32))
        confidences.append(rng.uniform(size=num_pred))
    _, _, valid, hit = match_detections(gts, preds, confidences, 0.5)
    metric = rsna_scores(gts, preds, confidences)
    at_half = list(RSNA_IOU_THRESHOLDS).index(0.5)
    assert hit.sum() == metric.true_positives[at_half]
    assert (valid & ~hit).sum() == metric.false_positives[at_half]
