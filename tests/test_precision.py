"""Mixed precision, the linear scaling rule, and the backend-portable model + loss path."""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from retinanet_lib.anchors import generate_anchors, num_anchors
from retinanet_lib.config import (
    PRECISIONS,
    SyntheticConfig,
    TrainConfig,
    config_for_mode,
)
from retinanet_lib.inference import detect
from retinanet_lib.losses import RetinaNetLoss
from retinanet_lib.model import build_retinanet
from retinanet_lib.synthetic import write_synthetic_rsna
from retinanet_lib.targets import split_targets
from retinanet_lib.train import (
    PrecisionNotSupportedError,
    check_mixed_precision,
    fit_retinanet,
    learning_rate_schedule,
    make_optimizer,
)

from .helpers import bright_squares

ROOT = Path(__file__).resolve().parent.parent
SIZE = 64


def _tiny(precision: str = "float32", **train):
    base = config_for_mode("cpu")
    settings = dict(epochs=2, batch_size=4, optimizer="adam", learning_rates=(3e-3,))
    settings.update(train)
    return dataclasses.replace(
        base, image_size=SIZE, train=TrainConfig(mixed_precision=precision, **settings)
    )


def test_linear_scaling_rule_multiplies_every_rate_by_the_batch_ratio():
    blog = TrainConfig()  # batch 1, rates for batch 1, scaling off
    assert blog.effective_learning_rates == blog.learning_rates
    scaled = TrainConfig(batch_size=64, scale_learning_rate=True)
    np.testing.assert_allclose(
        scaled.effective_learning_rates, [64 * 5e-4, 64 * 5e-5, 64 * 2.5e-5, 64 * 2.5e-6, 64e-6]
    )
    cpu = config_for_mode("cpu").train  # rates tuned at batch 8: scaling to 8 changes nothing
    assert dataclasses.replace(cpu, scale_learning_rate=True).effective_learning_rates == (
        cpu.learning_rates
    )
    to_16 = dataclasses.replace(cpu, batch_size=16, scale_learning_rate=True)
    np.testing.assert_allclose(to_16.effective_learning_rates, [2e-3, 2e-4])
    # The schedule uses the scaled rates, after the warm-up.
    cfg = TrainConfig(
        batch_size=8, scale_learning_rate=True, learning_rates=(1e-3, 1e-4), epochs_per_drop=2
    )
    schedule = learning_rate_schedule(dataclasses.replace(cfg, warmup_epochs=1.0), 10)
    values = [float(schedule(step)) for step in (0, 9, 10, 19, 20)]
    np.testing.assert_allclose(values, [8e-4, 8e-3, 8e-3, 8e-3, 8e-4], rtol=1e-5)
    with pytest.raises(ValueError, match="base_batch_size"):
        TrainConfig(base_batch_size=0)
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainConfig(mixed_precision="float16")


def test_float16_gets_a_loss_scale_optimizer_and_bfloat16_does_not():
    for precision, wrapped in (
        ("float32", False),
        ("mixed_bfloat16", False),
        ("mixed_float16", True),
    ):
        optimizer = make_optimizer(TrainConfig(mixed_precision=precision), 10)
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer) is wrapped


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_model_computes_in_16_bits_and_outputs_float32(precision):
    model = build_retinanet(_tiny(precision))
    compute = precision.removeprefix("mixed_")
    fpn = model.get_layer("fpn")
    assert fpn.compute_dtype == compute and fpn.variable_dtype == "float32"
    assert model.get_layer("class_head").compute_dtype == compute
    assert model.get_layer("predictions").compute_dtype == "float32"
    assert model.output.dtype == "float32"
    assert all(w.dtype == "float32" for w in model.weights)
    # The global policy is restored: the next model built is float32.
    assert keras.config.dtype_policy().name == "float32"
    assert build_retinanet(_tiny()).get_layer("fpn").compute_dtype == "float32"


def _first_epochs(cfg, workdir):
    keras.utils.set_random_seed(0)
    images, targets = bright_squares(cfg)
    data = tf.data.Dataset.from_tensor_slices((images, targets)).batch(cfg.train.batch_size)
    return fit_retinanet(cfg, data, data, workdir, verbose=0, tensorboard=False), images


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_with_finite_losses_and_decodes_float32_boxes(precision, tmp_path):
    cfg = _tiny(precision, epochs=2)
    # Same seed, same weights: the loss differs from float32's only by 16-bit round-off.
    images, targets = bright_squares(cfg)
    loss = RetinaNetLoss(cfg.num_classes, cfg.loss)
    values = {}
    for name, run_cfg in (("float32", _tiny()), (precision, cfg)):
        keras.utils.set_random_seed(0)
        values[name] = float(loss(targets, build_retinanet(run_cfg)(images)))
    assert values[precision] == pytest.approx(values["float32"], rel=0.02)
    result, images = _first_epochs(cfg, tmp_path)
    losses = result.history["loss"] + result.history["val_loss"]
    assert np.isfinite(losses).all()
    predictions = result.model.predict(images[:2], verbose=0)
    assert predictions.dtype == np.float32
    detections = detect(predictions, generate_anchors(SIZE, SIZE, cfg.anchors), cfg)
    assert detections.boxes_xyxy.dtype == np.float32 and detections.scores.dtype == np.float32
    assert np.isfinite(detections.boxes_xyxy).all()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["train"]["mixed_precision"] == precision  # rebuilt as trained


def test_every_precision_is_supported_on_this_cpu():
    for precision in PRECISIONS:
        check_mixed_precision(precision)  # raises if not


def test_bfloat16_on_a_pre_ampere_gpu_is_a_clear_error(monkeypatch):
    fake_gpu = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")
    monkeypatch.setattr(
        tf.config, "list_physical_devices", lambda kind=None: [fake_gpu] if kind == "GPU" else []
    )
    monkeypatch.setattr(
        tf.config.experimental,
        "get_device_details",
        lambda device: {"device_name": "Tesla T4", "compute_capability": (7, 5)},
    )
    with pytest.raises(PrecisionNotSupportedError, match="Tesla T4.*7.5.*mixed_float16"):
        check_mixed_precision("mixed_bfloat16")
    check_mixed_precision("mixed_float16")  # float16 runs on a T4


def test_a_precision_that_fails_on_this_machine_is_a_clear_error(monkeypatch):
    def broken_conv(*args, **kwargs):
        raise tf.errors.NotFoundError(None, None, "No OpKernel was registered for Conv2D")

    monkeypatch.setattr(keras.layers, "Conv2D", broken_conv)
    with pytest.raises(PrecisionNotSupportedError, match="cannot train in mixed_float16"):
        check_mixed_precision("mixed_float16")


def test_split_targets_hand_values_and_shape_check():
    packed = np.array([[[0.1, 0.2, 0.3, 0.4, 0.0], [0.0, 0.0, 0.0, 0.0, -1.0]]], np.float32)
    boxes, classes = split_targets(packed)
    np.testing.assert_array_equal(boxes, packed[..., :4])
    np.testing.assert_array_equal(classes, [[0.0, -1.0]])
    assert boxes.dtype == "float32" and classes.shape == (1, 2)
    with pytest.raises(ValueError, match=r"\(\.\.\., A, 5\)"):
        split_targets(np.zeros((2, 4), np.float32))


_JAX_SCRIPT = textwrap.dedent(
    """
    import os, sys, json
    import numpy as np

    class NoTensorFlow:  # any import of TensorFlow on this path fails the test
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                raise ImportError("TensorFlow imported on the model + loss path: " + name)

    sys.meta_path.insert(0, NoTensorFlow())
    import keras
    from retinanet_lib.config import RetinaNetConfig
    from retinanet_lib.losses import RetinaNetLoss
    from retinanet_lib.model import build_retinanet

    folder = sys.argv[1]
    cfg = RetinaNetConfig.from_dict(json.load(open(os.path.join(folder, "config.json"))))
    model = build_retinanet(cfg)
    model.load_weights(os.path.join(folder, "model.weights.h5"))
    data = np.load(os.path.join(folder, "data.npz"))
    predictions = model.predict(data["images"], verbose=0)
    loss = RetinaNetLoss(cfg.num_classes, cfg.loss)
    parts = loss.components(data["targets"], predictions)
    np.savez(
        os.path.join(folder, "jax.npz"),
        predictions=np.asarray(predictions),
        loss=np.asarray(loss(data["targets"], predictions)),
        classification=np.asarray(parts["classification"]),
        box=np.asarray(parts["box"]),
    )
    print("backend", keras.backend.backend())
    """
)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_model_and_loss_run_on_jax_without_tensorflow_and_agree(tmp_path):
    cfg = _tiny()
    keras.utils.set_random_seed(3)
    model = build_retinanet(cfg)
    images, targets = bright_squares(cfg, num_images=3, seed=3)
    model.save_weights(tmp_path / "model.weights.h5")
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    np.savez(tmp_path / "data.npz", images=images, targets=targets)
    environment = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", _JAX_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "backend jax" in result.stdout
    jax = np.load(tmp_path / "jax.npz")
    predictions = model.predict(images, verbose=0)
    assert jax["predictions"].shape == (3, num_anchors(SIZE, SIZE, cfg.anchors), 5)
    np.testing.assert_allclose(jax["predictions"], predictions, rtol=1e-4, atol=1e-4)
    loss = RetinaNetLoss(cfg.num_classes, cfg.loss)
    parts = loss.components(targets, predictions)
    np.testing.assert_allclose(jax["classification"], parts["classification"], rtol=1e-4)
    np.testing.assert_allclose(jax["box"], parts["box"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(jax["loss"], float(loss(targets, predictions)), rtol=1e-4)
    assert float(np.max(parts["num_positives"])) > 0  # the box term was really exercised


@pytest.fixture(scope="module")
def tiny_rsna(tmp_path_factory):
    data = tmp_path_factory.mktemp("precision-data")
    write_synthetic_rsna(data, SyntheticConfig(num_train=20, num_test=2, seed=2), progress=False)
    return data


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_train_cli_batch_16_in_mixed_precision_logs_plain_lines(precision, tiny_rsna, tmp_path):
    """`train.py --batch-size 16 --mixed-precision P` on synthetic data, its output captured
    to a file as a scheduler would: one plain line per epoch, no carriage return, no colour."""
    log = tmp_path / "train.log"
    command = [sys.executable, str(ROOT / "data_scripts" / "train.py"), str(tmp_path / "run")]
    command += ["--epochs", "2", "--batch-size", "16", "--mixed-precision", precision]
    command += ["--scale-lr", "--warmup-epochs", "1", "--data-root", str(tiny_rsna)]
    command += ["--positive-image-fraction", "0.5"]  # balanced batches: an endless stream
    with log.open("w") as handle:
        result = subprocess.run(
            command, stdout=handle, stderr=subprocess.STDOUT, timeout=600, cwd=tmp_path
        )
    text = log.read_text()
    assert result.returncode == 0, text[-3000:]
    assert "\r" not in text and "\x1b" not in text
    assert "batch size 16, learning rates 0.002, 0.0002 (adam, warm-up 1 epochs), " in text
    assert f"precision {precision}" in text
    epoch_lines = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and "val_loss" in epoch_lines[-1]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert saved["mixed_precision"] == precision and saved["batch_size"] == 16
    assert saved["scale_learning_rate"] is True
    assert "balanced batches: 50% of the training images drawn have an opacity" in text
    data = json.loads((tmp_path / "run" / "config.json").read_text())["data"]
    assert data["positive_image_fraction"] == 0.5


def test_train_cli_names_a_setting_out_of_range(tmp_path):
    command = [sys.executable, str(ROOT / "data_scripts" / "train.py"), str(tmp_path / "run")]
    result = subprocess.run(
        [*command, "--positive-image-fraction", "1.5"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    assert "positive_image_fraction must lie in (0, 1)" in result.stderr
    assert "Traceback" not in result.stderr


def test_training_benchmark_times_each_setting_and_converts_to_hours(tmp_path):
    sys.path.insert(0, str(ROOT / "data_scripts"))
    import benchmark_training

    targets = benchmark_training.packed_targets(2, 100, num_positives=3)
    assert targets.shape == (2, 100, 5) and targets.dtype == np.float32
    assert (targets[:, :3, 4] == 0).all() and (targets[:, 3:, 4] == -1).all()
    assert not targets[..., :4].any()
    table = tmp_path / "timings.csv"
    arguments = ["--batch-sizes", "1", "2", "--precisions", "float32", "--steps", "1"]
    assert benchmark_training.main([*arguments, "--warmup", "1", "--csv", str(table)]) == 0
    rows = pd.read_csv(table)
    assert rows["batch"].tolist() == [1, 2] and (rows["precision"] == "float32").all()
    np.testing.assert_allclose(rows["images_per_s"], rows["batch"] / rows["step_s"], rtol=0.01)
    hours = 25 * benchmark_training.RSNA_TRAIN_IMAGES / rows["images_per_s"] / 3600
    np.testing.assert_allclose(rows["hours_25_epochs"], hours, rtol=0.01)
