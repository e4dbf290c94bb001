"""Transfer learning: frozen stages, batch norm in inference mode, the backbone's own
learning rate (and its frozen epochs)."""

import dataclasses

import keras
import numpy as np
import pytest

from retinanet_lib.config import ModelConfig, TrainConfig, config_for_mode
from retinanet_lib.model import backbone_of, build_backbone, build_retinanet
from retinanet_lib.optimizers import BackboneRateAdam, BackboneRateSGD, make_optimizer

CPU = config_for_mode("cpu")
SMALL = dataclasses.replace(CPU, image_size=64)


def _count(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


def test_frozen_stages_freeze_exactly_their_layers():
    model_cfg = dataclasses.replace(CPU.model, frozen_backbone_stages=("stem", "c2", "c3"))
    backbone = build_backbone(model_cfg, (64, 64, 3))
    everything = build_backbone(CPU.model, (64, 64, 3))
    frozen_by_hand = [
        w
        for layer in everything.layers
        if layer.name.split("_")[0] in ("stem", "c2", "c3")
        for w in layer.trainable_weights
    ]
    assert _count(frozen_by_hand) > 0
    assert _count(backbone.trainable_weights) == (
        _count(everything.trainable_weights) - _count(frozen_by_hand)
    )
    assert all(layer.trainable for layer in backbone.layers if layer.name.startswith("c5_"))


def test_a_misspelt_stage_is_an_error():
    model_cfg = dataclasses.replace(CPU.model, frozen_backbone_stages=("conv3",))
    with pytest.raises(ValueError, match="stage 'conv3'.*c2"):
        build_backbone(model_cfg, (64, 64, 3))


def _moving_means(model):
    backbone = backbone_of(model)
    return [v.numpy().copy() for v in backbone.non_trainable_variables if "moving_mean" in v.path]


@pytest.mark.parametrize("frozen_batchnorm", [False, True])
def test_freeze_backbone_batchnorm_keeps_batch_norm_statistics(frozen_batchnorm):
    cfg = dataclasses.replace(
        SMALL, model=dataclasses.replace(CPU.model, freeze_backbone_batchnorm=frozen_batchnorm)
    )
    keras.utils.set_random_seed(0)
    model = build_retinanet(cfg)
    before = _moving_means(model)
    images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
    model(images, training=True)
    after = _moving_means(model)
    changed = [not np.array_equal(a, b) for a, b in zip(before, after, strict=True)]
    assert len(changed) > 0
    assert not any(changed) if frozen_batchnorm else all(changed)


def _toy(seed=0):
    """A two-layer model whose first layer plays the backbone."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, name="backbone_dense")(inputs)
    outputs = keras.layers.Dense(1, name="head_dense")(hidden)
    return keras.Model(inputs, outputs)


def _train_steps(model, optimizer, steps):
    x = np.random.default_rng(1).normal(size=(8, 3)).astype("float32")
    y = np.random.default_rng(2).normal(size=(8, 1)).astype("float32")
    model.compile(optimizer=optimizer, loss="mse")
    for _ in range(steps):
        model.train_on_batch(x, y)


def _reference(optimizer_class, rate, steps, **kwargs):
    """Each layer trained by its own plain optimizer at its own rate, gradients of the
    same joint loss: the slow, obvious version of one optimizer with two rates."""
    import tensorflow as tf

    model = _toy()
    x = tf.constant(np.random.default_rng(1).normal(size=(8, 3)).astype("float32"))
    y = tf.constant(np.random.default_rng(2).normal(size=(8, 1)).astype("float32"))
    backbone, head = model.get_layer("backbone_dense"), model.get_layer("head_dense")
    optimizers = {
        id(backbone): optimizer_class(learning_rate=rate * 0.1, **kwargs),
        id(head): optimizer_class(learning_rate=rate, **kwargs),
    }
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - y))
        grads = tape.gradient(loss, backbone.trainable_variables + head.trainable_variables)
        optimizers[id(backbone)].apply(grads[:2], backbone.trainable_variables)
        optimizers[id(head)].apply(grads[2:], head.trainable_variables)
    return [w.numpy() for w in model.weights]


@pytest.mark.parametrize(
    ("kind", "plain", "kwargs"),
    [
        (BackboneRateAdam, keras.optimizers.Adam, {}),
        (BackboneRateSGD, keras.optimizers.SGD, {"momentum": 0.9}),
    ],
)
def test_backbone_trains_at_a_tenth_of_the_rate(kind, plain, kwargs):
    model = _toy()
    optimizer = kind(learning_rate=0.05, **kwargs)
    optimizer._set_backbone_rate(
        model.get_layer("backbone_dense").trainable_variables, 0.1, frozen_steps=0
    )
    _train_steps(model, optimizer, 5)
    expected = _reference(plain, 0.05, 5, **kwargs)
    for got, want in zip(model.weights, expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_backbone_is_frozen_for_its_first_steps_then_trains():
    model = _toy()
    start = [w.numpy().copy() for w in model.weights]
    optimizer = BackboneRateAdam(learning_rate=0.05)
    optimizer._set_backbone_rate(
        model.get_layer("backbone_dense").trainable_variables, 1.0, frozen_steps=3
    )
    _train_steps(model, optimizer, 3)
    backbone_kernel, head_kernel = model.weights[0].numpy(), model.weights[2].numpy()
    np.testing.assert_array_equal(backbone_kernel, start[0])
    assert not np.allclose(head_kernel, start[2])
    _train_steps(model, optimizer, 1)
    assert not np.allclose(model.weights[0].numpy(), start[0])


def test_make_optimizer_scales_the_backbone_only_when_asked():
    assert type(make_optimizer(TrainConfig(optimizer="adam"), 10)) is keras.optimizers.Adam
    scaled = TrainConfig(optimizer="adam", backbone_learning_rate_factor=0.1)
    with pytest.raises(ValueError, match="backbone's variables"):
        make_optimizer(scaled, 10)
    model = _toy()
    optimizer = make_optimizer(scaled, 10, model.get_layer("backbone_dense").trainable_variables)
    assert isinstance(optimizer, BackboneRateAdam)
    frozen = TrainConfig(epochs=5, backbone_frozen_epochs=2)
    assert frozen.scales_backbone_rate and not TrainConfig().scales_backbone_rate
    with pytest.raises(ValueError, match="backbone_frozen_epochs"):
        TrainConfig(epochs=5, backbone_frozen_epochs=5)
    with pytest.raises(ValueError, match="backbone_learning_rate_factor"):
        TrainConfig(backbone_learning_rate_factor=-1.0)
    assert ModelConfig(frozen_backbone_stages=["c2"]).frozen_backbone_stages == ("c2",)


def test_pretrained_backbone_round_trips_into_the_detector(tmp_path):
    from retinanet_lib.config import PretrainConfig, SyntheticConfig
    from retinanet_lib.pipeline import positive_image_mask
    from retinanet_lib.pretrain import (
        backbone_of_classifier,
        classification_dataset,
        load_pretrain_source,
        pretrain_backbone,
        read_provenance,
        save_backbone_weights,
    )

    source = SyntheticConfig(num_train=20, num_test=1, positive_fraction=0.5, seed=3)
    pretrain_cfg = PretrainConfig(source=source, epochs=2, batch_size=4)
    train, validation = load_pretrain_source(pretrain_cfg, tmp_path / "source")
    assert len(train) == 16 and len(validation) == 4
    labels = np.concatenate([y.numpy() for _, y in classification_dataset(train, SMALL, 4, False)])
    np.testing.assert_array_equal(labels[:, 0], positive_image_mask(train).astype("float32"))
    result = pretrain_backbone(SMALL, pretrain_cfg, train, validation)
    assert list(result.history.index) == [1, 2]
    assert np.isfinite(result.history["loss"]).all()
    path = save_backbone_weights(result, tmp_path / "b.weights.h5", {"source_data": "synthetic"})
    model_cfg = dataclasses.replace(SMALL.model, backbone_weights=str(path))
    loaded = build_backbone(model_cfg, (64, 64, 3))
    images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
    trained = backbone_of_classifier(result.classifier)
    for got, want in zip(loaded(images), trained(images), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    record = read_provenance(path)
    assert record["source_data"] == "synthetic" and record["validation"]["images"] == 4
    with pytest.raises(ValueError, match="weights.h5"):
        save_backbone_weights(result, tmp_path / "b.h5", {})


def test_shipped_weights_load_and_beat_the_majority_class():
    """The shipped backbone fits the CPU default, says where it came from, and its classifier
    scored above always answering the commoner label on its held-out source images."""
    from retinanet_lib.config import PretrainConfig
    from retinanet_lib.pretrain import SHIPPED_BACKBONE_WEIGHTS, read_provenance

    record = read_provenance(SHIPPED_BACKBONE_WEIGHTS)
    assert "not ImageNet" in record["source_data"]
    from retinanet_lib.config import SyntheticConfig

    assert SyntheticConfig(**record["pretrain_config"]["source"]) == PretrainConfig().source
    assert record["image_size"] == CPU.image_size
    share = PretrainConfig().source.positive_fraction
    assert record["validation"]["accuracy"] > max(share, 1 - share) + 0.1
    model_cfg = dataclasses.replace(CPU.model, backbone_weights="opacity")
    backbone = build_backbone(model_cfg, (CPU.image_size, CPU.image_size, 3))
    by_path = build_backbone(
        dataclasses.replace(CPU.model, backbone_weights=str(SHIPPED_BACKBONE_WEIGHTS)),
        (CPU.image_size, CPU.image_size, 3),
    )
    for mine, theirs in zip(backbone.weights, by_path.weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    fresh = build_backbone(CPU.model, (CPU.image_size, CPU.image_size, 3))
    assert not np.array_equal(backbone.weights[0].numpy(), fresh.weights[0].numpy())
    assert SHIPPED_BACKBONE_WEIGHTS.stat().st_size < 5e6
    assert len(backbone.outputs) == 3


def test_transfer_arms_train_the_parts_their_names_say():
    """Each arm of the transfer study, built: which backbone weights train, at what rate."""
    from data_scripts.run_studies import TRANSFER_ARMS
    from retinanet_lib.model import parameter_counts

    trainable = {}
    for name, make_cfg in TRANSFER_ARMS.items():
        cfg = make_cfg(CPU, None)
        model = build_retinanet(dataclasses.replace(cfg, image_size=64))
        trainable[name] = parameter_counts(model)["backbone"]["trainable"]
        fresh = name == "from scratch"
        assert (cfg.model.backbone_weights is None) == fresh, name
        assert cfg.model.freeze_backbone_batchnorm != fresh, name
        if "1/10" in name:
            assert cfg.train.backbone_learning_rate_factor == 0.1
        if "after 15" in name:
            assert cfg.train.backbone_frozen_epochs == 15 < cfg.train.epochs
    assert trainable["frozen backbone (level 2)"] == 0
    level3, level4 = (
        trainable["top stages unfrozen (level 3)"],
        trainable["fine-tuned, backbone at 1/10 rate (level 4)"],
    )
    assert 0 < level3 < level4 == trainable["blog: unfrozen from the start"]
    assert level4 < trainable["from scratch"]  # batch norm's scale and shift stay frozen


def test_precise_batchnorm_leaves_the_mean_of_the_batch_statistics():
    import tensorflow as tf

    from retinanet_lib.pretrain import (
        _batchnorm_layers,
        backbone_of_classifier,
        build_opacity_classifier,
        precise_batchnorm,
    )

    keras.utils.set_random_seed(0)
    classifier = build_opacity_classifier(SMALL)
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(4, 64, 64, 3)).astype("float32") + shift for shift in (0, 2)]
    dataset = tf.data.Dataset.from_tensor_slices((np.concatenate(batches), np.zeros((8, 1))))
    weights_before = [w.numpy().copy() for w in classifier.trainable_weights]
    assert precise_batchnorm(classifier, dataset.batch(4)) == 2
    backbone = backbone_of_classifier(classifier)
    stem = keras.Model(backbone.inputs, backbone.get_layer("stem_conv").output)
    expected_mean = np.mean([stem(b).numpy().mean(axis=(0, 1, 2)) for b in batches], axis=0)
    expected_var = np.mean([stem(b).numpy().var(axis=(0, 1, 2)) for b in batches], axis=0)
    stem_bn = backbone.get_layer("stem_bn")
    np.testing.assert_allclose(stem_bn.moving_mean.numpy(), expected_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stem_bn.moving_variance.numpy(), expected_var, rtol=1e-3)
    for before, after in zip(weights_before, classifier.trainable_weights, strict=True):
        np.testing.assert_array_equal(before, after.numpy())  # statistics only
    assert {layer.momentum for layer in _batchnorm_layers(classifier)} == {0.99}  # restored


def test_fit_keeps_the_backbone_still_for_its_frozen_epochs_then_trains_it(tmp_path):
    """Through the real training loop (`fit_retinanet`): with `backbone_frozen_epochs=1` the
    backbone's weights are unchanged after epoch 1 while the heads move, and change in
    epoch 2; batch normalisation frozen, so nothing moves its statistics either."""
    from retinanet_lib.train import fit_retinanet

    from .test_train import TINY, tiny_datasets

    cfg = dataclasses.replace(
        TINY,
        model=dataclasses.replace(TINY.model, freeze_backbone_batchnorm=True),
        train=dataclasses.replace(TINY.train, epochs=2, backbone_frozen_epochs=1),
    )
    snapshots = []

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            backbone = backbone_of(self.model)
            head = self.model.get_layer("class_head")
            snapshots.append(
                ([w.numpy().copy() for w in backbone.weights], head.weights[0].numpy().copy())
            )

    keras.utils.set_random_seed(0)
    train, val = tiny_datasets(cfg)
    start = build_retinanet(cfg)  # the same seed builds the same initial weights
    keras.utils.set_random_seed(0)
    fit_retinanet(cfg, train, val, tmp_path, verbose=0, extra_callbacks=[Snapshot()])
    initial = [w.numpy() for w in backbone_of(start).weights]
    (after_1, head_1), (after_2, _) = snapshots
    for before, after in zip(initial, after_1, strict=True):
        np.testing.assert_array_equal(before, after)
    assert not np.array_equal(head_1, start.get_layer("class_head").weights[0].numpy())
    assert any(not np.array_equal(a, b) for a, b in zip(after_1, after_2, strict=True))


def test_transfer_configs_change_only_what_each_level_names():
    from retinanet_lib.config import config_for_mode
    from retinanet_lib.pretrain import transfer_configs

    cfg = config_for_mode("cpu")
    arms = transfer_configs(cfg)
    assert list(arms) == [
        "from scratch",
        "frozen backbone (level 2)",
        "top stages unfrozen (level 3)",
        "fine-tuned, backbone at 1/10 rate (level 4)",
        "blog: unfrozen from the start",
        "blog: unfrozen after 15 epochs",
    ]
    assert arms["from scratch"] == cfg
    for name, arm in list(arms.items())[1:]:
        assert arm.model.backbone_weights == "opacity", name
        assert arm.model.freeze_backbone_batchnorm, name
        assert (arm.data, arm.anchors, arm.loss) == (cfg.data, cfg.anchors, cfg.loss), name
        assert (arm.train.epochs, arm.train.learning_rates) == (
            cfg.train.epochs,
            cfg.train.learning_rates,
        ), name  # the same budget for every level
    assert arms["frozen backbone (level 2)"].model.freeze_backbone
    assert arms["top stages unfrozen (level 3)"].model.frozen_backbone_stages == (
        "stem",
        "c2",
        "c3",
    )
    assert (
        arms["fine-tuned, backbone at 1/10 rate (level 4)"].train.backbone_learning_rate_factor
        == 0.1
    )
    unfrozen = arms["blog: unfrozen from the start"]
    assert not unfrozen.model.freeze_backbone and not unfrozen.model.frozen_backbone_stages
    assert unfrozen.train.backbone_learning_rate_factor == 1.0
    assert arms["blog: unfrozen after 15 epochs"].train.backbone_frozen_epochs == 15


def test_transfer_configs_refuse_a_backbone_without_shipped_weights():
    from retinanet_lib.config import config_for_mode
    from retinanet_lib.pretrain import transfer_configs

    with pytest.raises(ValueError, match="RETINANET_MODE=cpu"):
        transfer_configs(config_for_mode("full"))
