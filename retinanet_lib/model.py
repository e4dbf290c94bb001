"""Assembling RetinaNet: backbone (C3..C5) -> feature pyramid (P3..P7) -> shared heads.

The model maps a `(B, S, S, 3)` preprocessed image to `(B, num_anchors, 4 + num_classes)`:
for every anchor of `generate_anchors(S, S, cfg.anchors)`, in the same order, four box deltas
followed by one class logit per class. Use `split_predictions` rather than slicing.

With `ModelConfig.image_head`, one more channel follows: the image-level "any opacity?" logit,
the same at every anchor of an image, so the output stays one tensor that the loss, flip
test-time augmentation and ensembling handle like the rest. `detection_channels` removes it,
`image_logits` reads it.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
from keras import layers, ops

from retinanet_lib.anchors import num_anchors
from retinanet_lib.config import ModelConfig, RetinaNetConfig
from retinanet_lib.layers import FeaturePyramid, PredictionHead, prior_probability_bias
from retinanet_lib.weights import OPACITY_WEIGHTS_NAME, SMALL_RESNET_OPACITY

__all__ = [
    "BackboneWeightsError",
    "RESNET50_FEATURE_LAYERS",
    "backbone_channels",
    "backbone_of",
    "build_backbone",
    "build_retinanet",
    "detection_channels",
    "freeze_stages",
    "image_logits",
    "parameter_counts",
    "split_predictions",
]

TensorLike = Any

#: Layers of `keras.applications.ResNet50` whose outputs are C3, C4, C5 (strides 8, 16, 32).
RESNET50_FEATURE_LAYERS = ("conv3_block4_out", "conv4_block6_out", "conv5_block3_out")
RESNET50_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
#: Channels of ResNet50's C3, C4, C5.
RESNET50_FEATURE_CHANNELS = (512, 1024, 2048)


class BackboneWeightsError(RuntimeError):
    """Pre-trained backbone weights could not be loaded; the message says what to do."""


def _resnet50(input_shape: tuple[int, int, int], weights: str | None) -> keras.Model:
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise BackboneWeightsError(f"Backbone weights file {weights} does not exist.")
    try:
        resnet = keras.applications.ResNet50(
            include_top=False, weights=weights, input_shape=input_shape
        )
    except Exception as error:  # Keras raises a bare Exception for a failed download
        if weights != "imagenet":
            raise
        raise BackboneWeightsError(
            "Could not load the ImageNet weights of ResNet50 "
            f"({type(error).__name__}: {error}). Without internet access, download "
            f"'{RESNET50_WEIGHTS_FILE}' (keras-applications release on storage.googleapis.com) "
            "elsewhere and either pass its path as ModelConfig(backbone_weights=PATH) or put it "
            "in ~/.keras/models/. The CPU default (RETINANET_MODE=cpu) does not need them: it "
            "trains the small backbone from scratch."
        ) from error
    outputs = [resnet.get_layer(name).output for name in RESNET50_FEATURE_LAYERS]
    return keras.Model(resnet.inputs, outputs, name="backbone_resnet50")


def _residual_block(features, filters: int, stride: int, name: str):
    """Two 3x3 conv + BN layers with a (projected) shortcut, then ReLU."""
    shortcut = features
    if stride != 1 or features.shape[-1] != filters:
        shortcut = layers.Conv2D(
            filters, 1, strides=stride, use_bias=False, name=f"{name}_shortcut"
        )(features)
        shortcut = layers.BatchNormalization(name=f"{name}_shortcut_bn")(shortcut)
    x = layers.Conv2D(
        filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1"
    )(features)
    x = layers.BatchNormalization(name=f"{name}_bn1")(x)
    x = layers.ReLU(name=f"{name}_relu1")(x)
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(x)
    x = layers.BatchNormalization(name=f"{name}_bn2")(x)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([x, shortcut]))


def _small_resnet(input_shape: tuple[int, int, int], widths: tuple[int, ...]) -> keras.Model:
    """A ResNet-style backbone small enough to train from scratch on a CPU in minutes.

    Stem: 3x3 stride-2 conv. Then four stages (C2..C5), each one stride-2 residual block,
    so C3, C4, C5 have strides 8, 16, 32 like ResNet50's.
    """
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(widths[0], 3, strides=2, padding="same", use_bias=False, name="stem_conv")(
        inputs
    )
    x = layers.ReLU(name="stem_relu")(layers.BatchNormalization(name="stem_bn")(x))
    outputs = []
    for level, filters in zip((2, 3, 4, 5), widths, strict=True):
        x = _residual_block(x, filters, stride=2, name=f"c{level}")
        if level >= 3:
            outputs.append(x)
    return keras.Model(inputs, outputs, name="backbone_small_resnet")


def build_backbone(cfg: ModelConfig, input_shape: tuple[int, int, int]) -> keras.Model:
    """The backbone as a model returning `[c3, c4, c5]` (strides 8, 16, 32).

    Args:
        cfg: Which backbone, its weights (`"imagenet"`, a file path or `None`) and whether it
            is frozen.
        input_shape: `(S, S, 3)`.

    Returns:
        A `keras.Model`; with `cfg.freeze_backbone` it has no trainable weights (and its batch
        normalisation layers run in inference mode); otherwise the layers of
        `cfg.frozen_backbone_stages` are frozen, and with `cfg.freeze_backbone_batchnorm`
        every batch-normalisation layer.

    Raises:
        BackboneWeightsError: If requested pre-trained weights cannot be loaded.
        ValueError: If a stage of `cfg.frozen_backbone_stages` names no layer.
    """
    if cfg.backbone == "resnet50":
        backbone = _resnet50(input_shape, cfg.backbone_weights)
    else:
        if cfg.backbone_weights == "imagenet":
            raise BackboneWeightsError(
                "The small backbone has no ImageNet weights; use backbone_weights=None (train "
                f"from scratch), {OPACITY_WEIGHTS_NAME!r} (the shipped weights pre-trained on "
                "a synthetic source task) or a path to weights saved from this architecture."
            )
        backbone = _small_resnet(input_shape, cfg.small_resnet_widths)
        if cfg.backbone_weights == OPACITY_WEIGHTS_NAME:  # shipped: retinanet_lib/weights
            backbone.load_weights(SMALL_RESNET_OPACITY)
        elif cfg.backbone_weights is not None:
            if not Path(cfg.backbone_weights).is_file():
                raise BackboneWeightsError(
                    f"Backbone weights file {cfg.backbone_weights} does not exist."
                )
            backbone.load_weights(cfg.backbone_weights)
    backbone.trainable = not cfg.freeze_backbone
    if not cfg.freeze_backbone:
        freeze_stages(backbone, cfg.frozen_backbone_stages)
        if cfg.freeze_backbone_batchnorm:  # frozen batch norm runs in inference mode
            for layer in backbone.layers:
                if isinstance(layer, layers.BatchNormalization):
                    layer.trainable = False
    return backbone


def freeze_stages(backbone: keras.Model, stages: tuple[str, ...]) -> None:
    """Freezes every layer whose name starts with `"<stage>_"` for one of `stages`.

    Raises:
        ValueError: If a stage names no layer (a typo would otherwise freeze nothing).
    """
    for stage in stages:
        matched = [layer for layer in backbone.layers if layer.name.startswith(f"{stage}_")]
        if not matched:
            names = sorted({layer.name.split("_")[0] for layer in backbone.layers})
            raise ValueError(f"No backbone layer belongs to stage {stage!r}; stages: {names}.")
        for layer in matched:
            layer.trainable = False


def backbone_channels(cfg: ModelConfig) -> tuple[int, int, int]:
    """Channels of the backbone's C3, C4 and C5 outputs, without building it."""
    if cfg.backbone == "resnet50":
        return RESNET50_FEATURE_CHANNELS
    return tuple(cfg.small_resnet_widths[1:])


def _flatten_level(outputs, last_dim: int):
    """`(B, H, W, A * last_dim)` -> `(B, H * W * A, last_dim)` (row, column, anchor order)."""
    height, width, channels = outputs.shape[1:]
    if None in (height, width, channels):
        return ops.reshape(outputs, (ops.shape(outputs)[0], -1, last_dim))
    return ops.reshape(outputs, (-1, height * width * channels // last_dim, last_dim))


@contextlib.contextmanager
def _dtype_policy(name: str) -> Iterator[None]:
    """Layers created inside use the Keras dtype policy `name`; the global policy is restored
    afterwards, so one mixed-precision model does not change the next model built."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_retinanet(cfg: RetinaNetConfig) -> keras.Model:
    """The full detector for `cfg.image_size` square inputs.

    With `cfg.train.mixed_precision` set to `"mixed_float16"` or `"mixed_bfloat16"`, every
    layer computes in 16 bits (variables stay float32), except the three output concatenations,
    which are float32: the loss and the decoder always receive float32 predictions.

    Args:
        cfg: Detector config (image size, classes, anchors per location, model settings,
            precision).

    Returns:
        `keras.Model` named "retinanet", with sub-models/layers named `backbone_*`, `fpn`,
        `class_head` and `box_head` (and `image_logit` with `cfg.model.image_head`); output
        `(B, num_anchors, 4 + num_classes)` float32, or `(B, num_anchors, 4 + num_classes + 1)`
        with the image head.

    Raises:
        BackboneWeightsError: If requested pre-trained weights cannot be loaded.
    """
    size = cfg.image_size
    anchors_per_location = cfg.anchors.num_anchors_per_location
    if cfg.anchors.levels != (3, 4, 5, 6, 7):
        raise ValueError(f"The model builds P3..P7; got anchor levels {cfg.anchors.levels}.")
    with _dtype_policy(cfg.train.mixed_precision):  # float32 unless mixed precision
        inputs = keras.Input((size, size, 3), name="image")
        backbone = build_backbone(cfg.model, (size, size, 3))
        features = backbone(inputs)  # [c3, c4, c5]
        pyramid = FeaturePyramid(cfg.model.fpn_channels, name="fpn")(features)
        class_head = PredictionHead(
            anchors_per_location * cfg.num_classes,
            cfg.model.fpn_channels,
            cfg.model.head_convs,
            bias_value=prior_probability_bias(cfg.model.class_prior),
            name="class_head",
        )
        box_head = PredictionHead(
            anchors_per_location * 4,
            cfg.model.fpn_channels,
            cfg.model.head_convs,
            bias_value=0.0,
            name="box_head",
        )
        boxes = [_flatten_level(box_head(level), 4) for level in pyramid]
        classes = [_flatten_level(class_head(level), cfg.num_classes) for level in pyramid]
        # float32 whatever the policy: these feed the loss and the decoder.
        concat = functools.partial(layers.Concatenate, dtype="float32")
        box_deltas = concat(axis=1, name="box_deltas")(boxes)  # (B, A, 4)
        cls_logits = concat(axis=1, name="cls_logits")(classes)  # (B, A, K)
        parts = [box_deltas, cls_logits]
        if cfg.model.image_head:  # "any opacity?": C5 pooled, one logit, copied per anchor
            pooled = layers.GlobalAveragePooling2D(name="image_pool")(features[-1])
            image_logit = layers.Dense(1, name="image_logit")(pooled)  # (B, 1)
            count = box_deltas.shape[1]
            parts.append(layers.RepeatVector(count, name="image_logit_per_anchor")(image_logit))
        outputs = concat(axis=-1, name="predictions")(parts)
        model = keras.Model(inputs, outputs, name="retinanet")
    expected = num_anchors(size, size, cfg.anchors)
    if model.output_shape[1] != expected:
        raise ValueError(
            f"The model predicts for {model.output_shape[1]} anchors but the anchor generator "
            f"makes {expected}; feature-map sizes and anchors disagree."
        )
    return model


def split_predictions(predictions: TensorLike) -> tuple[Any, Any]:
    """`(..., A, 4 + K)` model output -> box deltas `(..., A, 4)` and class logits `(..., A, K)`.

    Give it detection channels only: `detection_channels` removes an image head's channel.
    """
    predictions = ops.convert_to_tensor(predictions)
    if predictions.shape[-1] is not None and predictions.shape[-1] < 5:
        raise ValueError(f"predictions must have shape (..., A, 4 + K), got {predictions.shape}.")
    return predictions[..., :4], predictions[..., 4:]


def _check_channels(predictions: TensorLike, cfg: RetinaNetConfig) -> None:
    expected = 4 + cfg.num_classes + int(cfg.model.image_head)
    if predictions.shape[-1] is not None and predictions.shape[-1] != expected:
        head = "with" if cfg.model.image_head else "without"
        raise ValueError(
            f"A model {head} an image head and {cfg.num_classes} class(es) predicts "
            f"{expected} channels per anchor; got shape {tuple(predictions.shape)}."
        )


def detection_channels(predictions: TensorLike, cfg: RetinaNetConfig) -> Any:
    """The box deltas and class logits of a model's output: `(..., A, 4 + K)`, without the
    image head's channel (unchanged for a model without one).

    Raises:
        ValueError: If the channels do not match `cfg` (classes, image head).
    """
    _check_channels(predictions, cfg)
    return predictions[..., : 4 + cfg.num_classes]


def image_logits(predictions: TensorLike, cfg: RetinaNetConfig) -> Any | None:
    """The image head's logit of each image, `(B,)`, or `None` for a model without one.

    Args:
        predictions: `(B, A, 4 + K + 1)` output of a model with `cfg.model.image_head`.
        cfg: Its config.
    """
    _check_channels(predictions, cfg)
    if not cfg.model.image_head:
        return None
    return predictions[:, 0, -1]


def backbone_of(model: keras.Model) -> keras.Model:
    """The backbone sub-model of a `build_retinanet` model (named `backbone_*`)."""
    return next(layer for layer in model.layers if layer.name.startswith("backbone"))


def parameter_counts(model: keras.Model) -> dict[str, dict[str, int]]:
    """Trainable and frozen parameter counts of the backbone, the FPN and the two heads (and
    of the image head, when the model has one)."""
    parts = {
        "backbone": backbone_of(model),
        "fpn": model.get_layer("fpn"),
        "class_head": model.get_layer("class_head"),
        "box_head": model.get_layer("box_head"),
    }
    if any(layer.name == "image_logit" for layer in model.layers):
        parts["image_head"] = model.get_layer("image_logit")

    def count(weights) -> int:
        return int(sum(math.prod(w.shape) for w in weights))

    return {
        name: {
            "trainable": count(part.trainable_weights),
            "frozen": count(part.non_trainable_weights),
        }
        for name, part in parts.items()
    }
