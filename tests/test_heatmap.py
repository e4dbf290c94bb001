import numpy as np
import pytest

from retinanet_lib.heatmap import box_coverage, score_heatmap


def heatmap_reference(boxes, scores, shape, reduce="mean"):
    """The blog's construction: loop over boxes and pixels."""
    total = np.zeros(shape)
    divider = np.zeros(shape)
    for box, score in zip(boxes, scores, strict=True):
        for row in range(shape[0]):
            for col in range(shape[1]):
                if box[0] <= col + 0.5 < box[2] and box[1] <= row + 0.5 < box[3]:
                    weight = 1.0 if reduce == "mean" else score
                    total[row, col] += weight * score
                    divider[row, col] += weight
    return np.divide(total, divider, out=np.zeros(shape), where=divider > 0), divider


def random_boxes(rng, count, extent):
    top_left = rng.uniform(-0.3 * extent, extent, (count, 2))  # some cross the borders
    return np.concatenate([top_left, top_left + rng.uniform(0, 0.6 * extent, (count, 2))], 1)


@pytest.mark.parametrize("reduce", ["mean", "score_weighted"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_heatmap_equals_slow_reference(reduce, seed):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, 40, 32)
    boxes[0] = [-5, -5, 50, 50]  # covers everything, beyond all borders
    boxes[1] = [31.6, 31.6, 40, 40]  # touches only the last pixel's edge
    boxes[2] = [10, 10, 10, 20]  # zero width: covers nothing
    scores = rng.uniform(0, 1, 40)
    expected, divider = heatmap_reference(boxes, scores, (32, 40), reduce)
    got = score_heatmap(boxes, scores, (32, 40), reduce=reduce)
    assert got.shape == (32, 40) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(
        box_coverage(boxes, (32, 40)), heatmap_reference(boxes, scores, (32, 40))[1]
    )
    assert got.min() >= 0 and got.max() <= 1


def test_uncovered_pixels_are_zero_and_mean_is_sum_over_count():
    boxes = np.array([[0, 0, 4, 4], [2, 2, 6, 6]], float)
    scores = np.array([0.2, 0.8])
    heatmap = score_heatmap(boxes, scores, (8, 8))
    assert heatmap[0, 0] == pytest.approx(0.2)
    assert heatmap[3, 3] == pytest.approx(0.5)  # (0.2 + 0.8) / 2
    assert heatmap[5, 5] == pytest.approx(0.8)
    assert heatmap[7, 7] == 0.0 and heatmap[0, 7] == 0.0
    weighted = score_heatmap(boxes, scores, (8, 8), reduce="score_weighted")
    assert weighted[3, 3] == pytest.approx((0.04 + 0.64) / 1.0)


def test_no_boxes_and_bad_arguments():
    assert score_heatmap(np.zeros((0, 4)), np.zeros(0), (5, 6)).sum() == 0
    with pytest.raises(ValueError, match="reduce"):
        score_heatmap(np.zeros((1, 4)), np.zeros(1), (5, 5), reduce="max")
    with pytest.raises(ValueError, match="scores"):
        score_heatmap(np.zeros((2, 4)), np.zeros(1), (5, 5))


@pytest.mark.parametrize("reduce", ["mean", "score_weighted"])
def test_tensorflow_heatmap_equals_the_slow_reference_for_a_batch(reduce):
    from retinanet_lib.heatmap import score_heatmap_tf

    rng = np.random.default_rng(7)
    boxes = np.stack([random_boxes(rng, 30, 24) for _ in range(3)])  # (3, 30, 4)
    scores = rng.uniform(0, 1, (3, 30))
    got = score_heatmap_tf(boxes, scores, 24, reduce).numpy()
    assert got.shape == (3, 24, 24) and got.dtype == np.float32
    for image in range(3):
        expected, _ = heatmap_reference(boxes[image], scores[image], (24, 24), reduce)
        np.testing.assert_allclose(got[image], expected, atol=1e-6)


def test_covering_mean_keeps_any_values_unclipped_like_a_loop():
    from retinanet_lib.heatmap import covering_mean

    rng = np.random.default_rng(4)
    boxes_xyxy = rng.integers(0, 20, (12, 2)).astype(float)
    boxes_xyxy = np.concatenate([boxes_xyxy, boxes_xyxy + rng.integers(1, 9, (12, 2))], axis=1)
    values = rng.normal(0, 3, 12)  # negative and above 1: nothing is clipped
    expected = np.zeros((24, 24))
    counts = np.zeros((24, 24))
    for (x0, y0, x1, y1), value in zip(boxes_xyxy.astype(int), values, strict=True):
        expected[y0:y1, x0:x1] += value
        counts[y0:y1, x0:x1] += 1
    expected = np.divide(expected, counts, out=np.zeros_like(expected), where=counts > 0)
    np.testing.assert_allclose(covering_mean(boxes_xyxy, values, (24, 24)), expected, atol=1e-9)
