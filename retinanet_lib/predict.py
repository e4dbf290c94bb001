"""Running a trained detector on DICOM files: detections, heatmaps and the Kaggle submission.

`iter_predictions` streams: it reads the files in parallel (`tf.data`: DICOM -> CLAHE ->
resize, exactly as training did), overlapped with the compiled inference graph
(`inference.build_detector`), and yields one `ImagePrediction` per readable file as soon as its
batch is done, so memory stays bounded however many files there are. A file that cannot be read
is skipped and recorded in a `RejectLog`; it never stops the run. Detections are mapped back to
the original image (1024 x 1024 for RSNA); the blog's heatmap stays at model-input resolution.

The submission format is `patientId,PredictionString` with
`PredictionString = "confidence x y width height confidence x y width height ..."`, boxes in
original-image pixels with a top-left corner (`"xywh"`), empty for an image with no detection.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from retinanet_lib.config import DecodeConfig, RetinaNetConfig
from retinanet_lib.heatmap import score_heatmap
from retinanet_lib.inference import build_detector
from retinanet_lib.pipeline import load_images
from retinanet_lib.rejects import RejectLog

__all__ = [
    "ImagePrediction",
    "iter_predictions",
    "predict_dicoms",
    "prediction_string",
    "submission_table",
]


@dataclass(frozen=True)
class ImagePrediction:
    """The prediction for one file.

    Attributes:
        patient_id: File name without `.dcm` (RSNA's patientId).
        path: The DICOM file.
        image: `(S, S)` uint8 model-input image (after CLAHE and resize).
        boxes_xyxy: `(n, 4)` detections in original-image pixels.
        scores: `(n,)` confidences, descending.
        heatmap: `(S, S)` float32 map of mean box scores (no NMS), or `None`.
        input_to_original_scale: Factor from model-input to original pixels (x, y).
        image_probability: The image-level probability gating compares with its gate (the
            image head's, or the top anchor score: `inference.image_probabilities`).
    """

    patient_id: str
    path: str
    image: np.ndarray
    boxes_xyxy: np.ndarray
    scores: np.ndarray
    heatmap: np.ndarray | None
    input_to_original_scale: tuple[float, float]
    image_probability: float | None = None

    @property
    def boxes_xyxy_input(self) -> np.ndarray:
        """The detections in model-input pixels (the frame of `image` and `heatmap`)."""
        scale_x, scale_y = self.input_to_original_scale
        return self.boxes_xyxy / np.array([scale_x, scale_y, scale_x, scale_y], np.float32)


def iter_predictions(
    model: keras.Model | Sequence[keras.Model],
    cfg: RetinaNetConfig,
    paths: Sequence[str | Path],
    decode_cfg: DecodeConfig | None = None,
    batch_size: int = 8,
    heatmap_reduce: str | None = "mean",
    rejects: RejectLog | None = None,
) -> Iterator[ImagePrediction]:
    """Detections (after NMS) and heatmaps (before NMS) for DICOM files, one at a time.

    Args:
        model: A trained RetinaNet for `cfg`, or a list of them, whose outputs are averaged
            anchor by anchor (an ensemble, `inference.ensemble_predictions`).
        cfg: Its config (the ensemble's shared one); `cfg.decode.gate_threshold` gates.
        paths: DICOM files.
        decode_cfg: Score threshold / NMS settings (default `cfg.decode`).
        batch_size: Images per forward pass.
        heatmap_reduce: `"mean"` / `"score_weighted"`, or `None` to skip heatmaps.
        rejects: Unreadable files are recorded here and skipped; without a log they raise.

    Yields:
        One `ImagePrediction` per readable path, in the order of `paths`.
    """
    paths = [str(p) for p in paths]
    detector = build_detector(model, cfg, decode_cfg, keep_all=heatmap_reduce is not None)
    dataset = load_images(paths, cfg, rejects).batch(batch_size).prefetch(2)
    # No autotuning thread: with slow forward passes (ResNet50 on a CPU) its back-off grows
    # to seconds, and deleting the iterator at the end waited that long (2.5 s measured).
    options = tf.data.Options()
    options.autotune.enabled = False
    dataset = dataset.with_options(options)
    for indices, images, scales_xy in dataset:  # batches of files, not boxes
        outputs = {name: value.numpy() for name, value in detector(images).items()}
        images_np, scales_np = images.numpy(), scales_xy.numpy().astype(np.float32)
        # Model-input -> original pixels for the whole batch: divide x by scale_x, y by scale_y.
        original_xyxy = outputs["boxes_xyxy"] / np.tile(scales_np, 2)[:, None, :]  # (B, D, 4)
        for row, index in enumerate(indices.numpy()):
            count = int(outputs["num_detections"][row])
            heatmap = None
            if heatmap_reduce is not None:
                heatmap = score_heatmap(
                    outputs["all_boxes_xyxy"][row],
                    outputs["probabilities"][row, :, 0],
                    (cfg.image_size, cfg.image_size),
                    reduce=heatmap_reduce,
                )
            scale_x, scale_y = (1.0 / float(v) for v in scales_np[row])
            yield ImagePrediction(
                patient_id=Path(paths[index]).stem,
                path=paths[index],
                image=images_np[row],
                boxes_xyxy=original_xyxy[row, :count],
                scores=outputs["scores"][row, :count],
                heatmap=heatmap,
                input_to_original_scale=(scale_x, scale_y),
                image_probability=float(outputs["image_probability"][row]),
            )


def predict_dicoms(
    model: keras.Model | Sequence[keras.Model],
    cfg: RetinaNetConfig,
    paths: Sequence[str | Path],
    decode_cfg: DecodeConfig | None = None,
    batch_size: int = 8,
    heatmap_reduce: str | None = "mean",
    rejects: RejectLog | None = None,
) -> list[ImagePrediction]:
    """`iter_predictions` collected into a list (for a handful of files; stream for many)."""
    return list(
        iter_predictions(model, cfg, paths, decode_cfg, batch_size, heatmap_reduce, rejects)
    )


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


def submission_table(
    predictions: Sequence[ImagePrediction], all_patient_ids: Sequence[str] | None = None
) -> pd.DataFrame:
    """The Kaggle submission: one row per image, `patientId,PredictionString`.

    Args:
        predictions: Predictions of the readable files.
        all_patient_ids: Every patient that needs a row, in order (e.g. from every input
            file); patients without a prediction (unreadable files) get an empty string.
            Default: the predictions' own patients.
    """
    strings = {p.patient_id: prediction_string(p.boxes_xyxy, p.scores) for p in predictions}
    ids = list(all_patient_ids) if all_patient_ids is not None else list(strings)
    return pd.DataFrame(
        {"patientId": ids, "PredictionString": [strings.get(pid, "") for pid in ids]}
    )
