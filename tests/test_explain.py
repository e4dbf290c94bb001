"""Grad-CAM against finite differences, occlusion against a one-patch-at-a-time loop."""

import dataclasses

import cv2
import keras
import numpy as np
import pytest

from retinanet_lib.explain import anchor_logit, grad_cam, occlusion_map, top_anchor_score


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
