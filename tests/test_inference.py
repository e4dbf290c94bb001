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


def mirror_reference(anchors_xyxy, image_size):
    """For each anchor, the index of the anchor equal to its mirror image (slow search)."""
    mirrored = anchors_xyxy.copy()
    mirrored[:, [0, 2]] = image_size - anchors_xyxy[:, [2, 0]]
    index = {tuple(np.round(box, 3)): k for k, box in enumerate(anchors_xyxy)}
    return np.array([index[tuple(np.round(box, 3))] for box in mirrored])


def test_mirror_anchor_indices_match_a_search_for_the_mirrored_box():
    from retinanet_lib.inference import mirror_anchor_indices

    anchors = LabelEncoder(CFG).anchors_xyxy.numpy()
    got = mirror_anchor_indices(128, CFG.anchors)
    np.testing.assert_array_equal(got, mirror_reference(anchors, 128))
    np.testing.assert_array_equal(got[got], np.arange(len(got)))  # an involution
    with pytest.raises(ValueError, match="divisible"):
        mirror_anchor_indices(200, CFG.anchors)


def test_flip_tta_of_a_mirror_symmetric_prediction_changes_nothing():
    from retinanet_lib.inference import merge_flipped_predictions, mirror_anchor_indices

    mirror = mirror_anchor_indices(128, CFG.anchors)
    rng = np.random.default_rng(0)
    predictions = rng.normal(size=(2, len(mirror), 5)).astype(np.float32)
    # A detector that sees the mirrored image predicts, for anchor mirror[k], what it
    # predicted for anchor k, with the x offset negated.
    flipped = predictions[:, mirror].copy()
    flipped[..., 0] *= -1
    merged = merge_flipped_predictions(predictions, flipped, mirror).numpy()
    np.testing.assert_allclose(merged, predictions, atol=1e-6)
    # And decoding the flipped predictions gives the mirrored boxes.
    encoder = LabelEncoder(CFG)
    boxes, _ = decode_all(predictions, encoder.anchors_xyxy, CFG)
    flipped_boxes, _ = decode_all(flipped, encoder.anchors_xyxy, CFG)
    expected = boxes.numpy()[:, mirror][..., [2, 1, 0, 3]] * [-1, 1, -1, 1] + [128, 0, 128, 0]
    np.testing.assert_allclose(flipped_boxes.numpy(), np.clip(expected, 0, 128), atol=1e-3)


def test_detector_graph_equals_decode_and_nms_step_by_step():
    from retinanet_lib.inference import build_detector, compiled_predictor
    from retinanet_lib.model import build_retinanet
    from retinanet_lib.preprocess import to_model_input

    model = build_retinanet(CFG)
    images = np.random.default_rng(1).integers(0, 255, (3, 128, 128), dtype=np.uint8)
    loose = DecodeConfig(score_threshold=0.0, max_detections=9)
    outputs = build_detector(model, CFG, loose, keep_all=True)(images)
    predictions = compiled_predictor(model, CFG)(to_model_input(images, "small_resnet"))
    np.testing.assert_allclose(
        predictions, model(to_model_input(images, "small_resnet")), atol=1e-5
    )
    step_by_step = detect(predictions, LabelEncoder(CFG).anchors_xyxy, CFG, loose)
    np.testing.assert_allclose(outputs["boxes_xyxy"], step_by_step.boxes_xyxy, atol=1e-4)
    np.testing.assert_allclose(outputs["scores"], step_by_step.scores, atol=1e-6)
    assert outputs["all_boxes_xyxy"].shape == (3, 3069, 4)
    assert outputs["num_detections"].numpy().tolist() == [9, 9, 9]
    # Built and traced once per model and settings; other settings get their own graph.
    assert build_detector(model, CFG, dataclasses.replace(loose), keep_all=True) is (
        build_detector(model, CFG, loose, keep_all=True)
    )
    assert build_detector(model, CFG, loose) is not build_detector(model, CFG, loose, True)
    other = build_detector(model, CFG, dataclasses.replace(loose, max_detections=2))
    assert other(images)["scores"].shape == (3, 2)


def test_pre_nms_top_k_keeps_the_best_candidates_only():
    encoder = LabelEncoder(CFG)
    predictions = np.zeros((1, 3069, 5), np.float32)
    predictions[..., 4] = -10.0
    predictions[0, [100, 2000, 3000], 4] = [5.0, 4.0, 3.0]  # three far-apart anchors
    few = DecodeConfig(score_threshold=0.01, max_detections=3, max_candidates=3)
    boxes, scores, _ = detect(predictions, encoder.anchors_xyxy, CFG, few).for_image(0)
    assert len(scores) == 3
    fewer = DecodeConfig(score_threshold=0.01, max_detections=2, max_candidates=2)
    _, scores, _ = detect(predictions, encoder.anchors_xyxy, CFG, fewer).for_image(0)
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-np.array([5.0, 4.0]))), rtol=1e-6)


def test_level_probability_maps_put_each_anchor_at_its_own_level_and_cell():
    from retinanet_lib.anchors import anchor_level_ids, generate_anchors
    from retinanet_lib.inference import level_probability_maps

    cfg = dataclasses.replace(config_for_mode("cpu"), image_size=64)
    anchors_xyxy = generate_anchors(64, 64, cfg.anchors).numpy()
    num = len(anchors_xyxy)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, num, 1)).astype(np.float32)
    predictions = np.concatenate([np.zeros((2, num, 4), np.float32), logits], axis=-1)
    maps = level_probability_maps(predictions, cfg)
    # Slow reference: place every anchor by its level and centre, keep the largest probability.
    probabilities = 1 / (1 + np.exp(-logits[..., 0]))
    levels = anchor_level_ids(64, 64, cfg.anchors)
    centers = (anchors_xyxy[:, :2] + anchors_xyxy[:, 2:]) / 2
    for level_index, (level, stride) in enumerate(
        zip(cfg.anchors.levels, cfg.anchors.strides, strict=True)
    ):
        side = int(np.ceil(64 / stride))
        expected = np.zeros((2, side, side))
        for anchor in np.flatnonzero(levels == level):
            col, row = (centers[anchor] // stride).astype(int)
            for image in range(2):
                expected[image, row, col] = max(
                    expected[image, row, col], probabilities[image, anchor]
                )
        assert maps[level_index].shape == (2, side, side)
        np.testing.assert_allclose(maps[level_index], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="anchors"):
        level_probability_maps(predictions[:, :-1], cfg)


def test_compiled_functions_do_not_keep_their_model_alive():
    import gc
    import weakref

    from retinanet_lib.inference import build_detector, compiled_predictor
    from retinanet_lib.model import build_retinanet
    from retinanet_lib.preprocess import to_model_input

    model = build_retinanet(CFG)
    images = np.zeros((1, 128, 128), np.uint8)
    build_detector(model, CFG)(images)
    compiled_predictor(model, CFG)(to_model_input(images, "small_resnet"))
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None  # long studies build dozens of models in one process


def _nms_three_steps(boxes_xyxy, scores, score_threshold, iou_threshold):
    """The R-CNN notes' NMS, the slow obvious way: threshold, sort, keep and suppress."""

    def iou(a, b):
        width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = width * height
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    order = sorted(
        (i for i in range(len(scores)) if scores[i] >= score_threshold), key=lambda i: -scores[i]
    )
    kept = []
    while order:
        best = order.pop(0)
        kept.append(best)
        order = [i for i in order if iou(boxes_xyxy[best], boxes_xyxy[i]) <= iou_threshold]
    return kept


@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
def test_library_nms_equals_the_three_steps_on_crowded_images(iou_threshold):
    from retinanet_lib.inference import non_max_suppression

    rng = np.random.default_rng(int(iou_threshold * 10))
    num_images, num_boxes = 4, 150
    centres = rng.uniform(40, 60, (num_images, num_boxes, 2))  # all piled near one spot
    sizes = rng.uniform(10, 40, (num_images, num_boxes, 2))
    boxes_xyxy = np.concatenate([centres - sizes / 2, centres + sizes / 2], -1).astype(np.float32)
    scores = rng.uniform(0, 1, (num_images, num_boxes, 1)).astype(np.float32)
    decode_cfg = DecodeConfig(
        score_threshold=0.2,
        nms_iou_threshold=iou_threshold,
        max_detections=num_boxes,
        max_candidates=num_boxes,
    )
    found = non_max_suppression(boxes_xyxy, scores, decode_cfg)
    for image in range(num_images):
        kept = _nms_three_steps(boxes_xyxy[image], scores[image, :, 0], 0.2, iou_threshold)
        library_boxes, library_scores, _ = found.for_image(image)
        assert len(kept) > 1  # crowded, yet more than one box survives
        np.testing.assert_allclose(library_boxes, boxes_xyxy[image][kept], atol=1e-5)
        np.testing.assert_allclose(library_scores, scores[image, kept, 0], atol=1e-6)


def test_nms_is_greedy_a_removed_box_removes_nothing():
    """A > B > C in score; A overlaps B and B overlaps C above the threshold, A and C do not
    overlap: greedy NMS keeps A and C (B, removed by A, cannot remove C); a rule "keep only
    the best of each overlapping group" would keep A alone."""
    from retinanet_lib.inference import non_max_suppression

    boxes_xyxy = np.array([[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert _nms_three_steps(boxes_xyxy, scores, 0.1, 0.4) == [0, 2]  # IoU(A,B) = 6/14 > 0.4
    decode_cfg = DecodeConfig(score_threshold=0.1, nms_iou_threshold=0.4)
    library_boxes, library_scores, _ = non_max_suppression(
        boxes_xyxy[None], scores[None, :, None], decode_cfg
    ).for_image(0)
    np.testing.assert_allclose(library_boxes, boxes_xyxy[[0, 2]])
    np.testing.assert_allclose(library_scores, [0.9, 0.7])


def test_decode_predictions_uses_the_configs_own_anchors():
    from retinanet_lib.anchors import generate_anchors
    from retinanet_lib.inference import decode_all, decode_predictions

    cfg = dataclasses.replace(config_for_mode("cpu"), image_size=64)
    anchors = generate_anchors(64, 64, cfg.anchors)
    predictions = np.random.default_rng(3).normal(0, 1, (2, anchors.shape[0], 5))
    boxes, probabilities = decode_predictions(predictions.astype(np.float32), cfg)
    expected_boxes, expected_probabilities = decode_all(predictions, anchors, cfg)
    assert boxes.shape == (2, anchors.shape[0], 4) and probabilities.shape == (
        2,
        anchors.shape[0],
        1,
    )
    np.testing.assert_allclose(boxes, expected_boxes, atol=1e-5)
    np.testing.assert_allclose(probabilities, expected_probabilities, atol=1e-6)
