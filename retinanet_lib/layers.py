"""Keras layers of RetinaNet: the feature pyramid and the shared prediction heads.

Both are written with `keras.ops` and list every constructor argument in `get_config`, so a
model using them saves and loads with `keras.saving`.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from retinanet_lib.config import PRIOR_PROBABILITY

__all__ = ["FeaturePyramid", "PredictionHead", "prior_probability_bias"]

#: Standard deviation of the normal initializer of all head convolutions (the paper's 0.01).
HEAD_KERNEL_STDDEV = 0.01


def prior_probability_bias(prior: float = PRIOR_PROBABILITY) -> float:
    """Bias `b` with `sigmoid(b) = prior`: `-log((1 - prior) / prior)` (about -4.595 for 0.01)."""
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior must lie in (0, 1), got {prior}.")
    return -math.log((1.0 - prior) / prior)


def _upsample_to(small, target):
    """Nearest-neighbour x2 upsampling of `small`, cropped to `target`'s height and width.

    The crop handles inputs that are not multiples of 32 (e.g. C5 4x4 -> C4 7x7).
    """
    upsampled = ops.repeat(ops.repeat(small, 2, axis=1), 2, axis=2)  # (B, 2h, 2w, C)
    dynamic = ops.shape(target)
    height = target.shape[1] if target.shape[1] is not None else dynamic[1]  # static if known
    width = target.shape[2] if target.shape[2] is not None else dynamic[2]
    return upsampled[:, :height, :width, :]


@keras.saving.register_keras_serializable(package="retinanet_lib")
class FeaturePyramid(layers.Layer):
    """Feature pyramid network on backbone features C3, C4, C5 -> P3, P4, P5, P6, P7.

    1x1 lateral convolutions bring C3..C5 to `channels`; a top-down path adds each upsampled
    coarser level to the next finer one; 3x3 convolutions smooth P3..P5. P6 is a 3x3 stride-2
    convolution on C5 and P7 a 3x3 stride-2 convolution on ReLU(P6) (the RetinaNet paper).

    Args:
        channels: Width of every pyramid level (256 in the paper).

    Call args:
        inputs: `[c3, c4, c5]`, feature maps of strides 8, 16, 32.

    Returns:
        `[p3, p4, p5, p6, p7]`, each `(B, ceil(S / stride), ceil(S / stride), channels)`.
    """

    def __init__(self, channels: int = 256, **kwargs) -> None:
        super().__init__(**kwargs)
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}.")
        self.channels = channels
        conv = {"filters": channels, "padding": "same"}
        self.lateral = {
            name: layers.Conv2D(kernel_size=1, name=f"lateral_{name}", **conv)
            for name in ("c3", "c4", "c5")
        }
        self.smooth = {
            name: layers.Conv2D(kernel_size=3, name=f"smooth_{name}", **conv)
            for name in ("p3", "p4", "p5")
        }
        self.p6_conv = layers.Conv2D(kernel_size=3, strides=2, name="p6", **conv)
        self.p7_conv = layers.Conv2D(kernel_size=3, strides=2, name="p7", **conv)

    def build(self, input_shape) -> None:
        c3_shape, c4_shape, c5_shape = input_shape
        for name, shape in zip(("c3", "c4", "c5"), (c3_shape, c4_shape, c5_shape), strict=True):
            self.lateral[name].build(shape)
        pyramid_shape = (*c3_shape[:-1], self.channels)
        for conv in self.smooth.values():
            conv.build(pyramid_shape)
        self.p6_conv.build(c5_shape)
        self.p7_conv.build((*c5_shape[:-1], self.channels))
        self.built = True

    def call(self, inputs):
        c3, c4, c5 = inputs
        m5 = self.lateral["c5"](c5)
        m4 = self.lateral["c4"](c4) + _upsample_to(m5, c4)
        m3 = self.lateral["c3"](c3) + _upsample_to(m4, c3)
        p3, p4, p5 = self.smooth["p3"](m3), self.smooth["p4"](m4), self.smooth["p5"](m5)
        p6 = self.p6_conv(c5)
        p7 = self.p7_conv(ops.relu(p6))
        return [p3, p4, p5, p6, p7]

    def compute_output_shape(self, input_shape):
        c3, c4, c5 = input_shape

        def halve(size):
            return None if size is None else (size + 1) // 2

        p6 = (c5[0], halve(c5[1]), halve(c5[2]), self.channels)
        p7 = (c5[0], halve(p6[1]), halve(p6[2]), self.channels)
        finer = [(*shape[:-1], self.channels) for shape in (c3, c4, c5)]
        return [*finer, p6, p7]

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"channels": self.channels})
        return config


@keras.saving.register_keras_serializable(package="retinanet_lib")
class PredictionHead(layers.Layer):
    """A RetinaNet head, shared by all pyramid levels.

    `num_convs` x (3x3 conv with `channels` filters + ReLU), then a 3x3 conv with
    `output_filters` filters. Kernels are initialised from N(0, 0.01). The output bias is
    `bias_value`: `prior_probability_bias()` for the class head, 0 for the box head.

    Args:
        output_filters: `anchors_per_location * num_classes` (class head) or
            `anchors_per_location * 4` (box head).
        channels: Width of the hidden convolutions.
        num_convs: Number of hidden conv + ReLU layers (4 in the paper).
        bias_value: Initial bias of the output convolution.

    Call args:
        inputs: `(B, H, W, C)` features of one pyramid level.

    Returns:
        `(B, H, W, output_filters)`.
    """

    def __init__(
        self,
        output_filters: int,
        channels: int = 256,
        num_convs: int = 4,
        bias_value: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.output_filters = output_filters
        self.channels = channels
        self.num_convs = num_convs
        self.bias_value = bias_value
        kernel_init = keras.initializers.RandomNormal(stddev=HEAD_KERNEL_STDDEV)
        self.hidden = [
            layers.Conv2D(
                channels,
                3,
                padding="same",
                kernel_initializer=kernel_init,
                activation="relu",
                name=f"conv_{index}",
            )
            for index in range(num_convs)
        ]
        self.output_conv = layers.Conv2D(
            output_filters,
            3,
            padding="same",
            kernel_initializer=kernel_init,
            bias_initializer=keras.initializers.Constant(bias_value),
            name="output",
        )

    def build(self, input_shape) -> None:
        shape = tuple(input_shape)
        for conv in self.hidden:
            conv.build(shape)
            shape = (*shape[:-1], self.channels)
        self.output_conv.build(shape)
        self.built = True

    def call(self, inputs):
        features = inputs
        for conv in self.hidden:
            features = conv(features)
        return self.output_conv(features)

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape)[:-1], self.output_filters)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "output_filters": self.output_filters,
                "channels": self.channels,
                "num_convs": self.num_convs,
                "bias_value": self.bias_value,
            }
        )
        return config
