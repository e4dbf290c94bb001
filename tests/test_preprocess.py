import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from retinanet_lib.config import DataConfig
from retinanet_lib.preprocess import (
    apply_clahe,
    augment,
    resize_image,
    to_model_input,
    transform_boxes,
)

NO_AUGMENT = DataConfig(horizontal_flip=False, max_rotation_degrees=0.0, max_shift_fraction=0.0)


def rectangle_image(size: int, box_xyxy) -> np.ndarray:
    image = np.zeros((size, size), np.uint8)
    x0, y0, x1, y1 = box_xyxy
    image[y0:y1, x0:x1] = 200
    return image


def bright_bbox(image: np.ndarray, threshold: float = 100.0) -> np.ndarray:
    """xyxy bounding box of the pixels above threshold (continuous coordinates)."""
    rows = np.flatnonzero((image > threshold).any(axis=1))
    cols = np.flatnonzero((image > threshold).any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


def test_clahe_raises_local_contrast_and_keeps_shape():
    rng = np.random.default_rng(0)
    flat = (120 + rng.normal(0, 3, (256, 256))).clip(0, 255).astype(np.uint8)
    out = apply_clahe(flat, clip_limit=2.0, tile_grid=8)
    assert out.shape == flat.shape and out.dtype == np.uint8
    assert out.std() > 2 * flat.std()
    stronger = apply_clahe(flat, clip_limit=4.0, tile_grid=8)
    assert stronger.std() > out.std()
    with pytest.raises(ValueError, match="uint8"):
        apply_clahe(flat.astype(np.float32), 2.0, 8)


def test_resize_scales_a_drawn_rectangle_and_its_box_alike():
    box = np.array([264, 152, 480, 532])
    image = rectangle_image(1024, box)
    resized, (scale_x, scale_y) = resize_image(image, 256)
    assert resized.shape == (256, 256) and (scale_x, scale_y) == (0.25, 0.25)
    np.testing.assert_allclose(bright_bbox(resized), box * 0.25, atol=1.0)


def test_resize_non_square_source_gives_two_scales():
    image = np.zeros((800, 1000), np.uint8)
    _, scale = resize_image(image, 200)
    assert scale == (0.2, 0.25)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_augment_moves_pixels_and_boxes_together(seed):
    box = [80, 60, 150, 190]
    image = rectangle_image(256, box)
    cfg = DataConfig(max_rotation_degrees=10.0, max_shift_fraction=0.1)
    moved, moved_boxes = augment(image, np.array([box], np.float32), cfg, [seed, 42])
    assert moved.shape == (256, 256) and moved.dtype == tf.float32
    np.testing.assert_allclose(moved_boxes.numpy()[0], bright_bbox(moved.numpy()), atol=1.5)


def test_flip_only_is_an_exact_mirror():
    box = [20, 30, 70, 90]
    image = rectangle_image(128, box)
    cfg = dataclasses.replace(NO_AUGMENT, horizontal_flip=True)
    flipped = None
    for seed in range(10):  # find a seed that flips (probability 1/2 each)
        out, boxes = augment(image, np.array([box], np.float32), cfg, [seed, 0])
        if not np.array_equal(out.numpy(), image):
            flipped = (out.numpy(), boxes.numpy())
            break
    assert flipped is not None
    np.testing.assert_array_equal(flipped[0], image[:, ::-1])
    np.testing.assert_allclose(flipped[1], [[128 - 70, 30, 128 - 20, 90]], atol=1e-4)


def test_no_augmentation_is_the_identity():
    image = rectangle_image(64, [5, 6, 30, 40])
    out, boxes = augment(image, np.array([[5.0, 6, 30, 40]]), NO_AUGMENT, [1, 2])
    np.testing.assert_allclose(out.numpy(), image, atol=1e-3)
    np.testing.assert_allclose(boxes, [[5, 6, 30, 40]], atol=1e-4)


def test_augment_is_deterministic_per_seed_and_handles_no_boxes():
    image = rectangle_image(64, [5, 6, 30, 40])
    cfg = DataConfig()
    a = augment(image, np.zeros((0, 4), np.float32), cfg, [7, 7])
    b = augment(image, np.zeros((0, 4), np.float32), cfg, [7, 7])
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1].shape == (0, 4)


def test_boxes_moved_out_of_the_image_become_degenerate():
    shift_right = np.array([[1, 0, 500], [0, 1, 0], [0, 0, 1]], np.float32)
    moved = transform_boxes([[10.0, 10, 50, 50]], shift_right, 256.0).numpy()
    assert moved[0, 2] - moved[0, 0] == 0.0


def test_model_input_for_each_backbone():
    gray = np.array([[0, 255]], np.uint8)
    small = to_model_input(gray, "small_resnet").numpy()
    np.testing.assert_allclose(small, [[[-1, -1, -1], [1, 1, 1]]])
    resnet = to_model_input(gray, "resnet50").numpy()
    imagenet_mean_bgr = np.array([103.939, 116.779, 123.68])
    np.testing.assert_allclose(resnet[0, 0], -imagenet_mean_bgr, atol=1e-3)
    np.testing.assert_allclose(resnet[0, 1], 255 - imagenet_mean_bgr, atol=1e-3)
    assert to_model_input(np.zeros((2, 8, 8, 1)), "small_resnet").shape == (2, 8, 8, 3)
    with pytest.raises(ValueError, match="backbone"):
        to_model_input(gray, "vgg16")
