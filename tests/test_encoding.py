import math

import numpy as np
import pytest
import tensorflow as tf

from retinanet_lib.anchors import generate_anchors
from retinanet_lib.config import (
    BACKGROUND_CLASS,
    IGNORE_CLASS,
    EncoderConfig,
    RetinaNetConfig,
)
from retinanet_lib.encoding import (
    LabelEncoder,
    decode_box_deltas,
    encode_box_deltas,
    match_anchors,
    split_targets,
)

from .helpers import random_boxes_xyxy
from .test_boxes import iou_reference

VARIANCE = (0.1, 0.1, 0.2, 0.2)


def test_thresholds_on_a_hand_built_iou_matrix():
    iou = np.array(
        [
            [0.70, 0.10],  # positive -> box 0
            [0.20, 0.50],  # exactly 0.5 -> positive -> box 1
            [0.45, 0.30],  # between 0.4 and 0.5 -> ignored
            [0.40, 0.00],  # exactly 0.4 -> ignored
            [0.39, 0.10],  # below 0.4 -> background
            [0.00, 0.00],  # background
        ],
        np.float32,
    )
    matched, positive, ignore = match_anchors(iou, EncoderConfig())
    assert matched.numpy().tolist() == [0, 1, -1, -1, -1, -1]
    assert positive.numpy().tolist() == [True, True, False, False, False, False]
    assert ignore.numpy().tolist() == [False, False, True, True, False, False]


def test_low_quality_matching_claims_each_boxs_best_anchor():
    iou = np.array([[0.30, 0.0], [0.20, 0.45], [0.10, 0.0]], np.float32)
    _, positive, ignore = match_anchors(iou, EncoderConfig())
    assert not positive.numpy().any()
    matched, positive, ignore = match_anchors(iou, EncoderConfig(match_low_quality=True))
    assert positive.numpy().tolist() == [True, True, False]
    assert matched.numpy().tolist() == [0, 1, -1]
    assert not ignore.numpy().any()


def test_match_with_no_boxes_is_all_background():
    matched, positive, ignore = match_anchors(np.zeros((7, 0), np.float32), EncoderConfig())
    assert matched.numpy().tolist() == [-1] * 7
    assert not positive.numpy().any() and not ignore.numpy().any()


def test_encode_hand_computed_deltas():
    anchor = [[0.0, 0.0, 10.0, 20.0]]  # centre (5, 10), size (10, 20)
    box = [[2.0, 4.0, 22.0, 24.0]]  # centre (12, 14), size (20, 20)
    expected = [[(12 - 5) / 10 / 0.1, (14 - 10) / 20 / 0.1, math.log(2) / 0.2, 0.0]]
    np.testing.assert_allclose(encode_box_deltas(anchor, box, VARIANCE), expected, rtol=1e-6)


def test_box_equal_to_anchor_gives_zero_deltas(rng):
    anchors = random_boxes_xyxy(rng, 20)
    np.testing.assert_allclose(encode_box_deltas(anchors, anchors, VARIANCE), 0.0, atol=1e-6)


def test_decode_inverts_encode(rng):
    anchors = random_boxes_xyxy(rng, 200)
    boxes = random_boxes_xyxy(rng, 200)
    deltas = encode_box_deltas(anchors, boxes, VARIANCE)
    np.testing.assert_allclose(decode_box_deltas(anchors, deltas, VARIANCE), boxes, atol=1e-3)


def test_decode_broadcasts_over_a_batch_and_stays_finite():
    anchors = generate_anchors(128, 128, RetinaNetConfig().anchors)
    huge = tf.fill((2, 3069, 4), 1e4)  # an untrained head could emit anything
    boxes = decode_box_deltas(anchors, huge, VARIANCE)
    assert boxes.shape == (2, 3069, 4)
    assert np.isfinite(boxes.numpy()).all()


def encode_sample_reference(anchors, gt_boxes, gt_classes, cfg):
    """Anchor-by-anchor loop version of LabelEncoder.encode_sample."""
    targets = np.zeros((len(anchors), 5), np.float32)
    for a, anchor in enumerate(anchors):
        ious = [iou_reference(anchor, g) for g in gt_boxes]
        best = max(ious) if ious else 0.0
        if best >= cfg.match_iou:
            g = int(np.argmax(ious))
            ax, ay = (anchor[0] + anchor[2]) / 2, (anchor[1] + anchor[3]) / 2
            aw, ah = anchor[2] - anchor[0], anchor[3] - anchor[1]
            gx, gy = (gt_boxes[g][0] + gt_boxes[g][2]) / 2, (gt_boxes[g][1] + gt_boxes[g][3]) / 2
            gw, gh = gt_boxes[g][2] - gt_boxes[g][0], gt_boxes[g][3] - gt_boxes[g][1]
            raw = [(gx - ax) / aw, (gy - ay) / ah, math.log(gw / aw), math.log(gh / ah)]
            targets[a, :4] = np.array(raw) / np.array(cfg.box_variance)
            targets[a, 4] = gt_classes[g]
        elif best >= cfg.ignore_iou:
            targets[a, 4] = IGNORE_CLASS
        else:
            targets[a, 4] = BACKGROUND_CLASS
    return targets


def test_encode_sample_matches_loop_reference(tiny_cfg):
    encoder = LabelEncoder(tiny_cfg)
    gt_boxes = np.array([[10, 12, 60, 70], [70, 20, 110, 100], [5, 90, 30, 120]], np.float32)
    gt_classes = np.array([0, 0, 0])
    got = encoder.encode_sample(gt_boxes, gt_classes).numpy()
    expected = encode_sample_reference(
        encoder.anchors_xyxy.numpy(), gt_boxes, gt_classes, tiny_cfg.encoder
    )
    assert got.shape == (3069, 5) and got.dtype == np.float32
    assert (expected[:, 4] >= 0).sum() > 10  # the case has positives to compare
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_positive_targets_decode_back_to_their_box(tiny_cfg):
    encoder = LabelEncoder(tiny_cfg)
    gt_boxes = np.array([[10, 12, 60, 70], [70, 20, 110, 100]], np.float32)
    targets = encoder.encode_sample(gt_boxes, [0, 0])
    deltas, classes = split_targets(targets)
    decoded = encoder.decode(deltas).numpy()[classes.numpy() >= 0]
    iou_with_gt = np.array([[iou_reference(d, g) for g in gt_boxes] for d in decoded])
    np.testing.assert_allclose(iou_with_gt.max(axis=1), 1.0, atol=1e-4)


def test_zero_box_image_is_all_background_without_nan(tiny_cfg):
    encoder = LabelEncoder(tiny_cfg)
    targets, stats = encoder.encode_sample_with_stats(np.zeros((0, 4)), np.zeros((0,), int))
    targets = targets.numpy()
    assert not np.isnan(targets).any()
    np.testing.assert_array_equal(targets[:, 4], BACKGROUND_CLASS)
    np.testing.assert_array_equal(targets[:, :4], 0.0)
    assert stats == {
        "num_positive": 0,
        "num_ignored": 0,
        "num_background": 3069,
        "num_unmatched_gt": 0,
    }


def test_stats_count_a_box_too_small_for_any_anchor():
    encoder = LabelEncoder(RetinaNetConfig(image_size=512))
    small = np.array([[100, 100, 105, 105], [100, 200, 300, 400]], np.float32)
    targets, stats = encoder.encode_sample_with_stats(small, [0, 0])
    classes = targets.numpy()[:, 4]
    assert stats["num_unmatched_gt"] == 1
    assert stats["num_positive"] == int((classes >= 0).sum()) > 0
    assert stats["num_ignored"] == int((classes == IGNORE_CLASS).sum())
    assert sum(v for k, v in stats.items() if k != "num_unmatched_gt") == 49104
    low_quality = LabelEncoder(
        RetinaNetConfig(image_size=512, encoder=EncoderConfig(match_low_quality=True))
    )
    assert low_quality.encode_sample_with_stats(small, [0, 0])[1]["num_unmatched_gt"] == 0


def test_degenerate_gt_box_never_matches_and_gives_no_nan(tiny_cfg):
    encoder = LabelEncoder(tiny_cfg)
    boxes = np.array([[20, 20, 20, 80], [50, 50, 40, 40]], np.float32)  # zero width, inverted
    targets, stats = encoder.encode_sample_with_stats(boxes, [0, 0])
    assert not np.isnan(targets.numpy()).any()
    assert stats["num_positive"] == 0 and stats["num_unmatched_gt"] == 2


def test_batch_equals_per_sample_and_padding_never_matches(tiny_cfg):
    encoder = LabelEncoder(tiny_cfg)
    boxes = np.zeros((3, 2, 4), np.float32)
    boxes[0, 0] = [10, 12, 60, 70]
    boxes[0, 1] = [70, 20, 110, 100]
    boxes[1, 0] = [30, 30, 90, 90]  # second row is padding
    classes = np.zeros((3, 2), np.int32)  # image 2 has no boxes at all
    batch = encoder.encode_batch(boxes, classes).numpy()
    assert batch.shape == (3, 3069, 5)
    np.testing.assert_allclose(batch[0], encoder.encode_sample(boxes[0], classes[0]))
    np.testing.assert_allclose(batch[1], encoder.encode_sample(boxes[1, :1], classes[1, :1]))
    np.testing.assert_array_equal(batch[2, :, 4], BACKGROUND_CLASS)


def test_encoder_runs_in_tf_data(tiny_cfg):
    encoder = LabelEncoder(tiny_cfg)
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant([[[10.0, 12, 60, 70]]]), tf.constant([[0]]))
    ).map(encoder.encode_sample)
    (targets,) = list(dataset)
    np.testing.assert_allclose(targets, encoder.encode_sample([[10.0, 12, 60, 70]], [0]))


def test_bad_shapes_raise(tiny_cfg):
    encoder = LabelEncoder(tiny_cfg)
    with pytest.raises(ValueError, match="gt_boxes_xyxy"):
        encoder.encode_sample(np.zeros((2, 3)), [0, 0])
    with pytest.raises(ValueError, match="encode_sample"):
        encoder.encode_sample(np.zeros((1, 2, 4)), [0])
    with pytest.raises(ValueError, match="encode_batch"):
        encoder.encode_batch(np.zeros((2, 4)), np.zeros((2,)))
    with pytest.raises(ValueError, match="targets"):
        split_targets(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="iou_anchor_gt"):
        match_anchors(np.zeros(3), EncoderConfig())
