import math

import numpy as np
import pytest

from retinanet_lib.config import BACKGROUND_CLASS, IGNORE_CLASS, LossConfig
from retinanet_lib.losses import RetinaNetLoss, sigmoid_focal_loss, smooth_l1_loss


def focal_reference(labels, logits, alpha, gamma):
    """Independent float64 formula: -alpha_t (1 - p_t)^gamma log(p_t)."""
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    p_t = np.where(labels == 1, p, 1.0 - p)
    alpha_t = 1.0 if alpha is None else np.where(labels == 1, alpha, 1.0 - alpha)
    return -alpha_t * (1.0 - p_t) ** gamma * np.log(p_t)


def test_focal_hand_computed_values():
    # logit 0 -> p = 0.5: CE = log 2; (1 - p_t)^2 = 0.25.
    got = np.asarray(sigmoid_focal_loss([1.0, 0.0], [0.0, 0.0], alpha=0.25, gamma=2.0))
    np.testing.assert_allclose(
        got, [0.25 * 0.25 * math.log(2), 0.75 * 0.25 * math.log(2)], rtol=1e-6
    )
    # An easy negative (p = 0.01) is down-weighted by (0.01)^2 = 1e-4 against CE.
    logit = math.log(0.01 / 0.99)
    ce = float(np.asarray(sigmoid_focal_loss([0.0], [logit], alpha=None, gamma=0.0))[0])
    focal = float(np.asarray(sigmoid_focal_loss([0.0], [logit], alpha=None, gamma=2.0))[0])
    assert ce == pytest.approx(-math.log(0.99), rel=1e-5)
    assert focal / ce == pytest.approx(1e-4, rel=1e-3)


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (0.5, 0.5), (None, 0.0), (0.25, 5.0)])
def test_focal_matches_independent_formula_on_random_logits(alpha, gamma):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, size=(64, 3)).astype(np.float32)
    labels = (rng.uniform(size=(64, 3)) < 0.2).astype(np.float32)
    got = np.asarray(sigmoid_focal_loss(labels, logits, alpha, gamma))
    np.testing.assert_allclose(
        got, focal_reference(labels, logits, alpha, gamma), rtol=2e-4, atol=1e-6
    )


def test_gamma_zero_is_balanced_cross_entropy():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, 100).astype(np.float32)
    labels = (rng.uniform(size=100) < 0.5).astype(np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    bce = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    weights = np.where(labels == 1, 0.25, 0.75)
    got = np.asarray(sigmoid_focal_loss(labels, logits, alpha=0.25, gamma=0.0))
    np.testing.assert_allclose(got, weights * bce, rtol=1e-4)


def test_focal_is_finite_for_extreme_logits():
    got = np.asarray(sigmoid_focal_loss([1.0, 0.0, 1.0, 0.0], [80.0, -80.0, -80.0, 80.0]))
    assert np.isfinite(got).all() and got[0] < 1e-20 and got[2] > 10


@pytest.mark.parametrize("delta", [0.11, 0.5, 1.0, 3.0])
def test_smooth_l1_for_several_deltas(delta):
    diffs = np.array([0.0, delta / 2, delta, 2 * delta, -4 * delta], np.float32)
    expected = np.where(np.abs(diffs) < delta, 0.5 * diffs**2 / delta, np.abs(diffs) - 0.5 * delta)
    got = np.asarray(smooth_l1_loss(np.zeros_like(diffs), diffs, delta))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    # Continuous at |d| = delta from both sides.
    eps = 1e-4 * delta
    left = float(np.asarray(smooth_l1_loss([0.0], [delta - eps], delta))[0])
    right = float(np.asarray(smooth_l1_loss([0.0], [delta + eps], delta))[0])
    assert abs(left - right) < 1e-3 * delta
    with pytest.raises(ValueError):
        smooth_l1_loss([0.0], [1.0], 0.0)


def packed(deltas, classes):
    return np.concatenate(
        [np.asarray(deltas, np.float32), np.asarray(classes, np.float32)[..., None]], axis=-1
    )


def test_retinanet_loss_on_a_hand_built_case():
    # One image, 4 anchors: positive, background, ignored, positive.
    classes = [[0, BACKGROUND_CLASS, IGNORE_CLASS, 0]]
    box_targets = [[[1.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0.5]]]
    y_true = packed(box_targets, classes)
    box_pred = np.zeros((1, 4, 4), np.float32)
    logits = np.zeros((1, 4, 1), np.float32)  # p = 0.5 everywhere
    y_pred = np.concatenate([box_pred, logits], axis=-1)
    loss = RetinaNetLoss(1, LossConfig(alpha=0.25, gamma=2.0, smooth_l1_delta=1.0))
    parts = {k: np.asarray(v) for k, v in loss.components(y_true, y_pred).items()}
    focal_pos = 0.25 * 0.25 * math.log(2)
    focal_neg = 0.75 * 0.25 * math.log(2)
    expected_cls = (2 * focal_pos + focal_neg) / 2  # ignored anchor left out, 2 positives
    expected_box = (0.5 * 1.0**2 + 0.5 * 0.5**2) / 2  # smooth L1 on positives only
    np.testing.assert_allclose(parts["classification"], [expected_cls], rtol=1e-5)
    np.testing.assert_allclose(parts["box"], [expected_box], rtol=1e-5)
    np.testing.assert_allclose(parts["num_positives"], [2.0])
    np.testing.assert_allclose(
        np.asarray(loss(y_true, y_pred)), expected_cls + expected_box, rtol=1e-5
    )


def test_ignored_and_negative_anchors_do_not_leak_into_the_loss():
    rng = np.random.default_rng(2)
    classes = rng.choice([0, BACKGROUND_CLASS, IGNORE_CLASS], size=(2, 50))
    y_true = packed(rng.normal(size=(2, 50, 4)), classes)
    y_pred = rng.normal(size=(2, 50, 5)).astype(np.float32)
    loss = RetinaNetLoss(1)
    base = {k: np.asarray(v) for k, v in loss.components(y_true, y_pred).items()}
    changed = y_pred.copy()
    changed[..., 4][classes == IGNORE_CLASS] += 10.0  # any logit at an ignored anchor
    changed[..., :4][classes < 0] += 5.0  # any box at a non-positive anchor
    after = {k: np.asarray(v) for k, v in loss.components(y_true, changed).items()}
    np.testing.assert_allclose(after["classification"], base["classification"], rtol=1e-6)
    np.testing.assert_allclose(after["box"], base["box"], rtol=1e-6)


def test_image_without_positives_gives_finite_loss_and_zero_box_loss():
    y_true = packed(np.zeros((1, 30, 4)), np.full((1, 30), BACKGROUND_CLASS))
    y_pred = np.random.default_rng(3).normal(size=(1, 30, 5)).astype(np.float32)
    parts = RetinaNetLoss(1).components(y_true, y_pred)
    assert np.asarray(parts["box"])[0] == 0.0
    cls = np.asarray(parts["classification"])[0]
    assert np.isfinite(cls) and cls > 0  # background is still trained


def test_loss_config_round_trip_and_validation():
    loss = RetinaNetLoss(2, LossConfig(alpha=None, gamma=0.0, smooth_l1_delta=0.5))
    restored = RetinaNetLoss.from_config(loss.get_config())
    assert restored.cfg == loss.cfg and restored.num_classes == 2
    with pytest.raises(ValueError):
        LossConfig(alpha=1.5)
    with pytest.raises(ValueError, match="classes"):
        RetinaNetLoss(2).components(
            packed(np.zeros((1, 3, 4)), np.zeros((1, 3))), np.zeros((1, 3, 5), np.float32)
        )


def _ohem_reference(class_codes, logits, ratio, minimum):
    """Per image, the slow obvious way: CE on every positive and on the hardest negatives."""
    losses = []
    for codes, row in zip(class_codes, logits, strict=True):
        labels = (codes >= 0).astype(np.float64)
        p = 1.0 / (1.0 + np.exp(-row.astype(np.float64)))
        ce = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
        positives = np.flatnonzero(codes >= 0)
        negatives = np.flatnonzero(codes == BACKGROUND_CLASS)
        hardest = negatives[np.argsort(-ce[negatives], kind="stable")]
        count = min(max(int(ratio * len(positives)), minimum), len(negatives))
        kept = list(positives) + list(hardest[:count])
        losses.append(ce[kept].sum() / max(len(positives), 1))
    return np.array(losses)


def test_ohem_keeps_every_positive_and_the_hardest_negatives_like_a_loop():
    rng = np.random.default_rng(11)
    num_images, num_anchors = 5, 400
    codes = rng.choice(
        [0, BACKGROUND_CLASS, IGNORE_CLASS], (num_images, num_anchors), p=[0.03, 0.9, 0.07]
    ).astype(np.float32)
    codes[3] = np.where(codes[3] == 0, BACKGROUND_CLASS, codes[3])  # an image without opacity
    codes[4, :5] = 0  # an image with at least five positives
    logits = rng.normal(0, 2, (num_images, num_anchors, 1)).astype(np.float32)
    targets = np.concatenate(
        [np.zeros((num_images, num_anchors, 4), np.float32), codes[..., None]], -1
    )
    predictions = np.concatenate([np.zeros((num_images, num_anchors, 4), np.float32), logits], -1)
    for ratio, minimum in ((3.0, 16), (1.0, 0), (3.0, 1000)):
        cfg = LossConfig(
            alpha=None, gamma=0.0, hard_negative_ratio=ratio, hard_negative_minimum=minimum
        )
        parts = RetinaNetLoss(1, cfg).components(targets, predictions)
        expected = _ohem_reference(codes, logits[..., 0], ratio, minimum)
        np.testing.assert_allclose(np.asarray(parts["classification"]), expected, rtol=1e-5)
    # With a minimum above the number of negatives every negative is kept: plain CE again.
    plain = RetinaNetLoss(1, LossConfig(alpha=None, gamma=0.0)).components(targets, predictions)
    np.testing.assert_allclose(
        np.asarray(parts["classification"]), np.asarray(plain["classification"]), rtol=1e-5
    )


def test_ohem_gradient_reaches_only_the_kept_anchors():
    import tensorflow as tf

    from retinanet_lib.losses import hard_negative_mask

    losses = tf.constant([[0.1, 5.0, 0.2, 3.0, 0.0, 9.0]])
    negatives = tf.constant([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]])  # the 9.0 is not a negative
    mask = hard_negative_mask(losses, negatives, tf.constant([1.0]), ratio=2.0, minimum=0)
    np.testing.assert_array_equal(mask.numpy(), [[0, 1, 0, 1, 0, 0]])  # the two hardest
    mask = hard_negative_mask(losses, negatives, tf.constant([0.0]), ratio=2.0, minimum=3)
    np.testing.assert_array_equal(mask.numpy(), [[0, 1, 1, 1, 0, 0]])  # minimum 3 when P = 0
    logits = tf.Variable(np.random.default_rng(0).normal(0, 1, (1, 50, 1)).astype(np.float32))
    codes = np.full((1, 50), BACKGROUND_CLASS, np.float32)
    codes[0, :2] = 0
    targets = np.concatenate([np.zeros((1, 50, 4), np.float32), codes[..., None]], -1)
    cfg = LossConfig(alpha=None, gamma=0.0, hard_negative_ratio=3.0, hard_negative_minimum=0)
    with tf.GradientTape() as tape:
        predictions = tf.concat([tf.zeros((1, 50, 4)), logits], axis=-1)
        loss = RetinaNetLoss(1, cfg)(targets, predictions)
    gradient = tape.gradient(loss, logits).numpy()[0, :, 0]
    assert np.count_nonzero(gradient) == 2 + 6  # two positives and 3 x 2 negatives


def test_ohem_settings_are_checked():
    with pytest.raises(ValueError, match="hard_negative_ratio"):
        LossConfig(hard_negative_ratio=0.0)
    with pytest.raises(ValueError, match="hard_negative_minimum"):
        LossConfig(hard_negative_minimum=-1)


def test_ohem_trains_in_a_compiled_step():
    """The mask is built from argsort inside the compiled (XLA) train step."""
    import dataclasses

    import keras

    from retinanet_lib.config import config_for_mode
    from retinanet_lib.model import build_retinanet

    from .helpers import bright_squares

    base = config_for_mode("cpu")
    cfg = dataclasses.replace(
        base,
        image_size=64,
        loss=LossConfig(alpha=None, gamma=0.0, hard_negative_ratio=3.0, hard_negative_minimum=8),
    )
    images, targets = bright_squares(cfg, num_images=4)
    keras.utils.set_random_seed(0)
    model = build_retinanet(cfg)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=RetinaNetLoss(1, cfg.loss))
    losses = [float(model.train_on_batch(images, targets)) for _ in range(5)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
