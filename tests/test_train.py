import dataclasses
import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from retinanet_lib.config import RetinaNetConfig, TrainConfig, config_for_mode
from retinanet_lib.train import (
    BEST_WEIGHTS,
    CONFIG_FILE,
    LOCK_FILE,
    NanLossError,
    RunFinishedError,
    RunFolderBusyError,
    RunMismatchError,
    StopOnNaN,
    finished_run,
    fit_retinanet,
    learning_rate_schedule,
    load_trained_model,
    make_optimizer,
    read_run,
    save_score_threshold,
)

from .helpers import bright_squares, interrupt_after_epoch

TINY = dataclasses.replace(
    config_for_mode("cpu"),
    image_size=64,
    train=TrainConfig(epochs=3, batch_size=2, optimizer="adam", learning_rates=(3e-3,)),
)


def test_blog_schedule_values_at_each_boundary():
    schedule = learning_rate_schedule(TrainConfig(), steps_per_epoch=100)
    expected = {
        0: 5e-4,
        499: 5e-4,
        500: 5e-5,
        999: 5e-5,
        1000: 2.5e-5,
        1500: 2.5e-6,
        2000: 1e-6,
        2499: 1e-6,
        10_000: 1e-6,
    }
    for step, value in expected.items():
        assert float(schedule(step)) == pytest.approx(value, rel=1e-6), step
    single = learning_rate_schedule(TrainConfig(learning_rates=(1e-3,)), 10)
    assert float(single(0)) == float(single(10**6)) == pytest.approx(1e-3)
    with pytest.raises(ValueError):
        learning_rate_schedule(TrainConfig(), 0)


def test_optimizers():
    assert isinstance(make_optimizer(TrainConfig(), 10), keras.optimizers.SGD)
    assert isinstance(make_optimizer(TrainConfig(optimizer="adam"), 10), keras.optimizers.Adam)
    with pytest.raises(ValueError):
        TrainConfig(optimizer="rmsprop")


def tiny_datasets(cfg, num_images=8, seed=0):
    """Images with one bright square each; targets from the real encoder."""
    images, targets = bright_squares(cfg, num_images, seed)
    dataset = tf.data.Dataset.from_tensor_slices((images, targets))
    return dataset.batch(cfg.train.batch_size), dataset.batch(cfg.train.batch_size)


def test_training_lowers_the_loss_and_keeps_best_weights(tmp_path):
    keras.utils.set_random_seed(0)
    train, val = tiny_datasets(TINY)
    cfg = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, epochs=12))
    result = fit_retinanet(cfg, train, val, tmp_path, verbose=0)
    losses = result.history["loss"]
    assert losses[-1] < 0.7 * losses[0]
    assert (tmp_path / BEST_WEIGHTS).is_file() and (tmp_path / "history.csv").is_file()
    assert (tmp_path / "logs").is_dir()
    saved = RetinaNetConfig.from_dict(json.loads((tmp_path / CONFIG_FILE).read_text()))
    assert saved == cfg
    model, loaded_cfg = load_trained_model(tmp_path)
    images = next(iter(val))[0]
    np.testing.assert_allclose(model(images), result.model(images), rtol=1e-5, atol=1e-5)
    assert loaded_cfg.model.backbone_weights is None


class _EpochRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_interrupted_run_resumes_from_the_saved_epoch(tmp_path):
    keras.utils.set_random_seed(0)
    train, val = tiny_datasets(TINY)
    cfg = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, epochs=4))
    with pytest.raises(KeyboardInterrupt):
        fit_retinanet(
            cfg,
            train,
            val,
            tmp_path,
            verbose=0,
            tensorboard=False,
            extra_callbacks=[interrupt_after_epoch(1)],
        )
    recorder = _EpochRecorder()
    result = fit_retinanet(
        cfg, train, val, tmp_path, verbose=0, tensorboard=False, extra_callbacks=[recorder]
    )
    assert recorder.epochs == [2, 3]  # epochs 0 and 1 were done before the interruption
    assert len(result.history["loss"]) == 4  # the whole run, read back from history.csv
    history = pd.read_csv(tmp_path / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2, 3]  # no epoch logged twice


def test_finished_run_is_not_trained_again_unless_asked(tmp_path):
    keras.utils.set_random_seed(0)
    train, val = tiny_datasets(TINY)
    cfg = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, epochs=2))
    fit_retinanet(cfg, train, val, tmp_path, verbose=0, tensorboard=False)
    run = read_run(tmp_path)
    assert run["epochs"] == 2 and run["best_epoch"] in (1, 2)
    with pytest.raises(RunFinishedError, match="finished run of 2 epochs"):
        fit_retinanet(cfg, train, val, tmp_path, verbose=0, tensorboard=False)
    # More epochs continue the run where it stopped (optimizer state included).
    recorder = _EpochRecorder()
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=3))
    fit_retinanet(
        longer, train, val, tmp_path, verbose=0, tensorboard=False, extra_callbacks=[recorder]
    )
    assert recorder.epochs == [2]
    assert pd.read_csv(tmp_path / "history.csv")["epoch"].tolist() == [0, 1, 2]
    assert read_run(tmp_path)["epochs"] == 3
    # Another config is refused; overwrite starts afresh.
    other = dataclasses.replace(longer, image_size=32)
    with pytest.raises(RunMismatchError):
        fit_retinanet(other, train, val, tmp_path, verbose=0, tensorboard=False)
    recorder = _EpochRecorder()
    fit_retinanet(
        longer,
        train,
        val,
        tmp_path,
        verbose=0,
        tensorboard=False,
        overwrite=True,
        extra_callbacks=[recorder],
    )
    assert recorder.epochs == [0, 1, 2]
    assert len(pd.read_csv(tmp_path / "history.csv")) == 3


def test_a_notebook_run_again_reads_its_finished_run_back_or_resumes(tmp_path):
    """Chapter 5 in full mode: executed again after a disconnect, or after training ended."""
    keras.utils.set_random_seed(0)
    train, val = tiny_datasets(TINY)
    cfg = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, epochs=3))
    assert finished_run(tmp_path, cfg) is None  # nothing there yet

    def chapter_cell(*callbacks):  # Chapter 5's training cell, in full mode
        return fit_retinanet(
            cfg,
            train,
            val,
            tmp_path,
            verbose=0,
            tensorboard=False,
            reuse_finished=True,
            extra_callbacks=list(callbacks),
        )

    with pytest.raises(KeyboardInterrupt):  # the disconnect, after 2 of 3 epochs
        chapter_cell(interrupt_after_epoch(1))
    assert finished_run(tmp_path, cfg) is None  # interrupted: not finished
    recorder = _EpochRecorder()
    first = chapter_cell(recorder)
    assert recorder.epochs == [2]  # resumed, not restarted
    recorder = _EpochRecorder()
    again = chapter_cell(recorder)
    assert recorder.epochs == [] and again.seconds == 0.0  # read back, nothing trained
    assert again.history == first.history and len(again.history["loss"]) == 3
    images = next(iter(val))[0]
    np.testing.assert_allclose(again.model(images), first.model(images), rtol=1e-5, atol=1e-5)
    other = dataclasses.replace(cfg, image_size=32)
    with pytest.raises(RunMismatchError):
        finished_run(tmp_path, other)


def test_a_run_folder_in_use_by_another_process_is_refused(tmp_path):
    """A second process must not train in a folder where another one is training."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                from pathlib import Path
                from retinanet_lib.train import run_folder_lock
                with run_folder_lock(Path({str(tmp_path)!r})):
                    print("holding", flush=True)
                    input()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        train, val = tiny_datasets(TINY)
        cfg = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, epochs=1))
        with pytest.raises(RunFolderBusyError, match=f"PID {holder.pid}"):
            fit_retinanet(cfg, train, val, tmp_path, verbose=0, tensorboard=False)
        assert not (tmp_path / CONFIG_FILE).exists()  # refused before touching the folder
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    # Released: now it trains there, and holds the folder only while it does.
    fit_retinanet(cfg, train, val, tmp_path, verbose=0, tensorboard=False)
    assert (tmp_path / BEST_WEIGHTS).is_file() and (tmp_path / LOCK_FILE).is_file()


class _StepRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = []

    def on_epoch_end(self, epoch, logs=None):
        self.steps.append(int(self.model.optimizer.iterations.numpy()))


def test_keras_counts_one_step_more_per_epoch_when_the_data_has_no_known_length(tmp_path):
    """Pins a Keras 3 behaviour that every stored result was trained with (Chapter 5): on a
    training dataset of unknown length (`train_retinanet` filters out unreadable files),
    `optimizer.iterations` advances once more per epoch than there are batches, so the
    step-based schedule moves one step earlier per epoch. If a Keras upgrade changes this,
    this test fails, and the studies' numbers will no longer reproduce."""
    cfg = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, epochs=2))
    steps = {}
    for name, unknown_length in (("known", False), ("unknown", True)):
        keras.utils.set_random_seed(0)
        train, val = tiny_datasets(cfg)  # 8 images, batch 2: 4 batches per epoch
        if unknown_length:
            train = train.filter(lambda images, targets: True)
            assert int(train.cardinality()) == tf.data.UNKNOWN_CARDINALITY
        recorder = _StepRecorder()
        fit_retinanet(
            cfg,
            train,
            val,
            tmp_path / name,
            steps_per_epoch=4,
            verbose=0,
            tensorboard=False,
            extra_callbacks=[recorder],
        )
        steps[name] = recorder.steps
    assert steps == {"known": [4, 8], "unknown": [5, 10]}


def test_a_resumed_run_keeps_its_best_checkpoint(tmp_path):
    """After a resume, a worse epoch must not replace the best weights saved earlier."""
    keras.utils.set_random_seed(0)
    train, val = tiny_datasets(TINY)
    cfg = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, epochs=2))
    fit_retinanet(cfg, train, val, tmp_path, verbose=0, tensorboard=False)
    best_before = (tmp_path / BEST_WEIGHTS).read_bytes()
    history = pd.read_csv(tmp_path / "history.csv")
    history["val_loss"] = -1.0  # pretend the earlier epochs were unbeatable
    history.to_csv(tmp_path / "history.csv", index=False)
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=3))
    fit_retinanet(longer, train, val, tmp_path, verbose=0, tensorboard=False)
    assert (tmp_path / BEST_WEIGHTS).read_bytes() == best_before


def test_warmup_ramps_linearly_into_the_schedule():
    cfg = TrainConfig(learning_rates=(1e-3, 1e-4), epochs_per_drop=2, warmup_epochs=1.0)
    schedule = learning_rate_schedule(cfg, steps_per_epoch=10)
    values = [float(schedule(step)) for step in (0, 4, 9, 10, 19, 20)]
    np.testing.assert_allclose(values, [1e-4, 5e-4, 1e-3, 1e-3, 1e-3, 1e-4], rtol=1e-5)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert float(restored(4)) == pytest.approx(5e-4)
    with pytest.raises(ValueError):
        TrainConfig(warmup_epochs=-1.0)


def test_saved_score_threshold_travels_with_the_run(tmp_path):
    keras.utils.set_random_seed(0)
    train, val = tiny_datasets(TINY)
    cfg = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, epochs=1))
    fit_retinanet(cfg, train, val, tmp_path, verbose=0, tensorboard=False)
    _, loaded = load_trained_model(tmp_path)
    assert loaded.decode.score_threshold == cfg.decode.score_threshold  # none saved yet
    save_score_threshold(tmp_path, 0.35, "a test")
    _, loaded = load_trained_model(tmp_path)
    assert loaded.decode.score_threshold == 0.35
    assert json.loads((tmp_path / "score_threshold.json").read_text())["chosen_on"] == "a test"


def test_nan_loss_stops_with_a_clear_error():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss=lambda y, p: p * float("nan"))
    with pytest.raises(NanLossError, match="learning rate"):
        model.fit(np.ones((4, 1)), np.ones((4, 1)), epochs=1, verbose=0, callbacks=[StopOnNaN()])


def test_load_trained_model_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_trained_model(tmp_path)


def test_mirrored_strategy_on_two_logical_cpus_runs_a_step():
    """A fresh process (logical devices must be set before TensorFlow starts)."""
    script = textwrap.dedent(
        """
        import dataclasses, numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from retinanet_lib.anchors import num_anchors
        from retinanet_lib.config import TrainConfig, config_for_mode
        from retinanet_lib.losses import RetinaNetLoss
        from retinanet_lib.model import build_retinanet
        from retinanet_lib.train import make_optimizer
        cfg = dataclasses.replace(config_for_mode("cpu"), image_size=64,
                                  train=TrainConfig(batch_size=4, optimizer="adam"))
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            model = build_retinanet(cfg)
            model.compile(optimizer=make_optimizer(cfg.train, 1), loss=RetinaNetLoss())
        images = np.zeros((4, 64, 64, 3), np.float32)
        count = num_anchors(64, 64, cfg.anchors)
        targets = np.concatenate([np.zeros((4, count, 4)), -np.ones((4, count, 1))], -1)
        data = tf.data.Dataset.from_tensor_slices((images, targets.astype(np.float32))).batch(4)
        history = model.fit(data, epochs=1, verbose=0)
        print("replicas", strategy.num_replicas_in_sync, "loss", history.history["loss"][0])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas 2" in result.stdout
    loss = float(result.stdout.split("loss")[-1])
    assert np.isfinite(loss)


def test_disk_cache_is_written_in_the_run_folder(tmp_path):
    from retinanet_lib.config import DataConfig, SyntheticConfig
    from retinanet_lib.splits import load_splits
    from retinanet_lib.synthetic import write_synthetic_rsna
    from retinanet_lib.train import train_retinanet

    write_synthetic_rsna(tmp_path / "data", SyntheticConfig(num_train=8, num_test=1), False)
    cfg = dataclasses.replace(
        TINY,
        data=DataConfig(image_cache="disk"),
        train=dataclasses.replace(TINY.train, epochs=2, batch_size=4),
    )
    splits = load_splits("cpu", cfg, data_root=tmp_path / "data")
    train_retinanet(cfg, splits.train, splits.validation, tmp_path / "run", verbose=0)
    cached = sorted(p.name for p in (tmp_path / "run" / "cache").iterdir())
    assert any(
        name.startswith("train_64px_clahe2x8") and name.endswith(".index") for name in cached
    )
    assert any(name.startswith("val_64px") for name in cached)
    assert not any(name.endswith(".lockfile") for name in cached)
    assert config_for_mode("full").data.image_cache == "disk"


class _BatchCounter(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = []

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.append(0)

    def on_train_batch_end(self, batch, logs=None):
        self.batches[-1] += 1


def test_rebalanced_training_keeps_the_epoch_length(tmp_path):
    """The endless rebalanced stream is cut into epochs of as many batches as the natural
    mix gives, and its two group caches fill completely (no lock file left)."""
    from retinanet_lib.config import DataConfig, SyntheticConfig
    from retinanet_lib.pipeline import num_batches
    from retinanet_lib.splits import load_splits
    from retinanet_lib.synthetic import write_synthetic_rsna
    from retinanet_lib.train import train_retinanet

    data = SyntheticConfig(num_train=12, num_test=1, positive_fraction=0.5)
    write_synthetic_rsna(tmp_path / "data", data, False)
    cfg = dataclasses.replace(
        TINY,
        data=DataConfig(image_cache="disk", positive_image_fraction=0.5),
        train=dataclasses.replace(TINY.train, epochs=2, batch_size=4),
    )
    splits = load_splits("cpu", cfg, data_root=tmp_path / "data")
    counter = _BatchCounter()
    result = train_retinanet(
        cfg,
        splits.train,
        splits.validation,
        tmp_path / "run",
        verbose=0,
        extra_callbacks=[counter],
    )
    assert counter.batches == [num_batches(len(splits.train), 4, training=True)] * 2
    assert len(result.history["val_loss"]) == 2
    cached = sorted(p.name for p in (tmp_path / "run" / "cache").iterdir())
    for group in ("positive", "negative"):
        assert any(n.startswith("train_") and n.endswith(f"_{group}.index") for n in cached)
    assert not any(name.endswith(".lockfile") for name in cached)
