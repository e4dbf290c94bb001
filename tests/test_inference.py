import dataclasses

import numpy as np
import pytest

from retinanet_lib.config import DecodeConfig, config_for_mode
from retinanet_lib.encoding import LabelEncoder, split_targets
from retinanet_lib.inference import decode_all, detect, rescale_to_original

CFG = dataclasses.replace(config_for_mode("cpu"), image_size=128)


def perfect_predictions(encoder, gt_boxes):
    """Predictions equal to the encoded targets, with confident logits on positives."""
    targets = encoder.encode_sample(gt_boxes, np.zeros(len(gt_boxes), np.int32))
    deltas, classes = split_targets(targets)
    logits = np.where(classes.numpy() >= 0, 6.0, -6.0)[:, None]
    return np.concatenate([deltas.numpy(), logits], axis=-1)[None].astype(np.float32)


def test_decode_all_recovers_gt_on_positive_anchors():
    encoder = LabelEncoder(CFG)
    gt = np.array([[20, 30, 70, 90], [80, 10, 120, 60]], np.float32)
    boxes, probabilities = decode_all(perfect_predictions(encoder, gt), encoder.anchors_xyxy, CFG)
    assert boxes.shape == (1, 3069, 4) and probabilities.shape == (1, 3069, 1)
    confident = probabilities.numpy()[0, :, 0] > 0.5
    decoded = boxes.numpy()[0][confident]
    distances = np.abs(decoded[:, None, :] - gt[None]).max(-1).min(-1)
    assert confident.sum() > 5 and distances.max() < 1e-3


def test_detect_with_nms_returns_each_box_once():
    encoder = LabelEncoder(CFG)
    gt = np.array([[20, 30, 70, 90], [80, 10, 120, 60]], np.float32)
    detections = detect(perfect_predictions(encoder, gt), encoder.anchors_xyxy, CFG)
    boxes, scores, classes = detections.for_image(0)
    assert len(boxes) == 2 and (classes == 0).all() and (scores > 0.99).all()
    order = np.argsort(boxes[:, 0])
    np.testing.assert_allclose(boxes[order], gt, atol=1e-3)


def test_max_detections_and_threshold_are_honoured():
    encoder = LabelEncoder(CFG)
    rng = np.random.default_rng(0)
    predictions = rng.normal(0, 1, (2, 3069, 5)).astype(np.float32)
    predictions[..., 4] = rng.normal(2, 1, (2, 3069))  # many confident boxes
    strict = DecodeConfig(score_threshold=0.5, max_detections=7)
    detections = detect(predictions, encoder.anchors_xyxy, CFG, strict)
    assert detections.boxes_xyxy.shape == (2, 7, 4)
    assert (detections.num_detections <= 7).all()
    boxes, scores, _ = detections.for_image(1)
    assert (scores >= 0.5).all() and (np.diff(scores) <= 0).all()
    # No two kept boxes overlap more than the NMS threshold.
    x0 = np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    y0 = np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    x1 = np.minimum(boxes[:, None, 2], boxes[None, :, 2])
    y1 = np.minimum(boxes[:, None, 3], boxes[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    iou = inter / (area[:, None] + area[None] - inter)
    np.fill_diagonal(iou, 0)
    assert iou.max() <= 0.5 + 1e-5


def test_rescale_and_mismatch_error():
    np.testing.assert_allclose(rescale_to_original([[10, 20, 30, 40]], 4.0), [[40, 80, 120, 160]])
    with pytest.raises(ValueError, match="anchors"):
        decode_all(np.zeros((1, 10, 5), np.float32), np.zeros((12, 4), np.float32), CFG)
