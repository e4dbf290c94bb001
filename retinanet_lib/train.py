"""Training: seeding, the learning-rate schedule, callbacks, and run folders safe to re-run.

`train_retinanet` turns records into the input pipeline (unreadable files skipped and
reported) and calls `fit_retinanet`, which builds the model inside a `tf.distribute` strategy
(several GPUs -> `MirroredStrategy`; otherwise the default strategy), compiles it with
`RetinaNetLoss`, and fits it with:

* `BackupAndRestore`: an interrupted run restarts from its last finished epoch (the backup is
  kept after the end, so a finished run can later be trained for more epochs);
* `ModelCheckpoint`: the weights with the lowest validation loss (the blog's choice) are kept in
  `best.weights.h5`, also across a resume;
* `CSVLogger` (`history.csv`, one row per epoch, never duplicated) and `TensorBoard` logs;
* `StopOnNaN`: a NaN or infinite loss stops training with an error saying what to try.

The run folder holds `config.json` (so `load_trained_model` rebuilds exactly that model),
`run.json` once training has finished, `score_threshold.json` once a threshold has been chosen
(`save_score_threshold`), and `rejects.csv` if files had to be skipped. Training into a folder
that holds a finished run raises `RunFinishedError`; a folder holding a run of another config
raises `RunMismatchError`; `overwrite=True` starts afresh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl  # POSIX: Linux, macOS, Colab
except ImportError:  # Windows: run folders are not locked
    fcntl = None

import keras
import pandas as pd
import tensorflow as tf

from retinanet_lib.config import RetinaNetConfig
from retinanet_lib.losses import RetinaNetLoss
from retinanet_lib.model import backbone_of, build_retinanet
from retinanet_lib.optimizers import LinearWarmup, learning_rate_schedule, make_optimizer
from retinanet_lib.pipeline import (
    CACHE_FOLDER,
    Records,
    cache_target,
    make_dataset,
    num_batches,
)
from retinanet_lib.rejects import REJECTS_FILE, RejectLog

__all__ = [
    "BEST_WEIGHTS",
    "CONFIG_FILE",
    "RUN_FILE",
    "THRESHOLD_FILE",
    "BadFileGuard",
    "EpochPrinter",
    "LinearWarmup",
    "NanLossError",
    "PrecisionNotSupportedError",
    "RunFinishedError",
    "RunMismatchError",
    "StopOnNaN",
    "TrainResult",
    "default_strategy",
    "finished_run",
    "fit_retinanet",
    "learning_rate_schedule",
    "check_mixed_precision",
    "load_trained_model",
    "make_optimizer",
    "read_run",
    "save_score_threshold",
    "set_seed",
    "train_retinanet",
]

BEST_WEIGHTS = "best.weights.h5"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
#: Written when training has finished: epochs, best epoch, best validation loss, time.
RUN_FILE = "run.json"
#: The score threshold chosen for this run (`save_score_threshold`), used by prediction.
THRESHOLD_FILE = "score_threshold.json"
_BACKUP_DIR = "backup"
#: Held by the process that trains in a run folder (its PID inside), see `run_folder_lock`.
LOCK_FILE = ".training.lock"
#: Everything a run writes; `overwrite=True` removes exactly these.
_RUN_ENTRIES = (
    BEST_WEIGHTS,
    CONFIG_FILE,
    HISTORY_FILE,
    RUN_FILE,
    THRESHOLD_FILE,
    "rejects.csv",
    _BACKUP_DIR,
    CACHE_FOLDER,
    "logs",
)


def set_seed(seed: int) -> None:
    """Seeds Python, NumPy and TensorFlow and makes TF ops deterministic (explicit, never at
    import)."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


class PrecisionNotSupportedError(RuntimeError):
    """This machine cannot train in the requested precision; the message says why."""


#: Lowest CUDA compute capability with bfloat16 tensor cores (Ampere: A100, A10, L4, H100).
BFLOAT16_MIN_COMPUTE_CAPABILITY = (8, 0)


def check_mixed_precision(precision: str) -> None:
    """Checks that this machine can train in `precision` (one of `config.PRECISIONS`).

    A GPU older than Ampere (compute capability below 8.0, e.g. Colab's T4 at 7.5) has no
    bfloat16 support; any other failure is found by one forward and backward pass of a small
    convolution in that precision.

    Raises:
        PrecisionNotSupportedError: Naming the device and what to use instead.
    """
    if precision == "float32":
        return
    if precision == "mixed_bfloat16":
        for gpu in tf.config.list_physical_devices("GPU"):
            details = tf.config.experimental.get_device_details(gpu)
            capability = details.get("compute_capability")
            if capability is not None and tuple(capability) < BFLOAT16_MIN_COMPUTE_CAPABILITY:
                raise PrecisionNotSupportedError(
                    f"{details.get('device_name', gpu.name)} (compute capability "
                    f"{capability[0]}.{capability[1]}) has no bfloat16 support; bfloat16 needs "
                    "compute capability 8.0 or newer (A100, L4, H100). Use mixed_float16 on this "
                    "GPU, or float32."
                )
    try:
        layer = keras.layers.Conv2D(2, 3, padding="same", dtype=precision)
        with tf.GradientTape() as tape:
            outputs = layer(tf.ones((1, 8, 8, 3)))
            loss = tf.reduce_sum(tf.cast(outputs, tf.float32))
        gradients = tape.gradient(loss, layer.trainable_variables)
        if any(gradient is None for gradient in gradients):
            raise RuntimeError("no gradient reached the convolution's weights")
    except Exception as error:
        raise PrecisionNotSupportedError(
            f"This machine cannot train in {precision} ({type(error).__name__}: {error}); "
            "use float32, or the other mixed precision."
        ) from error


class NanLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at the first non-finite batch loss, with an explanation."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.model.stop_training = True
            raise NanLossError(
                f"The loss became {loss} at batch {batch}. Usual causes: a learning rate too "
                "high for this batch size (lower TrainConfig.learning_rates), or corrupt boxes "
                "(check load_rsna_labels(...).rejected). The best weights so far are kept."
            )


class EpochPrinter(keras.callbacks.Callback):
    """One compact line per epoch (for notebooks, where progress bars are noise)."""

    def __init__(self, every: int = 1, digits: int = 3) -> None:
        super().__init__()
        self.every = every
        self.digits = digits

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0:
            values = ", ".join(
                f"{k} {v:.{self.digits}f}"
                for k, v in sorted((logs or {}).items())
                if k != "learning_rate"
            )
            print(f"epoch {epoch + 1:3d}: {values}", flush=True)


def default_strategy() -> tf.distribute.Strategy:
    """`MirroredStrategy` over all GPUs when there are several, else the default strategy."""
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


class BadFileGuard(keras.callbacks.Callback):
    """Stops training once more than `max_fraction` of the files have proved unreadable.

    The pipeline records a file in `rejects` the first time it fails to read it; after the
    first epoch (training and validation) every file has been tried.
    """

    def __init__(self, rejects: RejectLog, num_files: int, max_fraction: float) -> None:
        super().__init__()
        self.rejects = rejects
        self.num_files = num_files
        self.max_fraction = max_fraction

    def on_epoch_end(self, epoch, logs=None):
        self.rejects.check_fraction(self.num_files, self.max_fraction)


class RunFinishedError(RuntimeError):
    """The run folder already holds a finished run of at least the requested epochs."""


class RunMismatchError(ValueError):
    """The run folder holds a run of another config."""


class RunFolderBusyError(RuntimeError):
    """Another process is training in the same run folder."""


#: Run folders this process holds the lock of (`train_retinanet` calls `fit_retinanet`).
_HELD_FOLDERS: set[Path] = set()


@contextlib.contextmanager
def run_folder_lock(workdir: Path):
    """Holds `workdir` for this process while it trains there; refuses a second process.

    Two processes training in one run folder spoil each other's run without an error that
    names the cause: the second deletes the first's files (`overwrite`), both write the
    same best-weights file and history, and one may resume from the other's backup. With
    `book/execute_chapters.py` and the test suite both executing Chapter 5, this can happen
    to the chapter's run folder. The lock (`fcntl.flock` on `workdir/.training.lock`) is
    released when training returns or the process dies; on Windows there is none.

    Raises:
        RunFolderBusyError: If another process holds the folder, naming its PID.
    """
    folder = workdir.resolve()
    if fcntl is None or folder in _HELD_FOLDERS:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    handle = (folder / LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunFolderBusyError(
            f"Another process (PID {holder}) is training in {workdir}. Wait for it to finish, "
            "or train in another folder."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    _HELD_FOLDERS.add(folder)
    try:
        yield
    finally:
        _HELD_FOLDERS.discard(folder)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _locks_run_folder(function):
    """Runs a training function while holding its `workdir` argument (`run_folder_lock`)."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def locked(*args, **kwargs):
        workdir = Path(signature.bind(*args, **kwargs).arguments["workdir"])
        with run_folder_lock(workdir):
            return function(*args, **kwargs)

    return locked


@dataclass(frozen=True)
class TrainResult:
    """What `fit_retinanet` and `train_retinanet` return.

    Attributes:
        model: The model, holding the weights with the lowest validation loss.
        history: Per-epoch logs (`loss`, `val_loss`, ...) of every epoch of the run so far,
            read back from `history.csv` (so a resumed run reports all its epochs).
        workdir: Where the weights, config and logs are.
        seconds: Wall time of this call's training.
        rejects: Files skipped because they could not be read (`file`, `error`).
    """

    model: keras.Model
    history: dict[str, list[float]]
    workdir: Path
    seconds: float = 0.0
    rejects: pd.DataFrame = dataclasses.field(
        default_factory=lambda: pd.DataFrame(columns=["file", "error"])
    )


def read_run(workdir: str | Path) -> dict | None:
    """The `run.json` summary of a finished run, or `None` if the folder holds none."""
    path = Path(workdir) / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _read_history(workdir: Path) -> pd.DataFrame:
    path = workdir / HISTORY_FILE
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(columns=["epoch"])
    return pd.read_csv(path)


def _deduplicate_history(workdir: Path) -> pd.DataFrame:
    """Keeps the last row of every epoch (a resumed epoch is logged again) and rewrites it."""
    history = _read_history(workdir)
    if len(history):
        history = history.drop_duplicates("epoch", keep="last").sort_values("epoch")
        history.to_csv(workdir / HISTORY_FILE, index=False)
    return history


def _check_same_config(workdir: Path, cfg: RetinaNetConfig) -> None:
    """Raises `RunMismatchError` unless `workdir/config.json` is `cfg` (epochs aside)."""
    saved = RetinaNetConfig.from_dict(json.loads((workdir / CONFIG_FILE).read_text()))
    more_epochs = dataclasses.replace(saved.train, epochs=cfg.train.epochs)
    if dataclasses.replace(saved, train=more_epochs) != cfg:  # only epochs may change
        raise RunMismatchError(
            f"{workdir} holds a run of another config; pick another folder, or pass "
            "overwrite=True (train.py --overwrite) to replace it."
        )


def finished_run(workdir: str | Path, cfg: RetinaNetConfig) -> TrainResult | None:
    """A finished run of `cfg` in `workdir`, read back from its files without training.

    Args:
        workdir: The run folder.
        cfg: The config the run must have been trained with (epochs may be fewer than the
            run's).

    Returns:
        The model with the run's best weights, the history of all its epochs and its
        skipped files (`seconds` is 0: nothing was trained); `None` when the folder holds no
        run that finished at least `cfg.train.epochs` epochs.

    Raises:
        RunMismatchError: If the folder holds a run of another config.
    """
    workdir = Path(workdir)
    run = read_run(workdir)
    if run is None or not (workdir / CONFIG_FILE).is_file():
        return None
    _check_same_config(workdir, cfg)
    if run["epochs"] < cfg.train.epochs or not (workdir / BEST_WEIGHTS).is_file():
        return None
    model, _ = load_trained_model(workdir)
    history = _read_history(workdir)
    logs = {k: history[k].tolist() for k in history.columns if k != "epoch"}
    rejects_path = workdir / REJECTS_FILE
    rejects = (
        pd.read_csv(rejects_path)
        if rejects_path.is_file()
        else pd.DataFrame(columns=["file", "error"])
    )
    return TrainResult(model=model, history=logs, workdir=workdir, rejects=rejects)


def _prepare_workdir(workdir: Path, cfg: RetinaNetConfig, overwrite: bool) -> None:
    """Refuses a finished or foreign run unless `overwrite`; writes `config.json`."""
    if overwrite:
        for name in _RUN_ENTRIES:
            target = workdir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    config_path = workdir / CONFIG_FILE
    if config_path.is_file():
        _check_same_config(workdir, cfg)
        finished = read_run(workdir)
        if finished is not None and finished["epochs"] >= cfg.train.epochs:
            raise RunFinishedError(
                f"{workdir} holds a finished run of {finished['epochs']} epochs (best epoch "
                f"{finished['best_epoch']}, validation loss {finished['best_val_loss']:.4f}). "
                "Ask for more epochs to continue it (train.py --epochs N), or pass "
                "overwrite=True (train.py --overwrite) to train again from scratch."
            )
    workdir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(cfg.to_dict(), indent=2))


def _epochs_backed_up(workdir: Path) -> int:
    """Epochs finished by the run whose backup `keras.callbacks.BackupAndRestore` will
    restore from `workdir` (0 when there is none)."""
    metadata = workdir / _BACKUP_DIR / "training_metadata.json"
    if not metadata.is_file():
        return 0
    return int(json.loads(metadata.read_text())["epoch"])


def _fast_forward(
    dataset: tf.data.Dataset, epochs: int, steps_per_epoch: int | None
) -> tf.data.Dataset:
    """The training data of a resumed run, moved on by the epochs already trained.

    The shuffle order and the augmentation seeds are drawn anew on every pass over the
    data (`reshuffle_each_iteration`, `rerandomize_each_iteration`), from a generator that a
    fresh process starts again at the first pass. Without this, a run resumed after `k`
    epochs would see the first epoch's order and augmentation again, and continue on
    another path than the same run trained without a stop.

    Args:
        dataset: The training batches.
        epochs: Epochs already trained.
        steps_per_epoch: For an endless (rebalanced) dataset, which Keras reads through one
            iterator: the batches of one epoch, skipped `epochs` times. `None` for a
            finite dataset, which Keras reads through one new iterator per epoch: each
            iterator made here moves its seeds on by one pass, without reading any data.
    """
    if epochs == 0:
        return dataset
    if steps_per_epoch is not None:
        return dataset.skip(epochs * steps_per_epoch)
    for _ in range(epochs):
        iter(dataset)
    return dataset


@_locks_run_folder
def fit_retinanet(
    cfg: RetinaNetConfig,
    train_dataset: tf.data.Dataset,
    val_dataset: tf.data.Dataset,
    workdir: str | Path,
    steps_per_epoch: int | None = None,
    strategy: tf.distribute.Strategy | None = None,
    verbose: int = 1,
    extra_callbacks: list[keras.callbacks.Callback] | None = None,
    tensorboard: bool = True,
    overwrite: bool = False,
    reuse_finished: bool = False,
) -> TrainResult:
    """Trains RetinaNet with `cfg.train` on ready-made datasets; resumes an interrupted run.

    Args:
        cfg: Detector and training config (written to `workdir/config.json`).
        train_dataset: Batches of `(images, targets)` (from `pipeline.make_dataset`), not
            iterated yet: a resumed run moves it on by the epochs already trained.
        val_dataset: Validation batches.
        workdir: Folder for weights, backups and logs.
        steps_per_epoch: Batches per epoch, for the learning-rate schedule (and for
            cutting an endless, rebalanced `train_dataset` into epochs); read from
            `train_dataset` when its length is known.
        strategy: Distribution strategy; `default_strategy()` if omitted.
        verbose: Keras `fit` verbosity (1: progress bar).
        extra_callbacks: More callbacks (e.g. `EpochPrinter`, `BadFileGuard`).
        tensorboard: Write TensorBoard logs to `workdir/logs`.
        overwrite: Delete an earlier run in `workdir` first.
        reuse_finished: Return a finished run of `cfg` in `workdir` (`finished_run`)
            instead of raising `RunFinishedError`: a notebook executed again after its
            training finished reads the run back.

    Returns:
        The model with its best weights, the history and the folder.

    Raises:
        RunFinishedError: If `workdir` holds a finished run of at least `cfg.train.epochs`
            (and `reuse_finished` is false).
        RunMismatchError: If `workdir` holds a run of another config.
        NanLossError: If the loss becomes NaN or infinite.
        PrecisionNotSupportedError: If this machine cannot train in
            `cfg.train.mixed_precision`.
    """
    workdir = Path(workdir)
    if reuse_finished and not overwrite:
        done = finished_run(workdir, cfg)
        if done is not None:
            return done
    check_mixed_precision(cfg.train.mixed_precision)
    _prepare_workdir(workdir, cfg, overwrite)
    if steps_per_epoch is None:
        steps_per_epoch = int(train_dataset.cardinality())
    if steps_per_epoch < 1:
        raise ValueError(
            "The training dataset must have a known, non-zero number of batches "
            "(or pass steps_per_epoch)."
        )
    strategy = strategy or default_strategy()
    with strategy.scope():
        model = build_retinanet(cfg)
        model.compile(
            optimizer=make_optimizer(
                cfg.train, steps_per_epoch, backbone_of(model).trainable_variables
            ),
            loss=RetinaNetLoss(cfg.num_classes, cfg.loss),
        )
    endless = int(train_dataset.cardinality()) == tf.data.INFINITE_CARDINALITY
    train_dataset = _fast_forward(
        train_dataset, _epochs_backed_up(workdir), steps_per_epoch if endless else None
    )
    previous = _read_history(workdir)
    best_so_far = float(previous["val_loss"].min()) if "val_loss" in previous else None
    best_path = workdir / BEST_WEIGHTS
    callbacks = [
        keras.callbacks.BackupAndRestore(str(workdir / _BACKUP_DIR), delete_checkpoint=False),
        keras.callbacks.ModelCheckpoint(
            str(best_path),
            monitor="val_loss",
            save_best_only=True,
            save_weights_only=True,
            initial_value_threshold=best_so_far,  # a resumed run keeps its earlier best
        ),
        keras.callbacks.CSVLogger(str(workdir / HISTORY_FILE), append=True),
        StopOnNaN(),
        *(extra_callbacks or []),
    ]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(workdir / "logs"), write_graph=False))
    start = time.perf_counter()
    with warnings.catch_warnings():
        # A pipeline that skips unreadable files has no length known in advance; Keras then
        # warns at the end of every pass that the input "ran out of data". That is expected.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        model.fit(
            train_dataset,
            validation_data=val_dataset,
            epochs=cfg.train.epochs,
            steps_per_epoch=steps_per_epoch if endless else None,  # rebalanced images
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,
        )
    seconds = time.perf_counter() - start
    history = _deduplicate_history(workdir)
    if best_path.is_file():
        model.load_weights(best_path)
    best = int(history["val_loss"].idxmin()) if "val_loss" in history and len(history) else None
    (workdir / RUN_FILE).write_text(
        json.dumps(
            {
                "epochs": len(history),
                "best_epoch": None if best is None else int(history["epoch"][best]) + 1,
                "best_val_loss": None if best is None else float(history["val_loss"][best]),
                "train_seconds_last_call": round(seconds, 1),
            },
            indent=2,
        )
    )
    logs = {k: history[k].tolist() for k in history.columns if k != "epoch"}
    return TrainResult(model=model, history=logs, workdir=workdir, seconds=seconds)


@_locks_run_folder
def train_retinanet(
    cfg: RetinaNetConfig,
    train_records: Records,
    val_records: Records,
    workdir: str | Path,
    strategy: tf.distribute.Strategy | None = None,
    verbose: int = 1,
    extra_callbacks: list[keras.callbacks.Callback] | None = None,
    tensorboard: bool = True,
    overwrite: bool = False,
    reuse_finished: bool = False,
) -> TrainResult:
    """Trains RetinaNet on records: the input pipeline, bad-file handling and `fit_retinanet`.

    Unreadable image files are skipped and recorded; training stops (`TooManyBadFilesError`)
    when they exceed `cfg.train.max_bad_file_fraction`; the skipped files are returned in
    `TrainResult.rejects` and written to `workdir/rejects.csv`. Decoded images are cached as
    `cfg.data.image_cache` says (`"disk"`: in `workdir/cache`).

    Args:
        cfg: Detector and training config.
        train_records: Training images and boxes.
        val_records: Validation images and boxes.
        workdir: The run folder.
        strategy: Distribution strategy; `default_strategy()` if omitted.
        verbose: Keras `fit` verbosity.
        extra_callbacks: More callbacks.
        tensorboard: Write TensorBoard logs.
        overwrite: Delete an earlier run in `workdir` first.
        reuse_finished: Return a finished run of `cfg` in `workdir` instead of raising
            `RunFinishedError` (see `fit_retinanet`). An interrupted run always resumes
            unless `overwrite`.

    Returns:
        The trained model (best weights), its history, the folder and the rejected files.
    """
    workdir = Path(workdir)
    if reuse_finished and not overwrite:
        done = finished_run(workdir, cfg)
        if done is not None:
            return done
    if overwrite and workdir.is_dir():  # before the disk cache is (re)created inside it
        _prepare_workdir(workdir, cfg, overwrite=True)
    rejects = RejectLog()
    batch = cfg.train.batch_size
    datasets = [
        make_dataset(
            records,
            cfg,
            batch,
            training=training,
            cache=cache_target(cfg, workdir / CACHE_FOLDER, split),
            rejects=rejects,
        )
        for records, training, split in (
            (train_records, True, "train"),
            (val_records, False, "val"),
        )
    ]
    guard = BadFileGuard(
        rejects, len(train_records) + len(val_records), cfg.train.max_bad_file_fraction
    )
    result = fit_retinanet(
        cfg,
        *datasets,
        workdir,
        steps_per_epoch=num_batches(len(train_records), batch, training=True),
        strategy=strategy,
        verbose=verbose,
        extra_callbacks=[guard, *(extra_callbacks or [])],
        tensorboard=tensorboard,
    )
    rejects.report(workdir)
    return dataclasses.replace(result, rejects=rejects.table())


def save_score_threshold(
    workdir: str | Path,
    score_threshold: float,
    chosen_on: str,
    table: pd.DataFrame | None = None,
    gate_threshold: float | None = None,
) -> Path:
    """Writes the run's score threshold (and image-level gate); `load_trained_model` and
    prediction then use them.

    Args:
        workdir: The run folder.
        score_threshold: The threshold.
        chosen_on: What data and rule chose it, in words (kept with it).
        table: Optional per-threshold scores behind the choice.
        gate_threshold: The image-level gate (`DecodeConfig.gate_threshold`), or `None`.

    Returns:
        The file written.
    """
    values = {
        "score_threshold": float(score_threshold),
        "gate_threshold": None if gate_threshold is None else float(gate_threshold),
        "chosen_on": chosen_on,
    }
    if table is not None:
        values["table"] = json.loads(table.reset_index().to_json(orient="records"))
    path = Path(workdir) / THRESHOLD_FILE
    path.write_text(json.dumps(values, indent=2))
    return path


def load_trained_model(workdir: str | Path) -> tuple[keras.Model, RetinaNetConfig]:
    """Rebuilds the model saved by `train_retinanet` and loads its best weights.

    The backbone is built without downloading pre-trained weights (the checkpoint has them).
    When the run has a saved score threshold (`save_score_threshold`), the returned config's
    `decode.score_threshold` is that threshold, and `decode.gate_threshold` its gate.

    Raises:
        FileNotFoundError: If `config.json` or the weights are missing, naming the folder.
    """
    workdir = Path(workdir)
    config_path, weights_path = workdir / CONFIG_FILE, workdir / BEST_WEIGHTS
    missing = [p.name for p in (config_path, weights_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{workdir} has no {' and no '.join(missing)}; train first "
            "(data_scripts/train.py) or point at a training folder."
        )
    values = json.loads(config_path.read_text())
    values["model"]["backbone_weights"] = None
    threshold_path = workdir / THRESHOLD_FILE
    if threshold_path.is_file():
        chosen = json.loads(threshold_path.read_text())
        values["decode"]["score_threshold"] = float(chosen["score_threshold"])
        values["decode"]["gate_threshold"] = chosen.get("gate_threshold")
    cfg = RetinaNetConfig.from_dict(values)
    model = build_retinanet(cfg)
    model.load_weights(weights_path)
    return model, cfg
