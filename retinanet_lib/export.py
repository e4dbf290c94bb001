"""Exporting a trained run as a TensorFlow SavedModel that needs nothing from this library.

The exported graph is `inference.build_detector`: backbone preprocessing, the forward pass,
decoding of every anchor, the score threshold and NMS (and, optionally, the blog's heatmap),
with the run's config baked in. Its serving signature takes a batch of **preprocessed** 8-bit
images, i.e. DICOM pixels after CLAHE and the resize to the model's input size
(`preprocess.load_preprocessed_image` does both), and returns, in model-input pixels:

* `boxes_xyxy` `(B, D, 4)` float32, `scores` `(B, D)`, `classes` `(B, D)` int32 and
  `num_detections` `(B,)` int32 (the first `num_detections[i]` rows of image `i` are valid);
* `image_probability` `(B,)` float32: the image head's "any opacity" probability, or without
  a head the image's top anchor probability (what gating compares with its threshold);
* with `with_heatmap=True`, also `heatmap` `(B, S, S)` float32.

Load it anywhere TensorFlow runs, without `retinanet_lib`:

    import tensorflow as tf
    detector = tf.saved_model.load("runs/cpu/saved_model")
    outputs = detector.serve(images_uint8)        # or detector.signatures["serving_default"]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import tensorflow as tf

from retinanet_lib.config import RetinaNetConfig
from retinanet_lib.heatmap import score_heatmap_tf
from retinanet_lib.inference import build_detector

__all__ = ["SERVING_OUTPUTS", "export_inference_model"]

#: Output names of the serving signature (plus `heatmap` when exported with one).
SERVING_OUTPUTS = ("boxes_xyxy", "scores", "classes", "num_detections", "image_probability")


def export_inference_model(
    model: keras.Model | Sequence[keras.Model],
    cfg: RetinaNetConfig,
    export_dir: str | Path,
    with_heatmap: bool = False,
    heatmap_reduce: str = "mean",
) -> Path:
    """Writes the detector as a SavedModel with a `serve` endpoint (also `serving_default`).

    Args:
        model: A trained RetinaNet for `cfg` (e.g. from `train.load_trained_model`, whose
            config carries the run's chosen score threshold), or a list of them: the
            SavedModel then holds every model and serves their ensemble
            (`inference.ensemble_predictions`), one graph, one signature.
        cfg: Its config (for an ensemble: the config its members share); `cfg.decode`
            (score threshold, NMS, flip TTA, image-level gate) is baked in.
        export_dir: Output folder (created; must not hold another SavedModel).
        with_heatmap: Also output the blog's per-pixel heatmap.
        heatmap_reduce: `"mean"` (the blog's) or `"score_weighted"`.

    Returns:
        `export_dir` as a `Path`.
    """
    export_dir = Path(export_dir)
    if (export_dir / "saved_model.pb").exists():
        raise FileExistsError(f"{export_dir} already holds a SavedModel; pick another folder.")
    detector = build_detector(model, cfg, keep_all=with_heatmap)
    size = cfg.image_size

    def serve(images):
        outputs = detector(images)
        if with_heatmap:
            all_boxes = outputs.pop("all_boxes_xyxy")
            probabilities = outputs.pop("probabilities")
            outputs["heatmap"] = score_heatmap_tf(
                all_boxes, probabilities[..., 0], size, heatmap_reduce
            )
        return outputs

    archive = keras.export.ExportArchive()
    for member in model if isinstance(model, (list, tuple)) else [model]:
        archive.track(member)
    archive.add_endpoint(
        "serve", serve, input_signature=[tf.TensorSpec((None, size, size), tf.uint8)]
    )
    archive.write_out(str(export_dir), verbose=False)
    return export_dir
