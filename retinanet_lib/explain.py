"""Where does the detector look? Grad-CAM and occlusion sensitivity for RetinaNet.

Two answers to a question the blog's box-score map answers a third way:

* **Grad-CAM** (Selvaraju et al., 2017) asks which *features* drive a score. Take the gradient
  of the target score with respect to a feature map `A` (`(h, w, C)`, e.g. a pyramid level),
  average it over the map's positions to get one weight per channel,
  `alpha_c = mean_hw d score / d A[h, w, c]`, and form `ReLU(sum_c alpha_c A[:, :, c])`:
  positive evidence only, at the map's resolution, then upsampled to the input.
* **Occlusion sensitivity** (Zeiler and Fergus, 2014) asks which *pixels* the score needs, with
  no gradient and no knowledge of the network: cover a patch of the image, run the model, and
  record how far the target score falls; slide the patch over the image. The occluded copies
  are built and run in batches, not one by one, and each pixel averages the drops of the
  patches that covered it with the heatmap's difference arrays.

The target is a score computed from the model's `(B, A, 4 + K)` output: by default the
highest class score over all anchors (`top_anchor_score`), or one anchor's logit
(`anchor_logit`) or score (`anchor_score`). `explanation_cases` chooses which anchor to explain
on which image (a true positive, a false positive, a missed opacity, a negative image), and
`explain_anchor` computes the blog's map, Grad-CAM and occlusion for one of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import keras
import numpy as np
import tensorflow as tf

from retinanet_lib.anchors import anchor_level_ids
from retinanet_lib.boxes import pairwise_iou
from retinanet_lib.config import RetinaNetConfig
from retinanet_lib.heatmap import covering_mean, score_heatmap
from retinanet_lib.inference import decode_predictions
from retinanet_lib.metrics import match_detections, pad_boxes, pairwise_iou_batched

__all__ = [
    "Case",
    "anchor_logit",
    "anchor_score",
    "anchor_score_of",
    "best_anchor_for_box",
    "explain_anchor",
    "explanation_cases",
    "grad_cam",
    "mean_activation",
    "occlusion_map",
    "top_anchor_score",
]

TensorLike = Any
Target = Callable[[Any], Any]  # (B, A, 4 + K) predictions -> (B,) scores


def top_anchor_score(predictions: TensorLike) -> Any:
    """`(B,)`: the highest class score (sigmoid) over all anchors and classes of each image."""
    logits = predictions[..., 4:]
    return tf.reduce_max(tf.sigmoid(logits), axis=[1, 2])


def anchor_logit(anchor_index: int, class_index: int = 0) -> Target:
    """A target: the class logit of one anchor (e.g. a chosen detection's), per image."""

    def target(predictions: TensorLike) -> Any:
        return predictions[:, anchor_index, 4 + class_index]

    return target


def anchor_score(anchor_index: int, class_index: int = 0) -> Target:
    """A target: the class score (sigmoid of the logit) of one anchor, per image."""

    def target(predictions: TensorLike) -> Any:
        return tf.sigmoid(predictions[:, anchor_index, 4 + class_index])

    return target


def best_anchor_for_box(
    prediction: TensorLike, box_xyxy: TensorLike, cfg: RetinaNetConfig, min_iou: float = 0.5
) -> int:
    """The anchor whose *decoded* box is the model's best attempt at `box_xyxy`.

    Among the anchors whose decoded box overlaps `box_xyxy` by an IoU above `min_iou`, the one
    with the highest class score; where none does, the anchor with the highest IoU. For a
    detection that NMS kept, this is the anchor that produced it (NMS removed every
    higher-scoring box above its IoU threshold); for a missed ground-truth box, it is the
    model's most confident guess at that box.

    Args:
        prediction: `(A, 4 + K)` one image's model output.
        box_xyxy: `(4,)` the box, in model-input pixels.
        cfg: The model's config (anchors, box variance).
        min_iou: The overlap that counts as "an attempt at the box".

    Returns:
        The anchor's index into the `A` predictions.
    """
    decoded_xyxy, probabilities = decode_predictions(np.asarray(prediction)[None], cfg)
    box = np.asarray(box_xyxy, np.float32).reshape(1, 4)
    iou = np.asarray(pairwise_iou(box, decoded_xyxy[0]))[0]  # (A,)
    scores = np.asarray(probabilities)[0].max(axis=-1)  # (A,)
    if (iou > min_iou).any():
        return int(np.argmax(np.where(iou > min_iou, scores, -1.0)))
    return int(np.argmax(iou))


@dataclass(frozen=True)
class Case:
    """One anchor to explain on one image.

    Attributes:
        image: Index of the image in the split's predictions.
        label: What the case is ("true positive", "false positive", "missed opacity",
            "negative image").
        anchor: Index of the anchor whose score is explained.
        box_xyxy: `(4,)` the box the case is about (the detection, or the missed ground truth);
            for the negative image, the anchor's decoded box.
        score: The anchor's class score.
    """

    image: int
    label: str
    anchor: int
    box_xyxy: np.ndarray
    score: float


def explanation_cases(
    predictions: np.ndarray,
    detections: Sequence[tuple[np.ndarray, np.ndarray]],
    gt_boxes_xyxy: Sequence[np.ndarray],
    cfg: RetinaNetConfig,
    match_iou: float = 0.5,
    skip_absent: bool = False,
) -> list[Case]:
    """Four cases to explain, one of each kind, from one split.

    * **true positive**: the highest-scoring detection that hits a ground-truth box;
    * **false positive**: the highest-scoring detection that hits none;
    * **missed opacity**: the largest ground-truth box that no detection overlaps at IoU
      `match_iou`, explained through the model's best attempt at it (`best_anchor_for_box`);
    * **negative image**: of the images without an opacity, the one whose most confident
      anchor scores highest, explained through that anchor.

    Hits follow the metric's matching at IoU `match_iou` (`metrics.match_detections`). Ties go
    to the first image.

    Args:
        predictions: `(N, A, 4 + K)` the split's model outputs.
        detections: `N` pairs `(boxes_xyxy (n, 4), scores (n,))`: what the model reported
            (after the score threshold and NMS).
        gt_boxes_xyxy: `N` ground-truth arrays `(m, 4)`.
        cfg: The model's config.
        match_iou: The IoU at which a detection hits a ground-truth box.
        skip_absent: Leave out a kind the split has no case of (a model trained elsewhere
            may, say, make no false positive), instead of raising.

    Returns:
        The four cases, in the order above (fewer with `skip_absent`: check the labels).

    Raises:
        ValueError: When the split has no case of one kind (it says which), unless
            `skip_absent`.
    """
    predictions = np.asarray(predictions, np.float32)
    truth = [np.asarray(t, np.float32).reshape(-1, 4) for t in gt_boxes_xyxy]
    boxes_xyxy, scores, valid, hit = match_detections(
        truth, [d[0] for d in detections], [d[1] for d in detections], match_iou
    )
    truth_xyxy, truth_valid = pad_boxes(truth)  # (I, G, 4), (I, G)
    iou = pairwise_iou_batched(truth_xyxy, boxes_xyxy)  # (I, G, N)
    overlaps = np.where(valid[:, None, :], iou, 0.0).max(axis=-1, initial=0.0)  # (I, G)
    missed = truth_valid & (overlaps < match_iou)  # (I, G)
    sides = np.clip(truth_xyxy[..., 2:] - truth_xyxy[..., :2], 0, None)
    areas = np.where(missed, sides.prod(axis=-1), -1.0)
    top_logits = predictions[..., 4:].max(axis=(1, 2))  # (I,): ranks as the scores do
    negative = ~truth_valid.any(axis=1)
    picks = {
        "true positive": (np.where(hit, scores, -1.0), boxes_xyxy),
        "false positive": (np.where(valid & ~hit, scores, -1.0), boxes_xyxy),
        "missed opacity": (areas, truth_xyxy),
    }
    cases, absent = [], []
    for label, (keys, candidates_xyxy) in picks.items():
        if keys.size == 0 or keys.max() < 0:
            absent.append(label)
            continue
        index, slot = np.unravel_index(np.argmax(keys), keys.shape)  # first of ties
        box = candidates_xyxy[index, slot]
        anchor = best_anchor_for_box(predictions[index], box, cfg)
        score = anchor_score_of(predictions[index], anchor)
        cases.append(Case(int(index), label, anchor, box, score))
    if not negative.any():
        absent.append("negative image")
    if absent and not skip_absent:
        raise ValueError(f"The split has no case of these kinds: {', '.join(absent)}.")
    if not negative.any():
        return cases
    index = int(np.argmax(np.where(negative, top_logits, -np.inf)))
    anchor = int(np.argmax(predictions[index, :, 4:].max(axis=-1)))
    decoded_xyxy, _ = decode_predictions(predictions[index : index + 1], cfg)
    box = np.asarray(decoded_xyxy)[0, anchor]
    score = anchor_score_of(predictions[index], anchor)
    cases.append(Case(index, "negative image", anchor, box, score))
    return cases


def anchor_score_of(prediction: np.ndarray, anchor: int) -> float:
    """The class score of one anchor in one image's `(A, 4 + K)` output."""
    return float(1 / (1 + np.exp(-np.max(prediction[anchor, 4:]))))


def _feature_model(model: keras.Model, layer_name: str, output_index: int | None) -> keras.Model:
    """The model with a second output: the feature map Grad-CAM weighs."""
    features = model.get_layer(layer_name).output
    if output_index is not None:
        features = features[output_index]
    return keras.Model(model.inputs, [features, model.outputs[0]])


def _upsample(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """`(B, h, w)` -> `(B, height, width)` float32, bilinear (OpenCV)."""
    return np.stack(
        [cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) for m in maps]
    ).astype(np.float32)


def mean_activation(backbone: keras.Model, images: TensorLike, output_index: int) -> np.ndarray:
    """The mean over channels of one backbone output, upsampled to the input: the notes'
    "activation investigation", without any target score.

    Args:
        backbone: A model returning several feature maps (`build_backbone`'s: C3, C4, C5).
        images: `(B, H, W, C)` model inputs (already preprocessed).
        output_index: Which output (0: C3, 1: C4, 2: C5).

    Returns:
        `(B, H, W)` float32 mean activations (after the stage's ReLU: >= 0).
    """
    images = tf.convert_to_tensor(images, tf.float32)
    features = backbone(images, training=False)[output_index]
    means = tf.reduce_mean(features, axis=-1).numpy()
    return _upsample(means, int(images.shape[1]), int(images.shape[2]))


def grad_cam(
    model: keras.Model,
    images: TensorLike,
    layer_name: str,
    output_index: int | None = None,
    target: Target = top_anchor_score,
) -> np.ndarray:
    """Grad-CAM maps of `target` on the feature map of one layer, upsampled to the input.

    Args:
        model: A functional model (e.g. `build_retinanet`'s).
        images: `(B, H, W, C)` model inputs (already preprocessed).
        layer_name: The layer whose output is the feature map (`"fpn"` for the pyramid).
        output_index: For a layer with several outputs, which one (the FPN's: 0 is P3).
        target: `(B, A, 4 + K) predictions -> (B,)` scores to explain.

    Returns:
        `(B, H, W)` float32 maps in [0, 1], each divided by its maximum (all 0 where no
        positive evidence exists).
    """
    images = tf.convert_to_tensor(images, tf.float32)
    feature_model = _feature_model(model, layer_name, output_index)
    with tf.GradientTape() as tape:
        features, predictions = feature_model(images, training=False)
        scores = target(predictions)
    gradients = tape.gradient(scores, features)  # (B, h, w, C)
    # One weight per channel: the gradient averaged over the positions.
    weights = tf.reduce_mean(gradients, axis=[1, 2], keepdims=True)  # (B, 1, 1, C)
    cams = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))  # (B, h, w)
    upsampled = _upsample(cams.numpy(), int(images.shape[1]), int(images.shape[2]))
    peaks = upsampled.reshape(len(upsampled), -1).max(axis=1)
    scale = np.where(peaks > 0, peaks, 1.0)[:, None, None]
    return (upsampled / scale).astype(np.float32)


def occlusion_map(
    model: keras.Model,
    image: TensorLike,
    patch_size: int,
    stride: int,
    fill_value: float = 0.0,
    target: Target = top_anchor_score,
    batch_size: int = 16,
) -> np.ndarray:
    """How far `target` falls when each patch of the image is covered.

    Every `patch_size` square on a `stride` grid is set to `fill_value` in a copy of the
    image; the copies run through the model `batch_size` at a time. A pixel's value is the
    mean drop over the patches that covered it (`heatmap.covering_mean`).

    Args:
        model: The model.
        image: `(H, W, C)` one model input (already preprocessed).
        patch_size: Side of the square patch, in pixels.
        stride: Step between patch positions (`<= patch_size` covers every pixel).
        fill_value: What a covered pixel becomes (0: mid-grey, pixel value 127.5, for the
            small backbone's inputs scaled to [-1, 1]; in a dark lung field that is brighter
            than its surroundings, so covering can also add opacity-like evidence).
        target: `(B, A, 4 + K) predictions -> (B,)` scores.
        batch_size: Occluded copies per forward pass.

    Returns:
        `(H, W)` float32 drops (positive: covering the pixel lowers the score).
    """
    image = np.asarray(image, np.float32)
    height, width = image.shape[:2]
    if not 0 < stride <= patch_size or patch_size > min(height, width):
        raise ValueError(
            f"Need 0 < stride <= patch_size <= image side, got stride {stride}, patch "
            f"{patch_size}, image {height} x {width}."
        )
    tops = np.arange(0, height - patch_size + 1, stride)
    lefts = np.arange(0, width - patch_size + 1, stride)
    top_grid, left_grid = (a.ravel() for a in np.meshgrid(tops, lefts, indexing="ij"))
    rows, cols = np.arange(height), np.arange(width)
    base = float(np.asarray(target(model(image[None], training=False)))[0])
    drops = np.zeros(len(top_grid), np.float32)
    for start in range(0, len(top_grid), batch_size):  # batches of occluded copies
        top = top_grid[start : start + batch_size, None]
        left = left_grid[start : start + batch_size, None]
        covered_rows = (rows >= top) & (rows < top + patch_size)  # (n, H)
        covered_cols = (cols >= left) & (cols < left + patch_size)  # (n, W)
        covered = covered_rows[:, :, None] & covered_cols[:, None, :]  # (n, H, W)
        batch = np.where(covered[..., None], fill_value, image[None])
        scores = np.asarray(target(model(batch, training=False)))
        drops[start : start + len(scores)] = base - scores
    patches_xyxy = np.stack(
        [left_grid, top_grid, left_grid + patch_size, top_grid + patch_size], axis=1
    )
    return covering_mean(patches_xyxy, drops, (height, width)).astype(np.float32)


def explain_anchor(
    model: keras.Model,
    image: TensorLike,
    prediction: np.ndarray,
    anchor: int,
    cfg: RetinaNetConfig,
    patch_size: int,
    stride: int,
) -> dict[str, np.ndarray]:
    """Three maps of one image for one anchor, on the input's pixel grid.

    * `"mean box score"`: the blog's map (`heatmap.score_heatmap`, every anchor, no NMS);
      where the model puts its boxes and how confident they are, whatever drove them;
    * `"Grad-CAM"`: the anchor's logit explained on the pyramid level that anchor is predicted
      from (the class head sees no other level); which features raise that score, in [0, 1];
    * `"occlusion"`: how far the anchor's score falls when a `patch_size` square covers each
      pixel (mean over the patches, stride `stride`); which pixels that score needs.

    Args:
        model: The trained detector (`build_retinanet`'s, with its `fpn` layer).
        image: `(S, S, 3)` the preprocessed model input.
        prediction: `(A, 4 + K)` the model's output for it.
        anchor: Index of the anchor to explain.
        cfg: The model's config.
        patch_size: Occlusion patch side, in pixels.
        stride: Occlusion step, in pixels.

    Returns:
        `{"mean box score", "Grad-CAM", "occlusion"}` -> `(S, S)` float32 maps.
    """
    boxes_xyxy, probabilities = decode_predictions(np.asarray(prediction)[None], cfg)
    size = (cfg.image_size, cfg.image_size)
    mean_map = score_heatmap(
        np.asarray(boxes_xyxy)[0], np.asarray(probabilities)[0, :, 0], size, reduce="mean"
    )
    level = int(anchor_level_ids(cfg.image_size, cfg.image_size, cfg.anchors)[anchor])
    level_index = list(cfg.anchors.levels).index(level)
    image = np.asarray(image, np.float32)
    cam = grad_cam(model, image[None], "fpn", level_index, target=anchor_logit(anchor))[0]
    drops = occlusion_map(model, image, patch_size, stride, target=anchor_score(anchor))
    return {"mean box score": mean_map.astype(np.float32), "Grad-CAM": cam, "occlusion": drops}
