import numpy as np
import pytest
import tensorflow as tf

from retinanet_lib.boxes import (
    box_area,
    center_xywh_to_xyxy,
    clip_boxes,
    convert_boxes,
    pairwise_iou,
    scale_boxes,
    xywh_to_xyxy,
    xyxy_to_center_xywh,
    xyxy_to_xywh,
)
from retinanet_lib.config import BOX_FORMATS

from .helpers import random_boxes_xyxy


def iou_reference(box_a, box_b):
    """Slow, obvious IoU of two xyxy boxes."""
    ix = max(0.0, min(box_a[2], box_b[2]) - max(box_a[0], box_b[0]))
    iy = max(0.0, min(box_a[3], box_b[3]) - max(box_a[1], box_b[1]))
    inter = ix * iy
    area_a = max(0.0, box_a[2] - box_a[0]) * max(0.0, box_a[3] - box_a[1])
    area_b = max(0.0, box_b[2] - box_b[0]) * max(0.0, box_b[3] - box_b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def test_hand_computed_conversions():
    # An RSNA-style row: x=264, y=152, width=213, height=379 (top-left + size).
    xywh = [[264.0, 152.0, 213.0, 379.0]]
    np.testing.assert_allclose(xywh_to_xyxy(xywh), [[264, 152, 477, 531]])
    np.testing.assert_allclose(
        convert_boxes(xywh, "xywh", "center_xywh"), [[370.5, 341.5, 213, 379]]
    )
    np.testing.assert_allclose(xyxy_to_xywh([[264, 152, 477, 531]]), xywh)
    np.testing.assert_allclose(xyxy_to_center_xywh([[0, 0, 10, 4]]), [[5, 2, 10, 4]])
    np.testing.assert_allclose(center_xywh_to_xyxy([[5, 2, 10, 4]]), [[0, 0, 10, 4]])


def test_xywh_is_not_center_xywh():
    """The keras.io half-box bug: reading top-left boxes as centre boxes shifts them."""
    xywh = [[100.0, 100.0, 50.0, 20.0]]
    right = convert_boxes(xywh, "xywh", "xyxy")
    wrong = convert_boxes(xywh, "center_xywh", "xyxy")
    np.testing.assert_allclose(right, [[100, 100, 150, 120]])
    np.testing.assert_allclose(wrong, [[75, 90, 125, 110]])


@pytest.mark.parametrize("source", BOX_FORMATS)
@pytest.mark.parametrize("target", BOX_FORMATS)
def test_all_round_trips(source, target, rng):
    boxes = convert_boxes(random_boxes_xyxy(rng, 50), "xyxy", source)
    back = convert_boxes(convert_boxes(boxes, source, target), target, source)
    np.testing.assert_allclose(back, boxes, rtol=1e-5, atol=1e-4)


def test_conversion_keeps_leading_axes_and_dtype():
    boxes = tf.zeros((2, 3, 7, 4), tf.float64)
    out = convert_boxes(boxes, "xywh", "center_xywh")
    assert out.shape == (2, 3, 7, 4) and out.dtype == tf.float32


@pytest.mark.parametrize("bad", ["cxcywh", "yxyx", "XYXY", ""])
def test_unknown_format_name_raises(bad):
    with pytest.raises(ValueError, match="Unknown box format"):
        convert_boxes([[0, 0, 1, 1]], bad, "xyxy")
    with pytest.raises(ValueError, match="Unknown box format"):
        convert_boxes([[0, 0, 1, 1]], "xyxy", bad)


@pytest.mark.parametrize("shape", [(4,), (3, 5), (2, 3), ()])
def test_wrong_shape_raises(shape):
    bad = np.zeros(shape, np.float32)
    if shape == (4,):  # a single box is fine
        assert box_area(bad).shape == ()
        return
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        xywh_to_xyxy(bad)


def test_area_hand_values_and_degenerate():
    boxes = [[0, 0, 2, 3], [5, 5, 5, 9], [4, 4, 2, 2], [0, 0, 0, 0]]
    np.testing.assert_allclose(box_area(boxes), [6, 0, 0, 0])


def test_iou_hand_values():
    a = [[0, 0, 2, 2]]
    b = [[1, 0, 3, 2], [0, 0, 2, 2], [2, 2, 4, 4], [0, 0, 1, 1], [10, 10, 11, 11]]
    np.testing.assert_allclose(pairwise_iou(a, b), [[2 / 6, 1.0, 0.0, 0.25, 0.0]], rtol=1e-6)


def test_iou_matches_double_loop_reference(rng):
    boxes1 = random_boxes_xyxy(rng, 37)
    boxes2 = random_boxes_xyxy(rng, 23)
    expected = np.array([[iou_reference(a, b) for b in boxes2] for a in boxes1])
    got = pairwise_iou(boxes1, boxes2).numpy()
    assert got.shape == (37, 23) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, pairwise_iou(boxes2, boxes1).numpy().T, atol=1e-7)
    assert got.min() >= 0.0 and got.max() <= 1.0


def test_iou_of_degenerate_boxes_is_zero_not_nan():
    degenerate = [[0, 0, 0, 0], [3, 3, 3, 8], [5, 5, 1, 1]]
    iou = pairwise_iou(degenerate, degenerate + [[0, 0, 4, 4]]).numpy()
    assert not np.isnan(iou).any()
    np.testing.assert_array_equal(iou, 0.0)


def test_iou_with_empty_inputs():
    assert pairwise_iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)
    assert pairwise_iou([[0, 0, 1, 1]] * 3, np.zeros((0, 4))).shape == (3, 0)


def test_iou_needs_rank_two():
    with pytest.raises(ValueError, match="pairwise_iou"):
        pairwise_iou(np.zeros((1, 2, 4)), np.zeros((2, 4)))


def test_clip_boxes():
    boxes = [[-10, 5, 50, 300], [300, 300, 400, 400]]
    clipped = clip_boxes(boxes, image_height=256, image_width=128).numpy()
    np.testing.assert_allclose(clipped, [[0, 5, 50, 256], [128, 256, 128, 256]])
    assert box_area(clipped)[1] == 0.0  # entirely outside -> degenerate
    with pytest.raises(ValueError):
        clip_boxes(boxes, 0, 10)


def test_scale_boxes_matches_resize_factor():
    boxes_1024 = [[264, 152, 477, 531]]
    np.testing.assert_allclose(scale_boxes(boxes_1024, 0.5, 0.25), [[132, 38, 238.5, 132.75]])


def test_runs_inside_tf_function():
    fn = tf.function(lambda b: pairwise_iou(xywh_to_xyxy(b), xywh_to_xyxy(b)))
    out = fn(tf.constant([[0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 2.0, 2.0]]))
    np.testing.assert_allclose(out, [[1, 1 / 3], [1 / 3, 1]], rtol=1e-6)
