"""The winners study's pieces: ensembling, gating, variant scoring, and the study end to end."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from retinanet_lib.config import SyntheticConfig, replace_section
from retinanet_lib.evaluate import choose_thresholds, score_at
from retinanet_lib.inference import ensemble_predictions, image_probabilities
from retinanet_lib.winners import ModelOutputs, score_variant, variant_predictions

from .helpers import run_studies_on, tiny_study_cfg

TINY = tiny_study_cfg()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from retinanet_lib.synthetic import write_synthetic_rsna

    root = tmp_path_factory.mktemp("winners_data")
    write_synthetic_rsna(
        root, SyntheticConfig(num_train=16, num_test=8, image_size=128, seed=2), False
    )
    return root


def test_winners_study_end_to_end_writes_runs_variants_and_per_image_scores(
    tiny_data, tmp_path, monkeypatch
):
    from retinanet_lib.splits import load_splits

    studies = ("winners", "confirmation")
    run_studies = run_studies_on(monkeypatch, tiny_data, tmp_path, TINY, studies)
    run_studies.run_winners((0, 1), ["CPU default", "image head"], {}, "abc1234")
    runs = pd.read_csv(tmp_path / "winners.csv")
    variants = pd.read_csv(tmp_path / "winners_variants.csv", dtype={"seeds": str})
    per_image = pd.read_csv(tmp_path / "winners_test_per_image.csv", dtype={"seeds": str})
    assert len(runs) == 4 and set(runs["arm"]) == {"CPU default", "image head"}
    singles = sum(not ensemble for _, ensemble, _, _ in run_studies.WINNER_VARIANTS)
    ensembles = len(run_studies.WINNER_VARIANTS) - singles
    assert len(variants) == 2 * (2 * singles + ensembles)
    assert set(variants.loc[variants["variant"].str.startswith("ensemble"), "seeds"]) == {"0+1"}
    assert variants["test_rsna_metric"].between(0, 1).all()
    ungated = variants[~variants["variant"].str.contains("gated")]
    assert ungated["gate_threshold"].isna().all()
    test_images = variants["test_images"].iloc[0]
    assert (per_image.groupby(["arm", "variant", "seeds"]).size() == test_images).all()
    # The row's test metric is the mean of its per-image scores (the metric skips NaN).
    for (arm, variant, label), group in per_image.groupby(["arm", "variant", "seeds"]):
        row = variants[
            (variants["arm"] == arm)
            & (variants["variant"] == variant)
            & (variants["seeds"] == label)
        ].iloc[0]
        assert group["rsna_score"].mean() == pytest.approx(row["test_rsna_metric"], abs=2e-4)
    # Resuming finds everything done and trains nothing.
    run_studies.run_winners((0, 1), ["CPU default", "image head"], {}, "abc1234")
    assert len(pd.read_csv(tmp_path / "winners_variants.csv")) == len(variants)
    # The confirmation study retrains the same runs (the same rows) and scores another set.
    other_test = load_splits("cpu", TINY, tiny_data).test
    other_test = dataclasses.replace(
        other_test, paths=other_test.paths[:5], boxes_xywh=other_test.boxes_xywh[:5]
    )
    monkeypatch.setitem(run_studies.VARIANT_STUDIES, "confirmation", lambda: other_test)
    run_studies.run_winners((0, 1), ["CPU default", "image head"], {}, "abc1234", "confirmation")
    again = pd.read_csv(tmp_path / "confirmation.csv")
    columns = ["arm", "seed", "rsna_metric", "ap50", "best_epoch", "config_id"]
    pd.testing.assert_frame_equal(again[columns], runs[columns])
    confirmed = pd.read_csv(tmp_path / "confirmation_variants.csv")
    assert (confirmed["test_images"] == 5).all() and len(confirmed) == len(variants)


HEAD = replace_section(TINY, "model", image_head=True)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_image_head_is_a_dense_logit_on_pooled_c5_copied_to_every_anchor():
    import keras

    from retinanet_lib.anchors import num_anchors
    from retinanet_lib.model import backbone_of, build_retinanet, detection_channels, image_logits

    keras.utils.set_random_seed(0)
    model = build_retinanet(HEAD)
    images = np.random.default_rng(0).normal(size=(3, 128, 128, 3)).astype(np.float32)
    outputs = model(images, training=False).numpy()
    anchors = num_anchors(128, 128, HEAD.anchors)
    assert outputs.shape == (3, anchors, 6) and outputs.dtype == np.float32
    # The reference: mean of C5 over space, times the dense kernel, plus its bias.
    c5 = backbone_of(model)(images, training=False)[-1].numpy()
    kernel, bias = model.get_layer("image_logit").get_weights()
    expected = c5.mean(axis=(1, 2)) @ kernel[:, 0] + bias[0]
    np.testing.assert_allclose(outputs[..., 5], np.repeat(expected[:, None], anchors, 1), rtol=1e-5)
    np.testing.assert_allclose(image_logits(outputs, HEAD), expected, rtol=1e-5)
    assert detection_channels(outputs, HEAD).shape == (3, anchors, 5)
    assert image_logits(outputs[..., :5], TINY) is None
    with pytest.raises(ValueError, match="image head"):
        detection_channels(outputs, TINY)  # 6 channels, but the config has no head


def test_loss_adds_weighted_image_bce_to_the_detection_loss():
    from retinanet_lib.config import LossConfig
    from retinanet_lib.encoding import LabelEncoder
    from retinanet_lib.losses import RetinaNetLoss

    encoder = LabelEncoder(TINY)
    box = np.array([[20, 30, 70, 90]], np.float32)
    targets = np.stack(
        [encoder.encode_sample(box, [0]).numpy(), encoder.encode_sample(box[:0], []).numpy()]
    )  # image 0 has an opacity, image 1 none
    rng = np.random.default_rng(1)
    detection = rng.normal(size=(2, targets.shape[1], 5)).astype(np.float32)
    image_logit = np.array([0.7, -1.3], np.float32)
    with_head = np.concatenate(
        [detection, np.repeat(image_logit[:, None, None], targets.shape[1], 1)], axis=-1
    )
    weight = 0.4
    cfg = LossConfig(image_loss_weight=weight)
    plain = RetinaNetLoss(1, cfg)(targets, detection)  # mean over the batch
    total = RetinaNetLoss(1, cfg)(targets, with_head)
    labels = np.array([1.0, 0.0])
    probability = _sigmoid(image_logit.astype(np.float64))
    bce = -(labels * np.log(probability) + (1 - labels) * np.log(1 - probability))
    assert float(total) == pytest.approx(float(plain) + weight * bce.mean(), rel=1e-5)
    parts = RetinaNetLoss(1, cfg).components(targets, with_head)
    np.testing.assert_allclose(parts["image"], weight * bce, rtol=1e-5)
    with pytest.raises(ValueError, match="channels"):
        RetinaNetLoss(1, cfg)(targets, with_head[..., :4])


def test_ensemble_averages_deltas_and_probabilities_against_a_loop():
    rng = np.random.default_rng(2)
    members = [rng.normal(0, 3, size=(2, 7, 6)).astype(np.float32) for _ in range(3)]
    members[0][0, 0, 4] = 80.0  # a saturated logit stays finite
    result = ensemble_predictions(members).numpy()
    for b in range(2):
        for a in range(7):
            deltas = np.mean([m[b, a, :4] for m in members], axis=0)
            np.testing.assert_allclose(result[b, a, :4], deltas, rtol=1e-5, atol=1e-6)
            for c in (4, 5):
                probability = np.mean([_sigmoid(float(m[b, a, c])) for m in members])
                assert _sigmoid(float(result[b, a, c])) == pytest.approx(probability, abs=1e-6)
    assert np.isfinite(result).all()
    np.testing.assert_array_equal(ensemble_predictions(members[:1]).numpy(), members[0])
    with pytest.raises(ValueError):
        ensemble_predictions([members[0], members[1][:, :5]])
    with pytest.raises(ValueError):
        ensemble_predictions([])


def test_image_probability_is_the_head_or_the_top_anchor():
    rng = np.random.default_rng(3)
    outputs = rng.normal(size=(4, 3069, 6)).astype(np.float32)
    head = image_probabilities(outputs, HEAD).numpy()
    np.testing.assert_allclose(head, _sigmoid(outputs[:, 0, 5]), rtol=1e-5)
    top = image_probabilities(outputs[..., :5], TINY).numpy()
    np.testing.assert_allclose(top, _sigmoid(outputs[..., 4]).max(axis=1), rtol=1e-5)


def _random_split(seed, images=10, anchors=3069):
    """Model-like outputs with a few confident anchors, and ground truth from the anchors."""
    from retinanet_lib.anchors import generate_anchors

    rng = np.random.default_rng(seed)
    anchors_xyxy = generate_anchors(128, 128, TINY.anchors).numpy()
    outputs = np.zeros((images, anchors, 6), np.float32)
    outputs[..., :4] = rng.normal(0, 0.1, (images, anchors, 4))
    outputs[..., 4] = -6.0
    truth = []
    for i in range(images):
        picks = rng.choice(anchors, size=rng.integers(0, 3), replace=False)
        outputs[i, picks, 4] = rng.normal(1.0, 1.5, len(picks))
        outputs[i, rng.integers(anchors), 4] = rng.normal(-0.5, 1.0)  # a stray box
        truth.append(anchors_xyxy[picks[: max(0, len(picks) - (i % 2))]])
        outputs[i, :, 5] = rng.normal(1.0 if len(truth[-1]) else -1.0, 1.0)
    return outputs, truth


def test_choose_thresholds_equals_a_search_with_score_at():
    outputs, truth = _random_split(4)
    score_grid, gate_grid = (0.1, 0.3, 0.5), (None, 0.2, 0.5, 0.8)
    threshold, gate, table = choose_thresholds(outputs, truth, HEAD, score_grid, gate_grid)
    best, best_pair = -1.0, None
    for t in score_grid:  # the slow reference: every pair scored from scratch
        for g in gate_grid:
            value = score_at(outputs, truth, HEAD, t, g).rsna_metric
            assert table[
                (table["score_threshold"] == t)
                & (table["gate_threshold"].isna() if g is None else table["gate_threshold"] == g)
            ]["rsna_metric"].item() == pytest.approx(value)
            if value > best + 1e-12:
                best, best_pair = value, (t, g)
    assert (threshold, gate) == best_pair


def test_gating_removes_every_box_of_an_image_below_the_gate():
    outputs, truth = _random_split(5)
    probability = image_probabilities(outputs, HEAD).numpy()
    gate = float(np.median(probability))
    open_ = score_at(outputs, truth, HEAD, 0.1)
    gated = score_at(outputs, truth, HEAD, 0.1, gate)
    below = probability < gate
    assert (gated.detections_per_image[below] == 0).all()
    np.testing.assert_array_equal(
        gated.detections_per_image[~below], open_.detections_per_image[~below]
    )


def test_score_variant_of_one_member_is_score_at_its_validation_thresholds():
    validation, validation_truth = _random_split(6)
    test, test_truth = _random_split(7, images=12)
    member = ModelOutputs(validation, test, validation, test)
    v, t = variant_predictions([member], flip=False)
    np.testing.assert_array_equal(t, test)
    scored = score_variant(v, validation_truth, t, test_truth, HEAD, gate=True)
    threshold, gate, _ = choose_thresholds(validation, validation_truth, HEAD)
    expected = score_at(test, test_truth, HEAD, threshold, gate)
    assert scored.row["test_rsna_metric"] == pytest.approx(expected.rsna_metric, abs=1e-4)
    assert scored.row["score_threshold"] == threshold
    np.testing.assert_allclose(
        scored.per_image["rsna_score"], np.round(expected.per_image, 4), equal_nan=True
    )
    with pytest.raises(ValueError, match="flip"):
        variant_predictions([ModelOutputs(validation, test)], flip=True)


def test_an_ensemble_detector_equals_detection_on_ensembled_outputs():
    import keras

    from retinanet_lib.inference import build_detector, predict_images
    from retinanet_lib.model import build_retinanet
    from retinanet_lib.preprocess import to_model_input

    models = []
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        models.append(build_retinanet(HEAD))
    images = np.random.default_rng(8).integers(0, 255, (3, 128, 128), dtype=np.uint8)
    outputs = [predict_images(m, to_model_input(images, "small_resnet"), HEAD) for m in models]
    averaged = ensemble_predictions(outputs).numpy()
    probability = image_probabilities(averaged, HEAD).numpy()
    gate = float(np.sort(probability)[1])  # gates the least likely image only
    decode = dataclasses.replace(HEAD.decode, score_threshold=0.0, gate_threshold=gate)
    result = {k: v.numpy() for k, v in build_detector(models, HEAD, decode)(images).items()}
    np.testing.assert_allclose(result["image_probability"], probability, rtol=1e-4)
    expected = score_at(averaged, [np.zeros((0, 4))] * 3, HEAD, 0.0, gate)
    np.testing.assert_array_equal(result["num_detections"], expected.detections_per_image)
    assert result["num_detections"][np.argmin(probability)] == 0


def test_an_exported_ensemble_serves_the_ensemble(tmp_path):
    import keras
    import tensorflow as tf

    from retinanet_lib.export import export_inference_model
    from retinanet_lib.inference import build_detector
    from retinanet_lib.model import build_retinanet

    models = []
    for seed in (3, 4):
        keras.utils.set_random_seed(seed)
        models.append(build_retinanet(HEAD))
    cfg = replace_section(HEAD, "decode", score_threshold=0.0)
    export_inference_model(models, cfg, tmp_path / "ensemble")
    images = np.random.default_rng(9).integers(0, 255, (2, 128, 128), dtype=np.uint8)
    loaded = tf.saved_model.load(str(tmp_path / "ensemble"))  # kept: it owns the variables
    served = loaded.serve(images)
    expected = build_detector(models, cfg)(images)
    alone = build_detector(models[0], cfg)(images)
    for name in ("scores", "image_probability"):
        np.testing.assert_allclose(served[name].numpy(), expected[name].numpy(), atol=1e-5)
    assert not np.allclose(served["image_probability"], alone["image_probability"], atol=1e-5)


def test_variant_difference_pairs_seeds_and_repeats_an_ensemble_per_seed():
    from retinanet_lib.metrics import paired_bootstrap_difference
    from retinanet_lib.winners import variant_difference, variant_table

    rng = np.random.default_rng(10)
    images = [f"img{i}" for i in range(12)]
    singles = rng.uniform(0, 1, (3, 12))
    singles[:, 0] = np.nan  # an image the metric skips
    other = rng.uniform(0, 1, (3, 12))
    ensemble = rng.uniform(0, 1, 12)
    rows = []
    for seed in range(3):
        for i, image in enumerate(images):
            rows.append(("A", "single model", str(seed), image, singles[seed, i]))
            rows.append(("B", "single model", str(seed), image, other[seed, i]))
    for i, image in enumerate(images):
        rows.append(("A", "ensemble of 3", "0+1+2", image, ensemble[i]))
    table = pd.DataFrame(rows, columns=["arm", "variant", "seeds", "image", "rsna_score"])
    table = table.sample(frac=1.0, random_state=0)  # the row order must not matter
    order = np.argsort(images)  # the pivot's column order: image names, sorted
    singles, other, ensemble = singles[:, order], other[:, order], ensemble[order]
    paired = variant_difference(table, ("A", "single model"), ("B", "single model"))
    reference = paired_bootstrap_difference(singles, other)

    def same(x, y):
        fields = ("difference", "low", "high")
        assert [getattr(x, f) for f in fields] == pytest.approx([getattr(y, f) for f in fields])
        assert (x.num_seeds, x.num_images) == (y.num_seeds, y.num_images)

    same(paired, reference)
    tiled = variant_difference(table, ("A", "single model"), ("A", "ensemble of 3"))
    same(tiled, paired_bootstrap_difference(singles, np.tile(ensemble, (3, 1))))
    expected = np.mean(ensemble) - np.mean(np.nanmean(singles, axis=1))
    assert tiled.difference == pytest.approx(expected)
    printed = variant_table(table, [(("A", "single model"), ("A", "ensemble of 3"))])
    assert printed["difference"].item() == round(tiled.difference, 3)
    with pytest.raises(ValueError, match="No per-image rows"):
        variant_difference(table, ("A", "single model"), ("C", "single model"))


def test_variant_plot_draws_each_seed_the_mean_and_an_ensemble_diamond():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from retinanet_lib.viz import plot_image_probabilities, plot_variant_scores

    variants = pd.DataFrame(
        {
            "arm": ["A"] * 4,
            "variant": ["single model"] * 3 + ["ensemble of 3"],
            "seeds": ["0", "1", "2", "0+1+2"],
            "test_rsna_metric": [0.5, 0.6, 0.7, 0.75],
        }
    )
    fig, ax = plt.subplots()
    plot_variant_scores(ax, variants, ["A"], ["single model", "ensemble of 3"])
    lines = {line.get_marker(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["o"].get_xdata(), [0.5, 0.6, 0.7])
    np.testing.assert_allclose(lines["|"].get_xdata(), [0.6])
    np.testing.assert_allclose(lines["D"].get_xdata(), [0.75])
    assert lines["D"].get_ydata()[0] == 1  # second row
    fig2, ax2 = plt.subplots()
    plot_image_probabilities(ax2, [0.1, 0.2, 0.9, 0.8, 0.95], [0, 0, 1, 1, 1], gate=0.5)
    labels = [text.get_text() for text in ax2.get_legend().get_texts()]
    assert labels == ["no opacity (2)", "opacity (3)", "gate 0.50"]
    plt.close(fig)
    plt.close(fig2)
