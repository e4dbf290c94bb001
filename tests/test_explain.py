"""Grad-CAM against finite differences, occlusion against a one-patch-at-a-time loop."""

import dataclasses

import cv2
import keras
import numpy as np
import pytest

from retinanet_lib.explain import (
    anchor_logit,
    anchor_score,
    best_anchor_for_box,
    explain_anchor,
    explanation_cases,
    grad_cam,
    mean_activation,
    occlusion_map,
    top_anchor_score,
)


def _tiny_detector(side=6, channels=3):
    """Image -> `features` (side x side x channels) -> a non-linear head -> (B, A, 5)."""
    keras.utils.set_random_seed(3)
    image = keras.Input((side, side, 1))
    features = keras.layers.Conv2D(channels, 3, padding="same", name="features")(image)
    hidden = keras.layers.Conv2D(4, 1, activation="tanh", name="hidden")
    output = keras.layers.Conv2D(5, 1, name="output")
    reshape = keras.layers.Reshape((side * side, 5))
    model = keras.Model(image, reshape(output(hidden(features))))
    feature_input = keras.Input((side, side, channels))
    head = keras.Model(feature_input, reshape(output(hidden(feature_input))))
    return model, head


@pytest.mark.parametrize("target", [anchor_logit(7), top_anchor_score], ids=["anchor", "top"])
def test_grad_cam_matches_finite_differences(target):
    model, head = _tiny_detector()
    image = np.random.default_rng(0).normal(0, 1, (1, 6, 6, 1)).astype(np.float32)
    features = np.asarray(model.get_layer("features")(image), np.float64)[0]  # (6, 6, 3)
    gradient = np.zeros_like(features)
    step = 1e-2
    for index in np.ndindex(features.shape):  # central differences, element by element
        up, down = features.copy(), features.copy()
        up[index] += step
        down[index] -= step
        scores = np.asarray(target(head(np.stack([up, down]).astype(np.float32))))
        gradient[index] = (scores[0] - scores[1]) / (2 * step)
    weights = gradient.mean(axis=(0, 1))  # one weight per channel
    expected = np.maximum((features * weights).sum(axis=-1), 0.0)
    expected = cv2.resize(expected.astype(np.float32), (6, 6), interpolation=cv2.INTER_LINEAR)
    expected = expected / expected.max()
    cam = grad_cam(model, image, "features", target=target)
    assert cam.shape == (1, 6, 6) and cam.dtype == np.float32
    np.testing.assert_allclose(cam[0], expected, atol=2e-3)
    assert cam.max() == pytest.approx(1.0)


def test_grad_cam_on_the_retinanet_pyramid():
    from retinanet_lib.config import config_for_mode
    from retinanet_lib.model import build_retinanet

    cfg = dataclasses.replace(config_for_mode("cpu"), image_size=64)
    keras.utils.set_random_seed(0)
    model = build_retinanet(cfg)
    images = np.random.default_rng(1).normal(0, 1, (2, 64, 64, 3)).astype(np.float32)
    for level_index in (0, 1):  # P3 (8 x 8 cells) and P4 (4 x 4), upsampled to the input
        cams = grad_cam(model, images, "fpn", output_index=level_index)
        assert cams.shape == (2, 64, 64)
        assert np.all((cams >= 0) & (cams <= 1)) and np.isfinite(cams).all()


def _occlusion_by_loop(model, image, patch, stride, fill, target):
    """One occluded copy at a time; every pixel averages the drops of its covering patches."""
    height, width = image.shape[:2]
    base = float(np.asarray(target(model(image[None])))[0])
    drops = np.zeros((height, width))
    counts = np.zeros((height, width))
    for top in range(0, height - patch + 1, stride):
        for left in range(0, width - patch + 1, stride):
            covered = image.copy()
            covered[top : top + patch, left : left + patch] = fill
            drop = base - float(np.asarray(target(model(covered[None])))[0])
            drops[top : top + patch, left : left + patch] += drop
            counts[top : top + patch, left : left + patch] += 1
    return np.divide(drops, counts, out=np.zeros_like(drops), where=counts > 0)


@pytest.mark.parametrize(("patch", "stride"), [(3, 2), (2, 2), (4, 1)])
def test_occlusion_map_equals_the_loop(patch, stride):
    model, _ = _tiny_detector(side=8)
    image = np.random.default_rng(2).normal(0, 1, (8, 8, 1)).astype(np.float32)
    target = anchor_logit(20)
    fast = occlusion_map(model, image, patch, stride, fill_value=0.5, target=target, batch_size=5)
    slow = _occlusion_by_loop(model, image, patch, stride, 0.5, target)
    assert fast.shape == (8, 8) and fast.dtype == np.float32
    np.testing.assert_allclose(fast, slow, atol=1e-5)


def test_occlusion_finds_the_only_pixels_that_matter():
    """A score that reads one 2 x 2 corner of the image: only patches over it change it."""
    image = keras.Input((8, 8, 1))
    corner = keras.layers.Lambda(lambda x: keras.ops.sum(x[:, :2, :2, 0], axis=(1, 2)))(image)
    logits = keras.layers.Reshape((1, 1))(corner)
    model = keras.Model(
        image, keras.layers.Concatenate()([keras.ops.zeros_like(logits)] * 4 + [logits])
    )
    drops = occlusion_map(model, np.ones((8, 8, 1), np.float32), 2, 2, target=anchor_logit(0))
    assert drops[:2, :2].min() == pytest.approx(4.0)  # the whole corner covered: 4 -> 0
    assert np.count_nonzero(drops) == 4
    with pytest.raises(ValueError, match="stride"):
        occlusion_map(model, np.ones((8, 8, 1), np.float32), 2, 3)


def _small_cfg():
    from retinanet_lib.config import config_for_mode

    return dataclasses.replace(config_for_mode("cpu"), image_size=64)


def _iou_one(a, b):
    """IoU of two xyxy boxes, written out."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_best_anchor_for_box_matches_a_loop_over_anchors():
    from retinanet_lib.anchors import generate_anchors
    from retinanet_lib.inference import decode_all

    cfg = _small_cfg()
    anchors = np.asarray(generate_anchors(64, 64, cfg.anchors))
    rng = np.random.default_rng(4)
    prediction = np.concatenate(
        [rng.normal(0, 1, (len(anchors), 4)), rng.normal(-2, 2, (len(anchors), 1))], 1
    ).astype(np.float32)
    decoded = np.asarray(decode_all(prediction[None], anchors, cfg)[0])[0]
    scores = 1 / (1 + np.exp(-prediction[:, 4]))
    for box in ([8, 8, 40, 30], [30, 2, 62, 60], [0, 0, 3, 3]):
        ious = np.array([_iou_one(box, d) for d in decoded])
        above = [i for i in range(len(anchors)) if ious[i] > 0.5]
        expected = max(above, key=lambda i: scores[i]) if above else int(np.argmax(ious))
        assert best_anchor_for_box(prediction, np.array(box, np.float32), cfg) == expected
    assert not (np.array([_iou_one([0, 0, 3, 3], d) for d in decoded]) > 0.5).any()


def _cases_split(cfg):
    """Three images with zero box deltas (every decoded box is its anchor): a hit and a
    false alarm on image 0, two missed boxes on image 1, and image 2 without an opacity."""
    from retinanet_lib.anchors import generate_anchors

    anchors = np.asarray(generate_anchors(64, 64, cfg.anchors))
    predictions = np.zeros((3, len(anchors), 5), np.float32)
    predictions[..., 4] = -8.0
    hit, alarm, attempt, negative_top = 3, 40, 7, 100
    predictions[0, hit, 4] = 2.0
    predictions[0, alarm, 4] = 1.0
    predictions[1, attempt, 4] = -1.0  # the best attempt at the large missed box
    predictions[2, negative_top, 4] = 0.5
    predictions[2, negative_top + 1, 4] = 0.4
    large_miss = anchors[attempt] + np.array([1, 1, -1, -1], np.float32)
    truth = [
        anchors[hit][None],
        np.stack([large_miss, np.array([50, 50, 54, 54], np.float32)]),
        np.zeros((0, 4), np.float32),
    ]
    detections = [
        (anchors[[hit, alarm]], np.array([0.88, 0.73])),
        (np.zeros((0, 4), np.float32), np.zeros(0)),
        (np.zeros((0, 4), np.float32), np.zeros(0)),
    ]
    return predictions, detections, truth, anchors, (hit, alarm, attempt, negative_top)


def test_explanation_cases_pick_one_of_each_kind():
    cfg = _small_cfg()
    predictions, detections, truth, anchors, expected = _cases_split(cfg)
    hit, alarm, attempt, negative_top = expected
    assert _iou_one(anchors[hit], anchors[alarm]) < 0.5  # the alarm hits nothing
    cases = explanation_cases(predictions, detections, truth, cfg)
    assert [c.label for c in cases] == [
        "true positive",
        "false positive",
        "missed opacity",
        "negative image",
    ]
    assert [c.image for c in cases] == [0, 0, 1, 2]
    assert [c.anchor for c in cases] == [hit, alarm, attempt, negative_top]
    np.testing.assert_allclose(cases[2].box_xyxy, truth[1][0])  # the larger of the two misses
    clipped = np.clip(anchors[negative_top], 0, 64)  # decoded boxes are clipped
    np.testing.assert_allclose(cases[3].box_xyxy, clipped, atol=1e-4)
    expected_scores = [1 / (1 + np.exp(-v)) for v in (2.0, 1.0, -1.0, 0.5)]
    assert [c.score for c in cases] == pytest.approx(expected_scores, rel=1e-5)


def test_explanation_cases_say_which_kind_is_missing():
    cfg = _small_cfg()
    predictions, detections, truth, _, _ = _cases_split(cfg)
    detections[0] = (detections[0][0][:1], detections[0][1][:1])  # no false alarm left
    with pytest.raises(ValueError, match="false positive"):
        explanation_cases(predictions, detections, truth, cfg)
    with pytest.raises(ValueError, match="negative image"):
        explanation_cases(predictions[:2], detections[:2], truth[:2], cfg)


def test_explanation_cases_can_leave_out_an_absent_kind():
    """A model trained on another machine may make no false positive: the chapter then shows
    the three kinds it has."""
    cfg = _small_cfg()
    predictions, detections, truth, anchors, expected = _cases_split(cfg)
    hit, _, attempt, negative_top = expected
    detections[0] = (detections[0][0][:1], detections[0][1][:1])  # no false alarm left
    cases = explanation_cases(predictions, detections, truth, cfg, skip_absent=True)
    assert [c.label for c in cases] == ["true positive", "missed opacity", "negative image"]
    assert [c.anchor for c in cases] == [hit, attempt, negative_top]
    without_negative = explanation_cases(
        predictions[:2], detections[:2], truth[:2], cfg, skip_absent=True
    )
    assert [c.label for c in without_negative] == ["true positive", "missed opacity"]


def test_explain_anchor_reads_the_anchors_own_pyramid_level():
    from retinanet_lib.anchors import anchor_level_ids
    from retinanet_lib.model import build_retinanet

    cfg = _small_cfg()
    keras.utils.set_random_seed(1)
    model = build_retinanet(cfg)
    image = np.random.default_rng(3).normal(0, 1, (64, 64, 3)).astype(np.float32)
    prediction = np.asarray(model(image[None], training=False))[0]
    levels = anchor_level_ids(64, 64, cfg.anchors)
    anchor = int(np.flatnonzero(levels == 4)[5])  # a P4 anchor: P3 lies downstream of it
    maps = explain_anchor(model, image, prediction, anchor, cfg, patch_size=16, stride=8)
    assert list(maps) == ["mean box score", "Grad-CAM", "occlusion"]
    for values in maps.values():
        assert values.shape == (64, 64) and values.dtype == np.float32
    assert maps["Grad-CAM"].max() == pytest.approx(1.0)  # P4 carries the anchor's gradient
    p3_only = grad_cam(model, image[None], "fpn", 0, target=anchor_logit(anchor))
    assert p3_only.max() == 0.0  # on P3 the gradient is zero: the wrong level explains nothing
    slow = _occlusion_by_loop(model, image, 16, 8, 0.0, anchor_score(anchor))
    np.testing.assert_allclose(maps["occlusion"], slow, atol=1e-5)
    mean_map = maps["mean box score"]
    assert 0.0 <= mean_map.min() and mean_map.max() <= 1.0


def test_mean_activation_is_the_channel_mean_upsampled():
    from retinanet_lib.config import config_for_mode
    from retinanet_lib.model import build_backbone

    cfg = config_for_mode("cpu")
    keras.utils.set_random_seed(2)
    backbone = build_backbone(cfg.model, (64, 64, 3))
    images = np.random.default_rng(6).normal(0, 1, (2, 64, 64, 3)).astype(np.float32)
    maps = mean_activation(backbone, images, 1)  # C4: 4 x 4 cells at 64 px
    assert maps.shape == (2, 64, 64) and maps.dtype == np.float32
    c4 = np.asarray(backbone(images, training=False)[1])
    assert c4.shape[1:3] == (4, 4)
    for index in range(2):
        mean = c4[index].mean(axis=-1)
        expected = cv2.resize(mean, (64, 64), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(maps[index], expected, rtol=1e-5, atol=1e-6)
    assert maps.min() >= 0.0  # the stage ends in a ReLU
