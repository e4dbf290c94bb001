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

__all__ = [
    "BackboneRateAdam",
    "BackboneRateSGD",
    "LinearWarmup",
    "learning_rate_schedule",
    "make_optimizer",
]


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


class _BackboneRate:
    """Mixin for a Keras optimizer: the backbone's variables train at `factor` times the
    learning rate, and at 0 during the first `frozen_steps` steps.

    One optimizer with two rates, where Keras has no per-layer learning rate: the update of
    each variable is computed by the optimizer's own `update_step` with a scaled rate, so its
    state (momentum, Adam's moments) is the optimizer's usual one. (Scaling the gradients
    instead would do nothing under Adam, whose steps do not depend on the gradients' scale.)
    """

    def _set_backbone_rate(self, variables, factor: float, frozen_steps: int) -> None:
        self._backbone_variables = list(variables)
        self._backbone_factor = float(factor)
        self._backbone_frozen_steps = int(frozen_steps)
        self._backbone_keys: set | None = None

    def backbone_rate_factor(self, dtype: str = "float32"):
        """The backbone's multiple of the learning rate at the current step (a scalar)."""
        factor = ops.cast(self._backbone_factor, dtype)
        if not self._backbone_frozen_steps:
            return factor
        frozen = ops.less(self.iterations, self._backbone_frozen_steps)
        return ops.where(frozen, ops.zeros((), dtype), factor)

    def update_step(self, gradient, variable, learning_rate):
        if self._backbone_keys is None:  # keys of the built (possibly distributed) variables
            self._backbone_keys = {self._var_key(v) for v in self._backbone_variables}
        if self._var_key(variable) in self._backbone_keys:
            rate = ops.cast(learning_rate, variable.dtype)
            learning_rate = rate * self.backbone_rate_factor(variable.dtype)
        return super().update_step(gradient, variable, learning_rate)


class BackboneRateSGD(_BackboneRate, keras.optimizers.SGD):
    """SGD whose backbone variables train at a multiple of the rate (see `_BackboneRate`)."""


class BackboneRateAdam(_BackboneRate, keras.optimizers.Adam):
    """Adam whose backbone variables train at a multiple of the rate (see `_BackboneRate`)."""


def make_optimizer(
    cfg: TrainConfig, steps_per_epoch: int, backbone_variables: list | None = None
) -> keras.optimizers.Optimizer:
    """SGD with momentum (the blog's, from keras.io) or Adam, on the piecewise schedule.

    With `cfg.mixed_precision == "mixed_float16"` the optimizer is wrapped in a
    `keras.optimizers.LossScaleOptimizer`: float16 gradients of a loss near 1e-3 underflow to
    0 unless the loss is scaled up before back-propagation (and the gradients down after).
    bfloat16 has float32's exponent range and needs no scaling.

    Args:
        cfg: The training settings.
        steps_per_epoch: Batches per epoch (for the schedule's boundaries).
        backbone_variables: The backbone's trainable variables. Needed when `cfg` trains the
            backbone at another rate (`cfg.scales_backbone_rate`): the optimizer is then a
            `BackboneRateSGD` / `BackboneRateAdam`.

    Raises:
        ValueError: If `cfg` scales the backbone's rate and `backbone_variables` is missing.
    """
    schedule = learning_rate_schedule(cfg, steps_per_epoch)
    scaled = cfg.scales_backbone_rate
    if scaled and backbone_variables is None:
        raise ValueError("A backbone learning-rate factor needs the backbone's variables.")
    if cfg.optimizer == "sgd":
        kind = BackboneRateSGD if scaled else keras.optimizers.SGD
        optimizer = kind(learning_rate=schedule, momentum=cfg.momentum)
    else:
        kind = BackboneRateAdam if scaled else keras.optimizers.Adam
        optimizer = kind(learning_rate=schedule)
    if scaled:
        frozen_steps = cfg.backbone_frozen_epochs * steps_per_epoch
        optimizer._set_backbone_rate(
            backbone_variables, cfg.backbone_learning_rate_factor, frozen_steps
        )
    if cfg.mixed_precision == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
