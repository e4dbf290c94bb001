import dataclasses

import keras
import numpy as np
import pytest

from retinanet_lib.anchors import num_anchors
from retinanet_lib.config import PRIOR_PROBABILITY, ModelConfig, config_for_mode
from retinanet_lib.layers import FeaturePyramid, PredictionHead, prior_probability_bias
from retinanet_lib.model import (
    BackboneWeightsError,
    build_backbone,
    build_retinanet,
    parameter_counts,
    split_predictions,
)

CPU = config_for_mode("cpu")


def cpu_cfg(size: int):
    return dataclasses.replace(CPU, image_size=size)


@pytest.mark.parametrize("size", [128, 256, 512])
def test_output_shape_equals_anchor_count(size):
    model = build_retinanet(cpu_cfg(size))
    assert model.output_shape == (None, num_anchors(size, size, CPU.anchors), 5)


def test_non_multiple_input_size_still_lines_up():
    model = build_retinanet(cpu_cfg(100))
    out = model(np.zeros((1, 100, 100, 3), np.float32))
    assert out.shape == (1, num_anchors(100, 100, CPU.anchors), 5)


def test_initial_class_probability_and_biases():
    model = build_retinanet(cpu_cfg(128))
    images = np.random.default_rng(0).normal(size=(2, 128, 128, 3)).astype(np.float32)
    _, cls_logits = split_predictions(model(images))
    mean_prob = float(np.mean(1 / (1 + np.exp(-np.asarray(cls_logits)))))
    assert mean_prob == pytest.approx(PRIOR_PROBABILITY, rel=0.05)
    class_bias = model.get_layer("class_head").output_conv.bias.numpy()
    box_bias = model.get_layer("box_head").output_conv.bias.numpy()
    np.testing.assert_allclose(class_bias, prior_probability_bias(), rtol=1e-6)
    assert prior_probability_bias() == pytest.approx(-4.59512, rel=1e-5)
    np.testing.assert_array_equal(box_bias, 0.0)
    kernel = model.get_layer("class_head").hidden[0].kernel.numpy()
    assert kernel.std() == pytest.approx(0.01, rel=0.1)


def test_heads_are_shared_across_levels():
    model = build_retinanet(cpu_cfg(128))
    heads = [layer for layer in model.layers if isinstance(layer, PredictionHead)]
    assert sorted(h.name for h in heads) == ["box_head", "class_head"]
    channels, convs = CPU.model.fpn_channels, CPU.model.head_convs
    per_conv = 3 * 3 * channels * channels + channels
    expected_class = convs * per_conv + 3 * 3 * channels * 9 + 9
    assert parameter_counts(model)["class_head"]["trainable"] == expected_class


def test_frozen_backbone_has_no_trainable_weights():
    frozen = dataclasses.replace(CPU.model, freeze_backbone=True)
    backbone = build_backbone(frozen, (128, 128, 3))
    assert backbone.trainable_weights == []
    model = build_retinanet(dataclasses.replace(cpu_cfg(128), model=frozen))
    counts = parameter_counts(model)
    assert counts["backbone"]["trainable"] == 0 and counts["backbone"]["frozen"] > 0
    assert counts["fpn"]["trainable"] > 0


def test_resnet50_backbone_features_and_strides():
    cfg = ModelConfig(backbone="resnet50", backbone_weights=None)
    backbone = build_backbone(cfg, (128, 128, 3))
    shapes = [tuple(output.shape[1:]) for output in backbone.outputs]
    assert shapes == [(16, 16, 512), (8, 8, 1024), (4, 4, 2048)]
    assert backbone.trainable_weights == []  # frozen by default, as in the blog


def test_missing_weights_give_clear_errors(tmp_path):
    with pytest.raises(BackboneWeightsError, match="does not exist"):
        build_backbone(ModelConfig(backbone_weights=str(tmp_path / "nope.h5")), (64, 64, 3))
    with pytest.raises(BackboneWeightsError, match="no ImageNet weights"):
        build_backbone(
            ModelConfig(backbone="small_resnet", backbone_weights="imagenet"), (64, 64, 3)
        )


def test_imagenet_offline_error_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # no cached weights file
    try:
        build_backbone(ModelConfig(backbone="resnet50", backbone_weights="imagenet"), (64, 64, 3))
    except BackboneWeightsError as error:
        message = str(error)
        assert "backbone_weights" in message and "RETINANET_MODE=cpu" in message
    else:
        pytest.skip("ImageNet weights were downloadable here (online machine)")


def test_small_backbone_weights_round_trip(tmp_path):
    backbone = build_backbone(CPU.model, (64, 64, 3))
    path = tmp_path / "small.weights.h5"
    backbone.save_weights(path)
    reloaded = build_backbone(
        dataclasses.replace(CPU.model, backbone_weights=str(path)), (64, 64, 3)
    )
    for a, b in zip(backbone.weights, reloaded.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_layer_configs_list_every_argument_and_round_trip():
    pyramid = FeaturePyramid(channels=32, name="fpn_x")
    assert {"channels": 32, "name": "fpn_x"}.items() <= pyramid.get_config().items()
    assert FeaturePyramid.from_config(pyramid.get_config()).channels == 32
    head_kwargs = {"output_filters": 18, "channels": 16, "num_convs": 3, "bias_value": -2.5}
    head = PredictionHead(**head_kwargs, name="head_x")
    assert head_kwargs.items() <= head.get_config().items()
    rebuilt = PredictionHead.from_config(head.get_config())
    out = rebuilt(np.zeros((1, 5, 5, 8), np.float32))
    assert out.shape == (1, 5, 5, 18)
    np.testing.assert_allclose(rebuilt.output_conv.bias.numpy(), -2.5)


def test_fpn_shapes():
    c3, c4, c5 = (np.zeros((1, s, s, c), np.float32) for s, c in ((16, 8), (8, 16), (4, 32)))
    pyramid = FeaturePyramid(channels=12)([c3, c4, c5])
    assert [tuple(p.shape) for p in pyramid] == [
        (1, 16, 16, 12),
        (1, 8, 8, 12),
        (1, 4, 4, 12),
        (1, 2, 2, 12),
        (1, 1, 1, 12),
    ]


def test_model_saves_and_loads(tmp_path):
    model = build_retinanet(cpu_cfg(64))
    images = np.random.default_rng(1).normal(size=(1, 64, 64, 3)).astype(np.float32)
    path = tmp_path / "retinanet.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(restored(images), model(images), rtol=1e-5, atol=1e-5)


def test_split_predictions_and_bad_shape():
    boxes, logits = split_predictions(np.zeros((2, 7, 6), np.float32))
    assert boxes.shape == (2, 7, 4) and logits.shape == (2, 7, 2)
    with pytest.raises(ValueError):
        split_predictions(np.zeros((2, 7, 4), np.float32))


def test_backbone_channels_match_the_built_backbones():
    from retinanet_lib.model import backbone_channels, build_backbone

    for name in ("small_resnet", "resnet50"):
        cfg = ModelConfig(backbone=name, backbone_weights=None)
        outputs = build_backbone(cfg, (64, 64, 3)).outputs
        assert backbone_channels(cfg) == tuple(int(o.shape[-1]) for o in outputs)
