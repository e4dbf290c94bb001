"""Training: seeding, the learning-rate schedule, callbacks and the fit helper.

`train_retinanet` builds the model inside a `tf.distribute` strategy (several GPUs ->
`MirroredStrategy`; otherwise the default strategy), compiles it with `RetinaNetLoss`, and fits
it with:

* `BackupAndRestore`: an interrupted run restarts from its last finished epoch;
* `ModelCheckpoint`: the weights with the lowest validation loss (the blog's choice) are kept in
  `best.weights.h5`;
* `CSVLogger` and `TensorBoard` logs;
* `StopOnNaN`: a NaN or infinite loss stops training with an error saying what to try.

The config used is written next to the weights (`config.json`), so `load_trained_model` can
rebuild exactly that model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from retinanet_lib.config import RetinaNetConfig, TrainConfig
from retinanet_lib.losses import RetinaNetLoss
from retinanet_lib.model import build_retinanet

__all__ = [
    "BEST_WEIGHTS",
    "CONFIG_FILE",
    "EpochPrinter",
    "NanLossError",
    "StopOnNaN",
    "TrainResult",
    "default_strategy",
    "learning_rate_schedule",
    "load_trained_model",
    "make_optimizer",
    "set_seed",
    "train_retinanet",
]

BEST_WEIGHTS = "best.weights.h5"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"


def set_seed(seed: int) -> None:
    """Seeds Python, NumPy and TensorFlow and makes TF ops deterministic (explicit, never at
    import)."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def learning_rate_schedule(
    cfg: TrainConfig, steps_per_epoch: int
) -> keras.optimizers.schedules.LearningRateSchedule:
    """Piecewise-constant schedule: `learning_rates[k]` during epochs
    `[k * epochs_per_drop, (k + 1) * epochs_per_drop)`, the last value afterwards.

    With the blog's settings and 1,000 steps per epoch the rate drops at steps 5,000, 10,000,
    15,000 and 20,000 (0-based; Keras switches *after* a boundary, hence `boundary = step - 1`).
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}.")
    drop = cfg.epochs_per_drop * steps_per_epoch
    boundaries = [drop * k - 1 for k in range(1, len(cfg.learning_rates))]
    if not boundaries:
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            [2**62], [cfg.learning_rates[0], cfg.learning_rates[0]]
        )
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, list(cfg.learning_rates))


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """SGD with momentum (the blog's, from keras.io) or Adam, on the piecewise schedule."""
    schedule = learning_rate_schedule(cfg, steps_per_epoch)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=schedule, momentum=cfg.momentum)
    return keras.optimizers.Adam(learning_rate=schedule)


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


@dataclass(frozen=True)
class TrainResult:
    """What `train_retinanet` returns.

    Attributes:
        model: The model, holding the weights with the lowest validation loss.
        history: Per-epoch logs (`loss`, `val_loss`, ...) of this call.
        workdir: Where the weights, config and logs are.
    """

    model: keras.Model
    history: dict[str, list[float]]
    workdir: Path


def train_retinanet(
    cfg: RetinaNetConfig,
    train_dataset: tf.data.Dataset,
    val_dataset: tf.data.Dataset,
    workdir: str | Path,
    strategy: tf.distribute.Strategy | None = None,
    verbose: int = 1,
    extra_callbacks: list[keras.callbacks.Callback] | None = None,
    tensorboard: bool = True,
) -> TrainResult:
    """Trains RetinaNet with `cfg.train`; resumes if `workdir` holds an interrupted run.

    Args:
        cfg: Detector and training config (written to `workdir/config.json`).
        train_dataset: Batches of `(images, targets)` (from `pipeline.make_dataset`).
        val_dataset: Validation batches.
        workdir: Folder for weights, backups and logs.
        strategy: Distribution strategy; `default_strategy()` if omitted.
        verbose: Keras `fit` verbosity (1: progress bar).
        extra_callbacks: More callbacks (e.g. `EpochPrinter`).
        tensorboard: Write TensorBoard logs to `workdir/logs`.

    Returns:
        The model with its best weights, the history and the folder.

    Raises:
        NanLossError: If the loss becomes NaN or infinite.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2))
    steps_per_epoch = int(train_dataset.cardinality())
    if steps_per_epoch < 1:
        raise ValueError("The training dataset must have a known, non-zero number of batches.")
    strategy = strategy or default_strategy()
    with strategy.scope():
        model = build_retinanet(cfg)
        model.compile(
            optimizer=make_optimizer(cfg.train, steps_per_epoch),
            loss=RetinaNetLoss(cfg.num_classes, cfg.loss),
        )
    best_path = workdir / BEST_WEIGHTS
    callbacks = [
        keras.callbacks.BackupAndRestore(str(workdir / "backup")),
        keras.callbacks.ModelCheckpoint(
            str(best_path), monitor="val_loss", save_best_only=True, save_weights_only=True
        ),
        keras.callbacks.CSVLogger(str(workdir / HISTORY_FILE), append=True),
        StopOnNaN(),
        *(extra_callbacks or []),
    ]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(workdir / "logs"), write_graph=False))
    history = model.fit(
        train_dataset,
        validation_data=val_dataset,
        epochs=cfg.train.epochs,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,
    )
    if best_path.is_file():
        model.load_weights(best_path)
    return TrainResult(model=model, history=dict(history.history), workdir=workdir)


def load_trained_model(workdir: str | Path) -> tuple[keras.Model, RetinaNetConfig]:
    """Rebuilds the model saved by `train_retinanet` and loads its best weights.

    The backbone is built without downloading pre-trained weights (the checkpoint has them).

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
    cfg = RetinaNetConfig.from_dict(values)
    model = build_retinanet(cfg)
    model.load_weights(weights_path)
    return model, cfg
