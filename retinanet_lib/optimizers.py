"""The optimizer and its learning-rate schedule: the blog's piecewise-constant rates, an
optional linear warm-up, the linear scaling rule for larger batches, and loss scaling for
float16.

Written with `keras.ops` only (no TensorFlow), like the model and the loss, so that a training
step can be built and timed on any Keras backend (`data_scripts/benchmark_training.py`).
"""

from __future__ import annotations

import keras
from keras import ops

from retinanet_lib.config import TrainConfig

__all__ = ["LinearWarmup", "learning_rate_schedule", "make_optimizer"]


@keras.saving.register_keras_serializable(package="retinanet_lib")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Scales another schedule by `min(1, (step + 1) / warmup_steps)`: a linear ramp from
    almost 0 to the full rate over the first `warmup_steps` steps, then `schedule` unchanged.

    Args:
        schedule: The schedule to ramp into.
        warmup_steps: Length of the ramp in steps (>= 1).
    """

    def __init__(
        self, schedule: keras.optimizers.schedules.LearningRateSchedule, warmup_steps: int
    ):
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1, got {warmup_steps}.")
        self.schedule = schedule
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        steps_done = ops.cast(step, "float32") + 1.0
        ramp = ops.minimum(1.0, steps_done / float(self.warmup_steps))
        return ramp * ops.cast(self.schedule(step), "float32")

    def get_config(self) -> dict:
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "warmup_steps": self.warmup_steps,
        }

    @classmethod
    def from_config(cls, config: dict) -> LinearWarmup:
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)


def learning_rate_schedule(
    cfg: TrainConfig, steps_per_epoch: int
) -> keras.optimizers.schedules.LearningRateSchedule:
    """Piecewise-constant schedule: `effective_learning_rates[k]` during epochs
    `[k * epochs_per_drop, (k + 1) * epochs_per_drop)`, the last value afterwards; with
    `warmup_epochs > 0`, a linear warm-up (`LinearWarmup`) over the first epochs. The
    effective rates are `learning_rates`, scaled by `batch_size / base_batch_size` when
    `scale_learning_rate` is on (the linear scaling rule).

    With the blog's settings and 1,000 steps per epoch the rate drops at steps 5,000, 10,000,
    15,000 and 20,000 (0-based; Keras switches *after* a boundary, hence `boundary = step - 1`).
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}.")
    rates = cfg.effective_learning_rates
    drop = cfg.epochs_per_drop * steps_per_epoch
    boundaries = [drop * k - 1 for k in range(1, len(rates))]
    if boundaries:
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, list(rates))
    else:
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay([2**62], [rates[0], rates[0]])
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    return LinearWarmup(schedule, warmup_steps) if warmup_steps >= 1 else schedule


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """SGD with momentum (the blog's, from keras.io) or Adam, on the piecewise schedule.

    With `cfg.mixed_precision == "mixed_float16"` the optimizer is wrapped in a
    `keras.optimizers.LossScaleOptimizer`: float16 gradients of a loss near 1e-3 underflow to
    0 unless the loss is scaled up before back-propagation (and the gradients down after).
    bfloat16 has float32's exponent range and needs no scaling.
    """
    schedule = learning_rate_schedule(cfg, steps_per_epoch)
    if cfg.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=cfg.momentum)
    else:
        optimizer = keras.optimizers.Adam(learning_rate=schedule)
    if cfg.mixed_precision == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
