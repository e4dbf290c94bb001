"""Running a trained detector on DICOM files: detections, heatmaps and the Kaggle submission.

`predict_dicoms` reads each file exactly as training did (DICOM -> CLAHE -> resize), runs the
model in batches, and returns per image the detections mapped back to the original image
(1024 x 1024 for RSNA), and the blog's heatmap at model-input resolution.

The submission format is `patientId,PredictionString` with
`PredictionString = "confidence x y width height confidence x y width height ..."`, boxes in
original-image pixels with a top-left corner (`"xywh"`), empty for an image with no detection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from retinanet_lib.anchors import generate_anchors
from retinanet_lib.boxes import scale_boxes
from retinanet_lib.config import DecodeConfig, RetinaNetConfig
from retinanet_lib.heatmap import score_heatmap
from retinanet_lib.inference import decode_all, non_max_suppression, predict_images
from retinanet_lib.preprocess import load_preprocessed_image, to_model_input

__all__ = ["ImagePrediction", "predict_dicoms", "prediction_string", "submission_table"]


@dataclass(frozen=True)
class ImagePrediction:
    """The prediction for one file.

    Attributes:
        patient_id: File name without `.dcm` (RSNA's patientId).
        image: `(S, S)` uint8 model-input image (after CLAHE and resize).
        boxes_xyxy: `(n, 4)` detections in original-image pixels.
        scores: `(n,)` confidences, descending.
        heatmap: `(S, S)` float32 per-pixel probability (no NMS), or `None`.
        input_to_original_scale: Factor from model-input to original pixels (x, y).
    """

    patient_id: str
    image: np.ndarray
    boxes_xyxy: np.ndarray
    scores: np.ndarray
    heatmap: np.ndarray | None
    input_to_original_scale: tuple[float, float]


def predict_dicoms(
    model: keras.Model,
    cfg: RetinaNetConfig,
    paths: Sequence[str | Path],
    decode_cfg: DecodeConfig | None = None,
    batch_size: int = 8,
    heatmap_reduce: str | None = "mean",
) -> list[ImagePrediction]:
    """Detections (after NMS) and heatmaps (before NMS) for DICOM files.

    Args:
        model: A trained RetinaNet for `cfg`.
        cfg: Its config.
        paths: DICOM files.
        decode_cfg: Score threshold / NMS settings (default `cfg.decode`).
        batch_size: Images per forward pass.
        heatmap_reduce: `"mean"` / `"score_weighted"`, or `None` to skip heatmaps.

    Returns:
        One `ImagePrediction` per path, in order.
    """
    anchors_xyxy = generate_anchors(cfg.image_size, cfg.image_size, cfg.anchors)
    results = []
    for start in range(0, len(paths), batch_size):  # batches of files, not boxes
        batch_paths = [Path(p) for p in paths[start : start + batch_size]]
        loaded = [load_preprocessed_image(p, cfg.image_size, cfg.data) for p in batch_paths]
        images = np.stack([image for image, _ in loaded])
        predictions = predict_images(model, to_model_input(images, cfg.model.backbone), batch_size)
        all_boxes, probabilities = decode_all(predictions, anchors_xyxy, cfg)  # decoded once
        detections = non_max_suppression(all_boxes, probabilities, decode_cfg or cfg.decode)
        for index, (path, (image, (scale_x, scale_y))) in enumerate(
            zip(batch_paths, loaded, strict=True)
        ):
            boxes, scores, _ = detections.for_image(index)
            heatmap = None
            if heatmap_reduce is not None:
                heatmap = score_heatmap(
                    all_boxes[index].numpy(),
                    probabilities[index, :, 0],
                    image.shape,
                    reduce=heatmap_reduce,
                )
            results.append(
                ImagePrediction(
                    patient_id=path.stem,
                    image=image,
                    boxes_xyxy=scale_boxes(boxes, 1 / scale_x, 1 / scale_y).numpy(),
                    scores=scores,
                    heatmap=heatmap,
                    input_to_original_scale=(1 / scale_x, 1 / scale_y),
                )
            )
    return results


def prediction_string(boxes_xyxy: np.ndarray, scores: np.ndarray) -> str:
    """`"conf x y w h ..."` in the Kaggle format; boxes in `"xyxy"` original pixels."""
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores.")
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    sizes = boxes[:, 2:] - boxes[:, :2]
    table = np.column_stack([scores, boxes[:, :2], sizes])  # (n, 5)
    return " ".join(f"{c:.4f} {x:.1f} {y:.1f} {w:.1f} {h:.1f}" for c, x, y, w, h in table)


def submission_table(predictions: Sequence[ImagePrediction]) -> pd.DataFrame:
    """The Kaggle submission: one row per image, `patientId,PredictionString`."""
    return pd.DataFrame(
        {
            "patientId": [p.patient_id for p in predictions],
            "PredictionString": [prediction_string(p.boxes_xyxy, p.scores) for p in predictions],
        }
    )
