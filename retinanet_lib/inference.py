"""From model outputs to boxes: decoding every anchor, and detections after NMS.

Two modes, as in the blog:

* `decode_all` decodes **every** anchor's box and class probability, without NMS. The blog's
  author dropped NMS and drew all of them as a heatmap (Chapter 5).
* `detect` keeps the usual detector output: a score threshold, then non-maximum suppression,
  then at most `max_detections` boxes per image.

The forward pass runs through `compiled_predictor`, one `tf.function` per model (about 4x faster
than calling the Keras model eagerly on a CPU), optionally with horizontal-flip test-time
augmentation. Boxes are in model-input pixels; `rescale_to_original` maps them back to the
1024 x 1024 image.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from retinanet_lib.anchors import feature_map_sizes, generate_anchors
from retinanet_lib.boxes import clip_boxes, scale_boxes
from retinanet_lib.config import AnchorConfig, DecodeConfig, RetinaNetConfig
from retinanet_lib.encoding import decode_box_deltas
from retinanet_lib.model import detection_channels, image_logits, split_predictions
from retinanet_lib.preprocess import to_model_input

__all__ = [
    "Detections",
    "build_detector",
    "compiled_predictor",
    "decode_all",
    "decode_predictions",
    "detect",
    "ensemble_predictions",
    "gate_detections",
    "image_probabilities",
    "level_probability_maps",
    "merge_flipped_predictions",
    "mirror_anchor_indices",
    "nms_tensors",
    "non_max_suppression",
    "predict_images",
    "rescale_to_original",
]

TensorLike = Any
#: Ensembled probabilities are kept in [eps, 1 - eps] before they become logits again, so
#: that a saturated model's 0 or 1 gives a finite logit (float32 resolves 1 - 1e-7).
ENSEMBLE_PROBABILITY_EPSILON = 1e-7


def mirror_anchor_indices(image_size: int, cfg: AnchorConfig) -> np.ndarray:
    """For every anchor, the index of its mirror image under a horizontal flip.

    Anchor `(level, row i, column j, shape a)` mirrors to `(level, i, W - 1 - j, a)`: the
    shapes are symmetric and the centres `(j + 0.5) * stride` mirror onto the grid when the
    input side is a multiple of the coarsest stride.

    Args:
        image_size: Side of the square model input.
        cfg: Anchor configuration.

    Returns:
        `(num_anchors,)` int32 permutation (an involution: applying it twice is the identity).

    Raises:
        ValueError: If the grid is not symmetric (`image_size` not a multiple of every stride).
    """
    if image_size % max(cfg.strides):
        raise ValueError(
            f"Flip TTA needs an input side divisible by {max(cfg.strides)}, got {image_size}."
        )
    shapes = cfg.num_anchors_per_location
    indices, offset = [], 0
    for height, width in feature_map_sizes(image_size, image_size, cfg):
        rows, cols, shape = np.meshgrid(
            np.arange(height), np.arange(width), np.arange(shapes), indexing="ij"
        )
        mirrored = (rows * width + (width - 1 - cols)) * shapes + shape  # (H, W, A)
        indices.append(offset + mirrored.ravel())
        offset += height * width * shapes
    return np.concatenate(indices).astype(np.int32)


def merge_flipped_predictions(
    predictions: TensorLike, flipped_predictions: TensorLike, mirror_index: TensorLike
) -> tf.Tensor:
    """Averages predictions on an image and on its mirror image, anchor by anchor.

    The flipped image's prediction for anchor `mirror_index[k]` describes the same place as
    anchor `k` of the original, mirrored: its x offset changes sign, the rest is unchanged.

    Args:
        predictions: `(B, A, 4 + K)` outputs on the images.
        flipped_predictions: `(B, A, 4 + K)` outputs on the horizontally flipped images.
        mirror_index: `(A,)` from `mirror_anchor_indices`.

    Returns:
        `(B, A, 4 + K)` averaged outputs (box deltas and class logits).
    """
    mirrored = tf.gather(tf.convert_to_tensor(flipped_predictions), mirror_index, axis=1)
    sign = tf.concat([[-1.0], tf.ones([tf.shape(mirrored)[-1] - 1])], axis=0)
    return (tf.convert_to_tensor(predictions) + mirrored * sign) / 2.0


# Compiled functions, per model. They reach the model through a weak reference: a strong one in
# the cached function would keep every model (and its graph) alive for the whole process.
_PREDICTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_DETECTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _mirror_index_or_none(cfg: RetinaNetConfig, flip_tta: bool) -> tf.Tensor | None:
    if not flip_tta:
        return None
    return tf.constant(mirror_anchor_indices(cfg.image_size, cfg.anchors))


def _forward(model: Any, inputs: tf.Tensor, mirror_index: tf.Tensor | None) -> tf.Tensor:
    """Model outputs, averaged with the mirrored pass when `mirror_index` is given."""
    predictions = model(inputs, training=False)
    if mirror_index is None:
        return predictions
    flipped = model(tf.reverse(inputs, axis=[2]), training=False)
    return merge_flipped_predictions(predictions, flipped, mirror_index)


def compiled_predictor(model: Any, cfg: RetinaNetConfig) -> Callable[[TensorLike], tf.Tensor]:
    """The model's forward pass as one compiled `tf.function` (built once per model).

    Args:
        model: A RetinaNet for `cfg`.
        cfg: Its config; `cfg.decode.flip_tta` adds the mirrored pass.

    Returns:
        A function `(B, S, S, 3) float32 model inputs -> (B, A, 4 + K) float32 outputs`.
    """
    key = (cfg.image_size, cfg.decode.flip_tta)
    cache = _PREDICTORS.setdefault(model, {})
    if key in cache:
        return cache[key]
    size = cfg.image_size
    mirror_index = _mirror_index_or_none(cfg, cfg.decode.flip_tta)
    model_ref = weakref.ref(model)

    @tf.function(input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)])
    def predict(images):
        return _forward(model_ref(), images, mirror_index)

    cache[key] = predict
    return predict


def predict_images(
    model: Any, images: TensorLike, cfg: RetinaNetConfig, batch_size: int = 8
) -> np.ndarray:
    """Model outputs for an in-memory `(N, S, S, 3)` array of model inputs, `batch_size` at a
    time, through `compiled_predictor`.

    Returns:
        `(N, num_anchors, 4 + K)` float32 array.
    """
    predict = compiled_predictor(model, cfg)
    images = tf.convert_to_tensor(images, tf.float32)
    outputs = [
        predict(images[start : start + batch_size]).numpy()
        for start in range(0, int(images.shape[0]), batch_size)
    ]
    if not outputs:
        return np.zeros((0, *model.output_shape[1:]), np.float32)
    return np.concatenate(outputs)


def decode_all(
    predictions: TensorLike, anchors_xyxy: TensorLike, cfg: RetinaNetConfig
) -> tuple[tf.Tensor, tf.Tensor]:
    """Every anchor's decoded box and class probabilities (no threshold, no NMS).

    Args:
        predictions: `(B, A, 4 + K)` model output.
        anchors_xyxy: `(A, 4)` the anchors the model was trained with.
        cfg: Detector config (box variance, image size for clipping).

    Returns:
        `boxes_xyxy (B, A, 4)` clipped to the input image, and `probabilities (B, A, K)`.
    """
    box_deltas, cls_logits = split_predictions(tf.convert_to_tensor(predictions, tf.float32))
    if box_deltas.shape[-2] is not None and box_deltas.shape[-2] != anchors_xyxy.shape[0]:
        raise ValueError(f"{box_deltas.shape[-2]} predictions but {anchors_xyxy.shape[0]} anchors.")
    boxes = decode_box_deltas(anchors_xyxy, box_deltas, cfg.encoder.box_variance)
    return clip_boxes(boxes, cfg.image_size, cfg.image_size), tf.sigmoid(cls_logits)


@dataclass(frozen=True)
class Detections:
    """Detections of a batch after NMS, padded to `max_detections`.

    Attributes:
        boxes_xyxy: `(B, D, 4)` float32 in model-input pixels.
        scores: `(B, D)` float32 probabilities, descending; 0 on padding.
        classes: `(B, D)` int32 class ids.
        num_detections: `(B,)` int32 valid entries per image.
    """

    boxes_xyxy: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    num_detections: np.ndarray

    def for_image(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`(boxes_xyxy (n, 4), scores (n,), classes (n,))` of one image, without padding."""
        count = int(self.num_detections[index])
        return (
            self.boxes_xyxy[index, :count],
            self.scores[index, :count],
            self.classes[index, :count],
        )


def nms_tensors(
    boxes_xyxy: TensorLike, probabilities: TensorLike, decode_cfg: DecodeConfig
) -> dict[str, tf.Tensor]:
    """Score threshold + per-class NMS as TensorFlow ops (usable inside a `tf.function`).

    Only the `max_candidates` highest-scoring anchors of each image enter
    `tf.image.combined_non_max_suppression` (torchvision's pre-NMS top-k): a lower-ranked box
    is dropped even where NMS would have kept it, which needs more than `max_candidates`
    boxes above the score threshold.

    Args:
        boxes_xyxy: `(B, A, 4)` decoded boxes in model-input pixels.
        probabilities: `(B, A, K)` class probabilities.
        decode_cfg: Score threshold, NMS IoU threshold, detections per image.

    Returns:
        `boxes_xyxy (B, D, 4)`, `scores (B, D)`, `classes (B, D)` int32 and
        `num_detections (B,)` int32, padded to `D = max_detections`.
    """
    boxes_xyxy = tf.convert_to_tensor(boxes_xyxy, tf.float32)
    probabilities = tf.convert_to_tensor(probabilities, tf.float32)
    num_candidates = tf.minimum(decode_cfg.max_candidates, tf.shape(probabilities)[1])
    _, top = tf.math.top_k(tf.reduce_max(probabilities, axis=-1), k=num_candidates)  # (B, C)
    boxes_xyxy = tf.gather(boxes_xyxy, top, batch_dims=1)
    probabilities = tf.gather(probabilities, top, batch_dims=1)
    # combined NMS wants (B, C, 1, 4) boxes shared by all classes, in (y1, x1, y2, x2).
    boxes_yxyx = tf.gather(boxes_xyxy, [1, 0, 3, 2], axis=-1)[:, :, None, :]
    result = tf.image.combined_non_max_suppression(
        boxes_yxyx,
        probabilities,
        max_output_size_per_class=decode_cfg.max_detections,
        max_total_size=decode_cfg.max_detections,
        iou_threshold=decode_cfg.nms_iou_threshold,
        score_threshold=decode_cfg.score_threshold,
        clip_boxes=False,
    )
    return {
        "boxes_xyxy": tf.gather(result.nmsed_boxes, [1, 0, 3, 2], axis=-1),
        "scores": result.nmsed_scores,
        "classes": tf.cast(result.nmsed_classes, tf.int32),
        "num_detections": tf.cast(result.valid_detections, tf.int32),
    }


def non_max_suppression(
    boxes_xyxy: TensorLike, probabilities: TensorLike, decode_cfg: DecodeConfig
) -> Detections:
    """`nms_tensors` on boxes that are already decoded (the output of `decode_all`), as NumPy.

    Args:
        boxes_xyxy: `(B, A, 4)` decoded boxes in model-input pixels.
        probabilities: `(B, A, K)` class probabilities.
        decode_cfg: Score threshold, NMS IoU threshold, detections per image.

    Returns:
        Padded `Detections`.
    """
    result = nms_tensors(boxes_xyxy, probabilities, decode_cfg)
    return Detections(**{name: value.numpy() for name, value in result.items()})


def detect(
    predictions: TensorLike,
    anchors_xyxy: TensorLike,
    cfg: RetinaNetConfig,
    decode_cfg: DecodeConfig | None = None,
) -> Detections:
    """`decode_all`, then score threshold + per-class NMS (`non_max_suppression`).

    Args:
        predictions: `(B, A, 4 + K)` model output.
        anchors_xyxy: `(A, 4)` anchors.
        cfg: Detector config.
        decode_cfg: Overrides `cfg.decode` (e.g. another score threshold).

    Returns:
        Padded `Detections`.
    """
    boxes_xyxy, probabilities = decode_all(predictions, anchors_xyxy, cfg)
    return non_max_suppression(boxes_xyxy, probabilities, decode_cfg or cfg.decode)


def build_detector(
    model: Any,
    cfg: RetinaNetConfig,
    decode_cfg: DecodeConfig | None = None,
    keep_all: bool = False,
) -> Callable[[TensorLike], dict[str, tf.Tensor]]:
    """The whole inference graph as one `tf.function`: 8-bit images in, detections out.

    Backbone preprocessing, the forward pass (with flip TTA if `decode_cfg.flip_tta`; of
    every model of an ensemble, averaged by `ensemble_predictions`), decoding of every anchor,
    the score threshold, NMS and image-level gating (`decode_cfg.gate_threshold`), all
    compiled together. This is the path of `predict.iter_predictions` and of the exported
    SavedModel (`export`). For one model the function is built and traced once per model and
    settings, then reused (tracing a ResNet50 graph takes seconds).

    Args:
        model: A RetinaNet for `cfg`, or a list of them (an ensemble: same config, so the
            same anchors and heads; trained with different seeds, say).
        cfg: Its config.
        decode_cfg: Score threshold, NMS, flip TTA and gating settings (default `cfg.decode`).
        keep_all: Also return every anchor's box and probability (for the heatmap).

    Returns:
        A function `(B, S, S) uint8 images (after CLAHE and resize) -> dict` with
        `boxes_xyxy (B, D, 4)` in model-input pixels, `scores (B, D)`, `classes (B, D)`,
        `num_detections (B,)`, `image_probability (B,)` (`image_probabilities`) and, with
        `keep_all`, `all_boxes_xyxy (B, A, 4)` and `probabilities (B, A, K)`.
    """
    decode_cfg = decode_cfg or cfg.decode
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    if not models:
        raise ValueError("build_detector needs a model or a non-empty list of models.")
    if len(models) > 1:  # an ensemble: built for the caller, not cached
        return _build_detector(models, cfg, decode_cfg, keep_all)
    key = (cfg, decode_cfg, keep_all)  # frozen dataclasses: hashable, equal by value
    cache = _DETECTORS.setdefault(models[0], {})
    if key not in cache:
        cache[key] = _build_detector(models, cfg, decode_cfg, keep_all)
    return cache[key]


def _build_detector(
    models: list[Any], cfg: RetinaNetConfig, decode_cfg: DecodeConfig, keep_all: bool
) -> Callable[[TensorLike], dict[str, tf.Tensor]]:
    size = cfg.image_size
    anchors_xyxy = generate_anchors(size, size, cfg.anchors)
    mirror_index = _mirror_index_or_none(cfg, decode_cfg.flip_tta)
    model_refs = [weakref.ref(model) for model in models]

    @tf.function(input_signature=[tf.TensorSpec((None, size, size), tf.uint8, name="images")])
    def detect_images(images):
        inputs = to_model_input(images, cfg.model.backbone)
        predictions = ensemble_predictions(
            [_forward(ref(), inputs, mirror_index) for ref in model_refs]
        )
        boxes_xyxy, probabilities = decode_all(
            detection_channels(predictions, cfg), anchors_xyxy, cfg
        )
        image_probability = image_probabilities(predictions, cfg)
        outputs = nms_tensors(boxes_xyxy, probabilities, decode_cfg)
        outputs = gate_detections(outputs, image_probability, decode_cfg.gate_threshold)
        outputs["image_probability"] = image_probability
        if keep_all:
            outputs["all_boxes_xyxy"] = boxes_xyxy
            outputs["probabilities"] = probabilities
        return outputs

    return detect_images


def rescale_to_original(boxes_xyxy: TensorLike, input_to_original_scale: float) -> np.ndarray:
    """Model-input boxes -> original-image boxes (e.g. x4 from 256 px back to 1024 px)."""
    return scale_boxes(boxes_xyxy, input_to_original_scale, input_to_original_scale).numpy()


def level_probability_maps(predictions: TensorLike, cfg: RetinaNetConfig) -> list[np.ndarray]:
    """Per pyramid level, the highest class probability among the anchors at each position.

    The heads predict `A` anchors at every cell of every level, in the order of
    `generate_anchors` (level by level, then row, column, anchor shape). This undoes that
    order: which level, and where on it, the model is confident of an opacity.

    Args:
        predictions: `(B, N, 4 + num_classes)` raw model outputs.
        cfg: The model's configuration (image size and anchors).

    Returns:
        One `(B, H_l, W_l)` float32 array per level in `cfg.anchors.levels`, values in [0, 1].

    Raises:
        ValueError: If `N` does not match the number of anchors of `cfg`.
    """
    predictions = detection_channels(tf.convert_to_tensor(predictions, tf.float32), cfg)
    _, cls_logits = split_predictions(predictions)
    probabilities = tf.reduce_max(tf.sigmoid(cls_logits), axis=-1).numpy()  # (B, N)
    per_location = cfg.anchors.num_anchors_per_location
    sizes = feature_map_sizes(cfg.image_size, cfg.image_size, cfg.anchors)
    counts = [height * width * per_location for height, width in sizes]
    if probabilities.shape[1] != sum(counts):
        raise ValueError(f"{probabilities.shape[1]} predictions but {sum(counts)} anchors.")
    chunks = np.split(probabilities, np.cumsum(counts)[:-1], axis=1)
    return [
        chunk.reshape(len(chunk), height, width, per_location).max(axis=-1)
        for chunk, (height, width) in zip(chunks, sizes, strict=True)
    ]


def decode_predictions(
    predictions: TensorLike, cfg: RetinaNetConfig
) -> tuple[tf.Tensor, tf.Tensor]:
    """`decode_all` with the anchors of `cfg` (its image size and anchor settings), on the
    detection channels (an image head's channel is left out).

    Returns:
        `boxes_xyxy (B, A, 4)` and `probabilities (B, A, K)`.
    """
    anchors_xyxy = generate_anchors(cfg.image_size, cfg.image_size, cfg.anchors)
    predictions = detection_channels(tf.convert_to_tensor(predictions, tf.float32), cfg)
    return decode_all(predictions, anchors_xyxy, cfg)


def image_probabilities(predictions: TensorLike, cfg: RetinaNetConfig) -> tf.Tensor:
    """Each image's probability of "any opacity", the quantity gating compares with
    `DecodeConfig.gate_threshold`: the image head's sigmoid for a model with one, otherwise
    the image's highest anchor probability (the score of its top detection).

    Args:
        predictions: `(B, A, C)` model outputs (also ensembled or flip-averaged ones).
        cfg: The model's config.

    Returns:
        `(B,)` float32 probabilities.
    """
    predictions = tf.convert_to_tensor(predictions, tf.float32)
    logits = image_logits(predictions, cfg)
    if logits is None:
        _, cls_logits = split_predictions(detection_channels(predictions, cfg))
        logits = tf.reduce_max(cls_logits, axis=[1, 2])  # sigmoid is monotonic
    return tf.sigmoid(logits)


def gate_detections(
    detections: dict[str, tf.Tensor],
    image_probability: TensorLike,
    gate_threshold: float | None,
) -> dict[str, tf.Tensor]:
    """Image-level gating: an image whose probability is below `gate_threshold` keeps no
    detection (its boxes and scores are zeroed, `num_detections` set to 0).

    Args:
        detections: `nms_tensors` output (padded, `(B, D, ...)`).
        image_probability: `(B,)` from `image_probabilities`.
        gate_threshold: The gate, or `None` for none (the detections are returned as they are).

    Returns:
        The detections, gated, same keys and shapes.
    """
    if gate_threshold is None:
        return detections
    probability = tf.convert_to_tensor(image_probability, tf.float32)
    keep = probability >= gate_threshold  # (B,)
    gated = dict(detections)
    gated["num_detections"] = tf.where(keep, detections["num_detections"], 0)
    gated["scores"] = tf.where(keep[:, None], detections["scores"], 0.0)
    boxes = detections["boxes_xyxy"]
    gated["boxes_xyxy"] = tf.where(keep[:, None, None], boxes, 0.0)
    return gated


def ensemble_predictions(predictions: Sequence[TensorLike]) -> tf.Tensor:
    """Averages the outputs of several models that share the anchors, anchor by anchor.

    Box deltas are averaged; class (and image-head) outputs are averaged as probabilities
    and turned back into logits, so the result is a model output like any other (decoding,
    NMS, gating and flip TTA apply unchanged). One model's output is returned as it is.

    Args:
        predictions: `M` arrays `(B, A, C)`, the same shape, from models with the same
            anchors, classes and heads.

    Returns:
        `(B, A, C)` float32 ensembled outputs.

    Raises:
        ValueError: If there is no prediction or the shapes differ.
    """
    if not predictions:
        raise ValueError("No predictions to ensemble.")
    tensors = [tf.convert_to_tensor(p, tf.float32) for p in predictions]
    shapes = {tuple(t.shape.as_list()) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(f"Predictions of different shapes: {sorted(shapes)}.")
    if len(tensors) == 1:
        return tensors[0]
    stacked = tf.stack(tensors)  # (M, B, A, C)
    deltas = tf.reduce_mean(stacked[..., :4], axis=0)
    probability = tf.reduce_mean(tf.sigmoid(stacked[..., 4:]), axis=0)
    epsilon = ENSEMBLE_PROBABILITY_EPSILON
    probability = tf.clip_by_value(probability, epsilon, 1.0 - epsilon)
    logits = tf.math.log(probability) - tf.math.log1p(-probability)
    return tf.concat([deltas, logits], axis=-1)
