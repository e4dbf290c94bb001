"""The `tf.data` input pipeline: RSNA files -> batches of (model input, packed targets).

The blog wraps a Python generator in `tf.data.Dataset.from_generator`; that runs every step in
one Python thread. Here the same steps are `tf.data` stages instead:

1. `from_tensor_slices` over file paths and per-patient boxes (a ragged tensor);
2. parallel `map`: DICOM decode + CLAHE + resize (OpenCV, via `tf.numpy_function`), boxes
   converted from the CSV's `"xywh"` to `"xyxy"` once and scaled by the same factor;
3. `cache()`: the preprocessed 8-bit images are kept (in memory, or in a file), so decoding
   happens once, not every epoch;
4. training only: `shuffle` and random flip/rotation/shift (stateless, seeded);
5. parallel `map`: backbone preprocessing and label encoding against the anchors;
6. `batch` and `prefetch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from retinanet_lib.boxes import xywh_to_xyxy
from retinanet_lib.config import RetinaNetConfig
from retinanet_lib.encoding import LabelEncoder
from retinanet_lib.preprocess import (
    augment,
    load_preprocessed_image,
    resize_boxes_to_input,
    to_model_input,
)
from retinanet_lib.rsna import TRAIN_IMAGES, RsnaLabels

__all__ = ["Records", "make_dataset", "make_records"]


@dataclass(frozen=True)
class Records:
    """Parallel lists describing a set of images.

    Attributes:
        paths: DICOM file paths.
        boxes_xywh: One `(G, 4)` float32 array per image, in original-image pixels.
    """

    paths: list[str]
    boxes_xywh: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.paths)


def make_records(
    root: str | Path, labels: RsnaLabels, patient_ids: list[str], folder: str = TRAIN_IMAGES
) -> Records:
    """Pairs each patient with its DICOM file; a missing file is an error, not a skip.

    Raises:
        FileNotFoundError: Listing how many files are missing and the first few.
    """
    image_dir = Path(root) / folder
    paths = [image_dir / f"{patient_id}.dcm" for patient_id in patient_ids]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} image files are missing from {image_dir}, e.g. "
            f"{missing[:3]}. Is the data folder complete?"
        )
    return Records(
        paths=[str(p) for p in paths],
        boxes_xywh=[labels.boxes_xywh[patient_id] for patient_id in patient_ids],
    )


def _loader(cfg: RetinaNetConfig):
    def load(path: bytes) -> tuple[np.ndarray, np.ndarray]:
        image, scale_xy = load_preprocessed_image(path.decode(), cfg.image_size, cfg.data)
        return image, np.asarray(scale_xy, np.float32)

    def load_sample(path: tf.Tensor, boxes_xywh: tf.Tensor):
        image, scale_xy = tf.numpy_function(load, [path], [tf.uint8, tf.float32], stateful=False)
        image = tf.ensure_shape(image, (cfg.image_size, cfg.image_size))
        boxes_xyxy = resize_boxes_to_input(
            xywh_to_xyxy(boxes_xywh), tf.ensure_shape(scale_xy, (2,))
        )
        return image, boxes_xyxy

    return load_sample


def make_dataset(
    records: Records,
    cfg: RetinaNetConfig,
    batch_size: int,
    training: bool,
    cache: bool | str = True,
    encode: bool = True,
) -> tf.data.Dataset:
    """Builds the input pipeline.

    Args:
        records: Images and their boxes.
        cfg: Detector config (image size, data settings, backbone for preprocessing, anchors).
        batch_size: Images per batch.
        training: Shuffle and augment (with `cfg.data`'s settings) and drop the last partial
            batch; otherwise keep the file order and every image.
        cache: `True` caches preprocessed images in memory, a string caches them in that file,
            `False` decodes every epoch.
        encode: If False, yield `(image uint8 (S, S), boxes_xyxy (G, 4))` per image, unbatched,
            before backbone preprocessing (for inspection and plots).

    Returns:
        A dataset of `(images (B, S, S, 3) float32, targets (B, num_anchors, 5) float32)`.
    """
    if len(records) == 0:
        raise ValueError("make_dataset got no records.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    boxes = tf.ragged.constant(
        [b.tolist() for b in records.boxes_xywh],
        ragged_rank=1,
        inner_shape=(4,),
        dtype=tf.float32,
    )
    dataset = tf.data.Dataset.from_tensor_slices((tf.constant(records.paths), boxes))
    dataset = dataset.map(_loader(cfg), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache is not False:
        dataset = dataset.cache("" if cache is True else str(cache))
    if training:
        dataset = dataset.shuffle(
            min(cfg.data.shuffle_buffer, len(records)),
            seed=cfg.data.seed,
            reshuffle_each_iteration=True,
        )
        if cfg.data.augments:
            seeds = tf.data.Dataset.random(seed=cfg.data.seed, rerandomize_each_iteration=True)
            dataset = tf.data.Dataset.zip(dataset, seeds.batch(2))
            dataset = dataset.map(
                lambda sample, seed: augment(sample[0], sample[1], cfg.data, seed),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
    if not encode:
        return dataset
    encoder = LabelEncoder(cfg)

    def to_training_pair(image, boxes_xyxy):
        classes = tf.zeros(tf.shape(boxes_xyxy)[:1], tf.int32)  # one class: lung opacity
        targets = encoder.encode_sample(boxes_xyxy, classes)
        return to_model_input(image, cfg.model.backbone), targets

    dataset = dataset.map(to_training_pair, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=training)
    return dataset.prefetch(tf.data.AUTOTUNE)
