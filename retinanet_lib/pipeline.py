"""The `tf.data` input pipeline: RSNA files -> batches of (model input, packed targets).

The blog wraps a Python generator in `tf.data.Dataset.from_generator`; that runs every step in
one Python thread. Here the same steps are `tf.data` stages instead:

1. `from_tensor_slices` over file paths (the boxes wait in a ragged tensor, looked up by index);
2. parallel `map`: DICOM decode + CLAHE + resize (OpenCV, via `tf.numpy_function`); a file that
   cannot be read is skipped and recorded in a `RejectLog` (`filter`), never silently; boxes
   converted from the CSV's `"xywh"` to `"xyxy"` once and scaled by the same factor;
3. `cache()`: the preprocessed 8-bit images are kept (in memory, or in a file), so decoding
   happens once, not every epoch;
4. training only: `shuffle` (or, with `DataConfig.positive_image_fraction`, a seeded draw
   from the images with and without an opacity, each cached and shuffled on its own) and
   random flip/rotation/shift (stateless, seeded);
5. parallel `map`: backbone preprocessing and label encoding against the anchors;
6. `batch` and `prefetch`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
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
from retinanet_lib.rejects import RejectLog
from retinanet_lib.rsna import TRAIN_IMAGES, RsnaLabels

__all__ = [
    "CACHE_FOLDER",
    "Records",
    "cache_target",
    "load_images",
    "make_dataset",
    "make_records",
    "num_batches",
    "positive_image_mask",
]


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

    def subset(self, indices: Sequence[int]) -> Records:
        """The records at `indices`, in that order."""
        return Records(
            paths=[self.paths[i] for i in indices],
            boxes_xywh=[self.boxes_xywh[i] for i in indices],
        )


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


def _ragged_boxes(boxes_xywh: list[np.ndarray]) -> tf.RaggedTensor:
    return tf.ragged.constant(
        [b.tolist() for b in boxes_xywh], ragged_rank=1, inner_shape=(4,), dtype=tf.float32
    )


def _decoded(records: Records, cfg: RetinaNetConfig, rejects: RejectLog | None):
    """`(index, image uint8 (S, S), boxes_xyxy (G, 4))` of the readable records, in order."""
    boxes = _ragged_boxes(records.boxes_xywh)
    images = load_images(records.paths, cfg, rejects)

    def attach_boxes(index, image, scale_xy):
        boxes_xyxy = resize_boxes_to_input(xywh_to_xyxy(boxes[index]), scale_xy)
        return index, image, boxes_xyxy

    return images.map(attach_boxes, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


#: Folder, next to the image folders, where `make_dataset` puts disk caches by default.
CACHE_FOLDER = "cache"


def cache_target(cfg: RetinaNetConfig, folder: str | Path, name: str) -> bool | str:
    """What `make_dataset(cache=...)` should get to follow `cfg.data.image_cache`.

    `"memory"` -> `True`, `"none"` -> `False`, `"disk"` -> a cache file in `folder` named after
    `name`, the input size and the CLAHE settings (so another size never reads a stale cache).
    Lock files left by an interrupted first pass are removed.
    """
    if cfg.data.image_cache == "memory":
        return True
    if cfg.data.image_cache == "none":
        return False
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clahe = f"clahe{cfg.data.clahe_clip_limit:g}x{cfg.data.clahe_tile_grid}"
    stem = f"{name}_{cfg.image_size}px_{clahe}"
    for stale in folder.glob(f"{stem}*.lockfile"):
        stale.unlink()
    return str(folder / stem)


def _default_cache(records: Records, cfg: RetinaNetConfig, training: bool) -> bool | str:
    """`cfg.data.image_cache`, with disk caches in the data folder (`<data>/cache/`)."""
    digest = hashlib.sha1("\n".join(records.paths).encode()).hexdigest()[:10]
    data_folder = Path(records.paths[0]).parent.parent
    split = "train" if training else "eval"
    return cache_target(cfg, data_folder / CACHE_FOLDER, f"{split}_{len(records)}_{digest}")


def num_batches(num_images: int, batch_size: int, training: bool) -> int:
    """Batches per pass over `num_images` images (training drops the last partial batch)."""
    return num_images // batch_size if training else -(-num_images // batch_size)


def _safe_loader(cfg: RetinaNetConfig, rejects: RejectLog | None):
    """A `tf.data` map that decodes + CLAHE + resizes one file, or flags it as unreadable."""
    empty = np.zeros((cfg.image_size, cfg.image_size), np.uint8)

    def load(path: bytes) -> tuple[np.ndarray, np.ndarray, bool]:
        try:
            image, scale_xy = load_preprocessed_image(path.decode(), cfg.image_size, cfg.data)
        except Exception as error:  # noqa: BLE001 (recorded by name, never silent)
            if rejects is None:
                raise
            rejects.add(path.decode(), error)
            return empty, np.ones(2, np.float32), False
        return image, np.asarray(scale_xy, np.float32), True

    def load_sample(path: tf.Tensor):
        image, scale_xy, ok = tf.numpy_function(
            load, [path], [tf.uint8, tf.float32, tf.bool], stateful=False
        )
        image = tf.ensure_shape(image, (cfg.image_size, cfg.image_size))
        return image, tf.ensure_shape(scale_xy, (2,)), tf.ensure_shape(ok, ())

    return load_sample


def load_images(
    paths: list[str], cfg: RetinaNetConfig, rejects: RejectLog | None = None
) -> tf.data.Dataset:
    """Decoded, CLAHE-enhanced, resized images of DICOM files, in parallel and in order.

    Args:
        paths: DICOM files.
        cfg: Detector config (image size, CLAHE settings).
        rejects: Unreadable files are skipped and recorded here; without a log they raise
            (and the dataset keeps a known length).

    Returns:
        A dataset of `(index int64, image uint8 (S, S), scale_xy float32 (2,))`, where `index`
        is the file's position in `paths` and `scale_xy` the resize factors (new / old).
    """
    load = _safe_loader(cfg, rejects)

    def with_index(index, path):
        image, scale_xy, ok = load(path)
        return index, image, scale_xy, ok

    dataset = tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), paths))
    dataset = dataset.map(with_index, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if rejects is not None:  # skipping makes the length unknown; without a log, keep it
        dataset = dataset.filter(lambda index, image, scale_xy, ok: ok)
    return dataset.map(lambda index, image, scale_xy, ok: (index, image, scale_xy))


def _cached(
    records: Records,
    cfg: RetinaNetConfig,
    training: bool,
    cache: bool | str | None,
    rejects: RejectLog | None,
) -> tf.data.Dataset:
    """`(image uint8 (S, S), boxes_xyxy (G, 4))` per readable record, in order, cached."""
    dataset = _decoded(records, cfg, rejects).map(lambda index, image, boxes: (image, boxes))
    if cache is None:
        cache = _default_cache(records, cfg, training)
    if cache is not False:
        dataset = dataset.cache("" if cache is True else str(cache))
    return dataset


def _shuffled(dataset: tf.data.Dataset, cfg: RetinaNetConfig, size: int, seed: int):
    """A new seeded order every epoch."""
    buffer = min(cfg.data.shuffle_buffer, size)
    return dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)


def positive_image_mask(records: Records) -> np.ndarray:
    """`(N,)` bool: which records have at least one box (an opacity)."""
    return np.array([len(boxes) > 0 for boxes in records.boxes_xywh], bool)


def _rebalanced(
    records: Records,
    cfg: RetinaNetConfig,
    cache: bool | str | None,
    rejects: RejectLog | None,
) -> tf.data.Dataset:
    """An endless stream of training images, each drawn from the positive images with
    probability `cfg.data.positive_image_fraction` and from the negative ones otherwise.

    Each group is decoded, cached and shuffled on its own and repeated without end (a new
    order every pass), and `sample_from_datasets` picks the group of every draw, seeded. The
    stream has no epochs: Keras cuts it into epochs of `steps_per_epoch` batches and keeps
    one iterator across them, so every cache fills in its group's first pass, even when an
    epoch draws fewer images of a group than it holds (a memory cache that an epoch left
    half-read would be thrown away and decoded again).

    Raises:
        ValueError: If one of the two groups is empty (nothing to rebalance).
    """
    positive = positive_image_mask(records)
    groups = {"positive": np.flatnonzero(positive), "negative": np.flatnonzero(~positive)}
    empty = [name for name, indices in groups.items() if len(indices) == 0]
    if empty:
        raise ValueError(
            f"positive_image_fraction needs images with and without an opacity; the "
            f"{len(records)} training records have no {empty[0]} image."
        )
    branches = []
    for offset, (name, indices) in enumerate(groups.items()):
        group = records.subset(indices)
        group_cache = f"{cache}_{name}" if isinstance(cache, str) else cache
        branch = _cached(group, cfg, True, group_cache, rejects)
        branch = _shuffled(branch, cfg, len(group), cfg.train.seed + offset)
        branches.append(branch.repeat())
    fraction = cfg.data.positive_image_fraction
    mixed = tf.data.Dataset.sample_from_datasets(
        branches,
        weights=[fraction, 1.0 - fraction],
        seed=cfg.train.seed,
        rerandomize_each_iteration=True,
    )
    return mixed


def make_dataset(
    records: Records,
    cfg: RetinaNetConfig,
    batch_size: int,
    training: bool,
    cache: bool | str | None = None,
    encode: bool = True,
    rejects: RejectLog | None = None,
) -> tf.data.Dataset:
    """Builds the input pipeline.

    Args:
        records: Images and their boxes.
        cfg: Detector config (image size, data settings, backbone for preprocessing, anchors).
            Shuffling and augmentation are seeded with `cfg.train.seed`.
        batch_size: Images per batch.
        training: Shuffle and augment (with `cfg.data`'s settings) and drop the last partial
            batch; otherwise keep the file order and every image. With
            `cfg.data.positive_image_fraction`, training draws images with replacement from
            the images with and without an opacity, endlessly: take
            `num_batches(len(records), batch_size, True)` batches as an epoch.
        cache: `True` caches preprocessed images in memory, a string caches them in that file
            (`filename.index` and `filename.data-*`), `False` decodes every epoch; `None`
            follows `cfg.data.image_cache` (`"disk"`: a file in `<data folder>/cache/`).
        encode: If False, yield `(image uint8 (S, S), boxes_xyxy (G, 4))` per image, unbatched,
            before backbone preprocessing (for inspection and plots).
        rejects: Unreadable files are skipped and recorded here (see `retinanet_lib.rejects`);
            without a log, an unreadable file raises. Skipping makes the number of batches
            unknown to `tf.data` (`num_batches` gives the nominal count).

    Returns:
        A dataset of `(images (B, S, S, 3) float32, targets (B, num_anchors, 5) float32)`.
    """
    if len(records) == 0:
        raise ValueError("make_dataset got no records.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if training and cfg.data.positive_image_fraction is not None:
        dataset = _rebalanced(records, cfg, cache, rejects)
    else:
        dataset = _cached(records, cfg, training, cache, rejects)
        if training:
            dataset = _shuffled(dataset, cfg, len(records), cfg.train.seed)
    if training and cfg.data.augments:
        seeds = tf.data.Dataset.random(seed=cfg.train.seed, rerandomize_each_iteration=True)
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
