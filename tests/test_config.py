import dataclasses
import json
import math

import pytest

from retinanet_lib.config import (
    BACKGROUND_CLASS,
    IGNORE_CLASS,
    AnchorConfig,
    EncoderConfig,
    RetinaNetConfig,
)


def test_defaults_follow_the_paper():
    cfg = RetinaNetConfig()
    assert cfg.anchors.levels == (3, 4, 5, 6, 7)
    assert cfg.anchors.strides == (8, 16, 32, 64, 128)
    assert [b * b for b in cfg.anchors.base_sizes] == [32**2, 64**2, 128**2, 256**2, 512**2]
    assert cfg.anchors.aspect_ratios == (0.5, 1.0, 2.0)
    assert cfg.anchors.scales == pytest.approx((1.0, 2 ** (1 / 3), 2 ** (2 / 3)))
    assert cfg.anchors.num_anchors_per_location == 9
    assert (cfg.encoder.match_iou, cfg.encoder.ignore_iou) == (0.5, 0.4)
    assert cfg.encoder.box_variance == (0.1, 0.1, 0.2, 0.2)
    assert BACKGROUND_CLASS == -1 and IGNORE_CLASS == -2


def test_round_trip_through_json():
    cfg = RetinaNetConfig(image_size=256, encoder=EncoderConfig(match_low_quality=True))
    restored = RetinaNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert restored == cfg
    assert isinstance(restored.anchors.levels, tuple)


def test_config_is_frozen():
    cfg = RetinaNetConfig()
    with pytest.raises(AttributeError):
        cfg.image_size = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"levels": (3, 4), "base_sizes": (32.0,)},
        {"levels": (4, 3), "base_sizes": (32.0, 64.0)},
        {"aspect_ratios": (0.5, -1.0)},
        {"scales": ()},
        {"base_sizes": (32.0, 64.0, math.inf, 256.0, 512.0)},
    ],
)
def test_bad_anchor_config_raises(kwargs):
    with pytest.raises(ValueError):
        AnchorConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"match_iou": 0.3, "ignore_iou": 0.4},
        {"ignore_iou": 0.0},
        {"box_variance": (0.1, 0.1, 0.2)},
        {"box_variance": (0.1, 0.0, 0.2, 0.2)},
    ],
)
def test_bad_encoder_config_raises(kwargs):
    with pytest.raises(ValueError):
        EncoderConfig(**kwargs)


def test_bad_top_level_values_raise():
    with pytest.raises(ValueError):
        RetinaNetConfig(image_size=0)
    with pytest.raises(ValueError):
        RetinaNetConfig(num_classes=0)
    with pytest.raises(ValueError, match="Unknown"):
        RetinaNetConfig.from_dict({"image_sise": 3})


def test_run_mode_switch(monkeypatch):
    from retinanet_lib.config import RUN_MODE_ENV, config_for_mode, run_mode_from_env

    monkeypatch.delenv(RUN_MODE_ENV, raising=False)
    assert run_mode_from_env() == "cpu"
    monkeypatch.setenv(RUN_MODE_ENV, " FULL ")
    assert run_mode_from_env() == "full"
    monkeypatch.setenv(RUN_MODE_ENV, "gpu")
    with pytest.raises(ValueError, match="RETINANET_MODE"):
        run_mode_from_env()
    assert config_for_mode("cpu").image_size == 256
    assert config_for_mode("full").image_size == 512
    with pytest.raises(ValueError):
        config_for_mode("fast")


def test_describe_setup_reads_the_blogs_schedule_in_epochs():
    from retinanet_lib.config import config_for_mode, describe_setup

    blog = describe_setup(config_for_mode("full"))
    # Rates drop every 5 epochs: they start at epochs 1, 6, 11, 16 and 21 of 25.
    assert (
        blog["learning rate from epoch"]
        == "5e-4 (1), 5e-5 (6), 2.5e-5 (11), 2.5e-6 (16), 1e-6 (21)"
    )
    assert blog["backbone"] == "resnet50, ImageNet weights"
    assert blog["backbone trained"] == "no (frozen)"
    assert blog["optimizer"] == "SGD, momentum 0.9" and blog["batch size"] == "1"
    assert (blog["input size"], blog["epochs"]) == ("512 x 512 px", "25")
    assert blog["augmentation"] == "none"  # the blog trained without augmentation
    cpu = describe_setup(config_for_mode("cpu"))
    assert cpu["backbone trained"] == "yes" and cpu["optimizer"] == "Adam"
    assert cpu["augmentation"] == "horizontal flips, rotations up to 5 degrees, shifts up to 6%"


def test_long_setup_text_is_shown_in_full_in_the_chapters():
    import pandas as pd

    from retinanet_lib.config import config_for_mode, describe_setup
    from retinanet_lib.notebook import setup_notebook

    with pd.option_context("display.max_colwidth", 50):
        setup_notebook()
        table = pd.DataFrame({"blog": describe_setup(config_for_mode("full"))})
        assert "1e-6 (21)" in repr(table)  # pandas' default width cut it at "..."


def test_with_score_threshold_changes_only_the_threshold():
    cfg = RetinaNetConfig(image_size=256)
    changed = cfg.with_score_threshold(0.35)
    assert changed.decode.score_threshold == 0.35 and cfg.decode.score_threshold == 0.05
    assert dataclasses.replace(changed, decode=cfg.decode) == cfg


def test_replace_section_changes_one_section_only():
    from retinanet_lib.config import config_for_mode, replace_section

    cfg = config_for_mode("cpu")
    changed = replace_section(cfg, "train", epochs=3, seed=5)
    assert (changed.train.epochs, changed.train.seed) == (3, 5)
    assert changed.train.learning_rates == cfg.train.learning_rates
    assert (changed.model, changed.data, changed.loss) == (cfg.model, cfg.data, cfg.loss)
    assert cfg.train.epochs != 3  # the original is left alone
    with pytest.raises(TypeError):
        replace_section(cfg, "train", no_such_field=1)


@pytest.mark.parametrize("test_fraction", [-0.1, 0.8, 0.9])
def test_the_held_out_test_share_must_leave_training_patients(test_fraction):
    from retinanet_lib.config import DataConfig

    with pytest.raises(ValueError, match="test_fraction"):
        DataConfig(validation_fraction=0.2, test_fraction=test_fraction)
    assert DataConfig(validation_fraction=0.2, test_fraction=0.79).test_fraction == 0.79


def test_the_smoke_setting_changes_only_full_mode_and_only_when_asked(monkeypatch):
    from retinanet_lib.config import SMOKE_ENV, config_for_mode, smoke_from_env

    monkeypatch.delenv(SMOKE_ENV, raising=False)
    assert smoke_from_env() is None
    blog, cpu = config_for_mode("full"), config_for_mode("cpu")
    assert (blog.model.backbone_weights, blog.train.epochs) == ("imagenet", 25)
    monkeypatch.setenv(SMOKE_ENV, "1")
    smoke = config_for_mode("full")
    assert (smoke.model.backbone_weights, smoke.train.epochs) == (None, 1)
    assert smoke.model.backbone == "resnet50" and smoke.image_size == 512  # the architecture
    assert config_for_mode("cpu") == cpu  # the CPU default ignores it
    monkeypatch.setenv(SMOKE_ENV, "0")
    assert config_for_mode("full") == blog
    monkeypatch.setenv(SMOKE_ENV, "yes")
    with pytest.raises(ValueError, match="RETINANET_SMOKE"):
        smoke_from_env()
