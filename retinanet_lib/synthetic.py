"""Synthetic chest radiographs in the RSNA Pneumonia Detection Challenge format.

The real data cannot be downloaded everywhere (no Kaggle account, no internet in CI), so the
library generates a stand-in with the *same files*: a folder with `stage_2_train_images/*.dcm`
and `stage_2_test_images/*.dcm` (8-bit MONOCHROME2 DICOMs, JPEG baseline by default),
`stage_2_train_labels.csv` (`patientId,x,y,width,height,Target`, one row per box, an empty box
and Target 0 for a negative patient), `stage_2_detailed_class_info.csv` and
`stage_2_sample_submission.csv`. Code that reads it reads the real data unchanged. One file
has no counterpart in the Kaggle download: `stage_2_test_labels.csv` labels the test images
(same schema as the training labels), so the synthetic test split serves as an independent
test set, drawn from its own generator seed (`SyntheticConfig.test_seed`).

Each image is a phantom radiograph drawn with vectorized NumPy/OpenCV operations: a body with
soft-tissue gradients, two darker lung fields narrowing at the apex, the heart and mediastinum,
spine, clavicles, ribs, vessel markings, exposure and contrast changes and noise. Opacities are
soft-edged, irregular, mottled brighter regions inside the lungs; the ground-truth box is the
bounding box of the opacity's visible (> 50 %) region. Some negatives carry fainter clutter.

Everything is a deterministic function of `SyntheticConfig.seed` (training images) and
`SyntheticConfig.test_seed` (test images): image `i` uses its own generator seeded with
`(seed, split, i)`, so any image can be regenerated alone.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from retinanet_lib.config import OPACITY_ZONES, SyntheticConfig
from retinanet_lib.dicom_io import write_dicom_image
from retinanet_lib.rsna import (
    LABELS_FILE,
    TEST_IMAGES,
    TEST_LABELS_FILE,
    TRAIN_IMAGES,
    RsnaLabels,
    parse_label_table,
)

__all__ = [
    "CLASS_NAMES",
    "LABEL_COLUMNS",
    "Phantom",
    "draw_training_labels",
    "training_labels",
    "ensure_synthetic_rsna",
    "make_phantom",
    "write_synthetic_rsna",
]

#: Columns of `stage_2_train_labels.csv`, in the real file's order.
LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
#: The three classes of `stage_2_detailed_class_info.csv`.
CLASS_NAMES = ("Lung Opacity", "No Lung Opacity / Not Normal", "Normal")
MANIFEST_NAME = "synthetic_manifest.json"
_TRAIN_SPLIT, _TEST_SPLIT = 0, 1

# Anatomy, in normalised coordinates: x and y in [-1, 1], image centre at 0, y down.
# The patient's left lung is on the image's right (PA view).
_BODY_AXES = (0.92, 1.25)  # half-width, half-height of the torso ellipse
_LUNG_CENTER_X = 0.40
_LUNG_CENTER_Y = -0.02
_LUNG_AXES = (0.30, 0.62)  # half-width, half-height of each lung field
_WHOLE_LUNG = (-0.6, 0.6)  # faint clutter on negative images
_APEX_NARROWING = 0.35  # the lung is this much narrower at its top than at mid-height
_HEART_CENTER = (0.12, 0.36)
_HEART_AXES = (0.34, 0.27)
_SPINE_HALF_WIDTH = 0.06
_MEDIASTINUM_HALF_WIDTH = 0.16
_RIB_SPACING = 0.16
_RIB_CURVATURE = 0.55
_CLAVICLE_Y, _CLAVICLE_SLOPE = -0.62, 0.22
_NUM_VESSELS = 7
_EDGE = 0.03  # soft-edge width of anatomical masks

# Intensities on a 0..1 scale.
_AIR, _SOFT_TISSUE = 0.04, 0.60
_LUNG_DARKENING = 0.40
_MEDIASTINUM, _SPINE, _HEART = 0.10, 0.08, 0.03
_RIB, _CLAVICLE, _VESSEL = 0.09, 0.12, 0.05
_LOW_FREQUENCY_NOISE = 0.03
_EXPOSURE_GAMMA = (0.8, 1.25)
_EXPOSURE_CONTRAST = (0.85, 1.15)
_EXPOSURE_OFFSET = (-0.05, 0.05)
_OPACITY_EDGE = 0.12  # soft edge of an opacity, relative to its radius
_OPACITY_IRREGULARITY = 0.35
_PLACEMENT_TRIES = 4
_ANATOMY_DOWNSCALE = 2
_VISIBLE = 0.5  # an opacity pixel is inside the box where its soft mask exceeds this


@dataclass(frozen=True)
class Phantom:
    """One generated radiograph.

    Attributes:
        image: `(size, size)` uint8 pixels, bright = dense (MONOCHROME2).
        boxes_xywh: `(G, 4)` float32 boxes `(x_min, y_min, width, height)` in pixels; `G = 0`
            for a negative image.
        has_clutter: Whether faint lung-like clutter was added.
    """

    image: np.ndarray
    boxes_xywh: np.ndarray
    has_clutter: bool


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates in [-1, 1], each `(size, size)` float32."""
    axis = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2.0 - 1.0
    grid_x, grid_y = np.meshgrid(axis, axis)
    grid_x.setflags(write=False)
    grid_y.setflags(write=False)
    return grid_x, grid_y


def _soft(signed_distance: np.ndarray, edge: float) -> np.ndarray:
    """Smooth 0..1 step: 1 inside (positive distance), 0 outside, `edge` wide."""
    return 0.5 * (1.0 + np.tanh(signed_distance / edge))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Zero-mean, unit-scale smooth noise: a `cells x cells` random grid upsampled (cubic)."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _lung_masks(grid_x, grid_y, rng) -> np.ndarray:
    """Soft mask of both lung fields (narrower at the apex, cut by the heart)."""
    masks = []
    for side in (-1.0, 1.0):
        center_x = side * (_LUNG_CENTER_X + rng.uniform(-0.03, 0.03))
        center_y = _LUNG_CENTER_Y + rng.uniform(-0.04, 0.04)
        half_w = _LUNG_AXES[0] * rng.uniform(0.92, 1.08)
        half_h = _LUNG_AXES[1] * rng.uniform(0.92, 1.08)
        height_pos = np.clip((grid_y - (center_y - half_h)) / half_h, 0.0, 1.0)
        width = half_w * (1.0 - _APEX_NARROWING * (1.0 - height_pos))
        distance = 1.0 - ((grid_x - center_x) / width) ** 2 - ((grid_y - center_y) / half_h) ** 2
        masks.append(_soft(distance, _EDGE * 4))
    heart = _heart_mask(grid_x, grid_y)
    return np.maximum(masks[0], masks[1]) * (1.0 - 0.85 * heart)


def _heart_mask(grid_x, grid_y) -> np.ndarray:
    distance = (
        1.0
        - ((grid_x - _HEART_CENTER[0]) / _HEART_AXES[0]) ** 2
        - ((grid_y - _HEART_CENTER[1]) / _HEART_AXES[1]) ** 2
    )
    return _soft(distance, _EDGE * 6)


def _anatomy(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Background radiograph (0..1 float32) and the soft lung mask, both `(size, size)`.

    The anatomy is smooth, so it is drawn at `1 / _ANATOMY_DOWNSCALE` resolution and upsampled;
    noise and opacities are added later at full resolution.
    """
    image, lungs = _anatomy_low_resolution(size // _ANATOMY_DOWNSCALE, rng)
    upsample = {"dsize": (size, size), "interpolation": cv2.INTER_LINEAR}
    return cv2.resize(image, **upsample), cv2.resize(lungs, **upsample)


def _anatomy_low_resolution(size: int, rng: np.random.Generator):
    grid_x, grid_y = _grid(size)
    body = _soft(
        1.0 - (grid_x / _BODY_AXES[0]) ** 2 - ((grid_y - 0.25) / _BODY_AXES[1]) ** 2, _EDGE * 3
    )
    lungs = _lung_masks(grid_x, grid_y, rng)
    image = _AIR + (_SOFT_TISSUE - _AIR) * body
    image = (
        image + 0.08 * grid_y * body + _LOW_FREQUENCY_NOISE * _smooth_field(rng, (size, size), 6)
    )
    # Lungs are darkest laterally and at mid-height, with patchy density.
    lung_density = 0.85 + 0.1 * _smooth_field(rng, (size, size), 8) + 0.15 * np.abs(grid_x)
    image = image - _LUNG_DARKENING * lungs * lung_density
    image = image + _MEDIASTINUM * _soft(_MEDIASTINUM_HALF_WIDTH - np.abs(grid_x), _EDGE) * body
    vertebrae = 0.5 + 0.5 * np.cos(grid_y * np.pi / 0.07)
    image = image + _SPINE * _soft(_SPINE_HALF_WIDTH - np.abs(grid_x), _EDGE / 2) * (
        0.6 + 0.4 * vertebrae
    )
    image = image + _HEART * _heart_mask(grid_x, grid_y)
    # Ribs: bright curved bands, visible over the lungs and faintly over soft tissue.
    phase = (grid_y + _RIB_CURVATURE * (np.abs(grid_x) - 0.15) ** 2 + rng.uniform(0, 1)) / (
        _RIB_SPACING * rng.uniform(0.9, 1.1)
    )
    ribs = _soft(np.cos(2 * np.pi * phase) - 0.45, 0.25) * (np.abs(grid_x) > 0.1)
    image = image + _RIB * ribs * (0.15 + 0.85 * lungs) * body
    clavicle_distance = np.abs(grid_y - (_CLAVICLE_Y + _CLAVICLE_SLOPE * np.abs(grid_x)))
    clavicles = _soft(0.035 - clavicle_distance, 0.01) * _soft(0.65 - np.abs(grid_x), _EDGE)
    image = image + _CLAVICLE * clavicles * (np.abs(grid_x) > 0.08)
    image = image + _VESSEL * _vessels(grid_x, grid_y, rng) * lungs
    return image.astype(np.float32), lungs.astype(np.float32)


def _vessels(grid_x, grid_y, rng) -> np.ndarray:
    """Faint branching-like streaks radiating from each hilum (vessel markings)."""
    streaks = np.zeros_like(grid_x)
    for side in (-1.0, 1.0):
        hilum = np.array([side * 0.2, 0.0], np.float32)
        for angle in rng.uniform(-0.9, 0.9, size=_NUM_VESSELS // 2 + 1):
            direction = np.array([side * np.cos(angle), np.sin(angle)], np.float32)
            dx, dy = grid_x - hilum[0], grid_y - hilum[1]
            along = dx * direction[0] + dy * direction[1]
            across = np.abs(dx * direction[1] - dy * direction[0])
            taper = np.clip(1.0 - along / 0.6, 0.0, 1.0) * (along > 0)
            streaks = np.maximum(streaks, taper * np.exp(-((across / 0.012) ** 2)))
    return streaks


def _blob(
    lungs: np.ndarray,
    center_xy: tuple[float, float],
    radii_xy: tuple[float, float],
    strength: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, tuple[slice, slice], np.ndarray] | None:
    """One soft, irregular, mottled bright region confined to the lungs.

    Returns:
        `(box_xyxy, crop, added)`: the bounding box of its visible part, the image region it
        covers and the brightness to add there; `None` if nothing of it is visible.
    """
    size = lungs.shape[0]
    margin = 1.4
    x0 = int(max(0, np.floor(center_xy[0] - margin * radii_xy[0])))
    x1 = int(min(size, np.ceil(center_xy[0] + margin * radii_xy[0])))
    y0 = int(max(0, np.floor(center_xy[1] - margin * radii_xy[1])))
    y1 = int(min(size, np.ceil(center_xy[1] + margin * radii_xy[1])))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    pixel_y, pixel_x = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    distance = (
        1.0
        - ((pixel_x - center_xy[0]) / radii_xy[0]) ** 2
        - ((pixel_y - center_xy[1]) / radii_xy[1]) ** 2
    )
    crop_shape = (y1 - y0, x1 - x0)
    distance = distance + _OPACITY_IRREGULARITY * _smooth_field(rng, crop_shape, 5)
    mask = _soft(distance, _OPACITY_EDGE) * np.sqrt(lungs[y0:y1, x0:x1])
    visible = mask > _VISIBLE
    if not visible.any():
        return None
    texture = 0.75 + 0.25 * _smooth_field(rng, crop_shape, 9)
    rows = np.flatnonzero(visible.any(axis=1))
    cols = np.flatnonzero(visible.any(axis=0))
    box = np.array([x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1], np.float32)
    return box, (slice(y0, y1), slice(x0, x1)), strength * mask * texture


def _overlaps(box_xyxy: np.ndarray, others_xyxy: list[np.ndarray]) -> bool:
    if not others_xyxy:
        return False
    others = np.stack(others_xyxy)  # (K, 4)
    top_left = np.maximum(box_xyxy[:2], others[:, :2])
    bottom_right = np.minimum(box_xyxy[2:], others[:, 2:])
    return bool((np.prod(np.clip(bottom_right - top_left, 0, None), axis=1) > 0).any())


def _sample_box_size(rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[float, float]:
    low, high = cfg.box_side_range
    scale = cfg.image_size / 1024.0
    width = cfg.box_width_median * scale * np.exp(rng.normal(0.0, cfg.box_size_log_sigma))
    height = width * cfg.box_aspect_median * np.exp(rng.normal(0.0, cfg.box_size_log_sigma))
    return float(np.clip(width, low * scale, high * scale)), float(
        np.clip(height, low * scale, high * scale)
    )


def _lung_point(rng: np.random.Generator, side: float, size: int, zone: str) -> tuple:
    """A pixel position inside one lung field, its height drawn from `zone` (a key of
    `OPACITY_ZONES`, or `"any"` for the whole lung)."""
    u = rng.uniform(-0.55, 0.55)
    v = rng.uniform(*(OPACITY_ZONES.get(zone, _WHOLE_LUNG)))
    x = side * _LUNG_CENTER_X + u * _LUNG_AXES[0]
    y = _LUNG_CENTER_Y + v * _LUNG_AXES[1]
    return (x + 1.0) / 2.0 * size, (y + 1.0) / 2.0 * size


def make_phantom(rng: np.random.Generator, cfg: SyntheticConfig, positive: bool) -> Phantom:
    """Draws one synthetic radiograph.

    Args:
        rng: Random generator (the only source of randomness).
        cfg: Synthetic-data settings.
        positive: Whether to add 1..len(box_count_probs) opacities.

    Returns:
        The phantom with its ground-truth boxes in `"xywh"` pixels.
    """
    size = cfg.image_size
    image, lungs = _anatomy(size, rng)
    boxes_xyxy = []
    if positive:
        num_boxes = 1 + int(rng.choice(len(cfg.box_count_probs), p=cfg.box_count_probs))
        sides = [(-1.0, 1.0)[(k + int(rng.integers(2))) % 2] for k in range(num_boxes)]
        for side in sides:
            for _ in range(_PLACEMENT_TRIES):  # RSNA boxes of one image rarely overlap
                width, height = _sample_box_size(rng, cfg)
                center = _lung_point(rng, side, size, cfg.opacity_zone)
                strength = rng.uniform(*cfg.opacity_strength_range)
                blob = _blob(lungs, center, (width / 2, height / 2), strength, rng)
                if blob is not None and not _overlaps(blob[0], boxes_xyxy):
                    boxes_xyxy.append(blob[0])
                    image[blob[1]] += blob[2]
                    break
    has_clutter = bool(rng.uniform() < cfg.clutter_fraction) and not positive
    if has_clutter:
        for _ in range(int(rng.integers(1, 4))):
            side = (-1.0, 1.0)[int(rng.integers(2))]
            radius = rng.uniform(15, 60) * size / 1024.0
            center = _lung_point(rng, side, size, "any")
            blob = _blob(
                lungs,
                center,
                (radius, radius * rng.uniform(0.7, 1.4)),
                rng.uniform(*cfg.clutter_strength_range),
                rng,
            )
            if blob is not None:
                image[blob[1]] += blob[2]
    image = _expose(image, rng, cfg)
    boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
    boxes_xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    return Phantom(image=image, boxes_xywh=boxes_xywh, has_clutter=has_clutter)


def _expose(image: np.ndarray, rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    """Exposure, contrast, noise and quantisation to uint8."""
    image = np.clip(image, 0.0, 1.0) ** rng.uniform(*_EXPOSURE_GAMMA)
    image = (image - 0.5) * rng.uniform(*_EXPOSURE_CONTRAST) + 0.5 + rng.uniform(*_EXPOSURE_OFFSET)
    noise_std = rng.uniform(*cfg.noise_std_range)
    image = image + noise_std * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def _patient_id(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _image_rng(cfg: SyntheticConfig, split: int, index: int) -> np.random.Generator:
    seed = cfg.test_seed if split == _TEST_SPLIT else cfg.seed
    return np.random.default_rng([seed, split, index])


def _write_split(root, folder, split, count, cfg, positives, progress):
    rows_labels, rows_classes = [], []
    for index in tqdm(range(count), desc=folder, disable=not progress, unit="image"):
        rng = _image_rng(cfg, split, index)
        patient_id = _patient_id(rng)
        phantom = make_phantom(rng, cfg, positive=bool(positives[index]))
        write_dicom_image(
            root / folder / f"{patient_id}.dcm",
            phantom.image,
            patient_id,
            compression=cfg.compression,
            jpeg_quality=cfg.jpeg_quality,
            patient_sex=("M", "F")[int(rng.integers(2))],
            patient_age=int(rng.integers(18, 90)),
        )
        rows_labels += _label_rows(patient_id, phantom.boxes_xywh)
        if len(phantom.boxes_xywh) == 0:
            rows_classes.append(
                (patient_id, CLASS_NAMES[1] if phantom.has_clutter else CLASS_NAMES[2])
            )
        rows_classes += [(patient_id, CLASS_NAMES[0])] * len(phantom.boxes_xywh)
    return rows_labels, rows_classes


def _label_rows(patient_id: str, boxes_xywh: np.ndarray) -> list[tuple]:
    """The label-file rows of one image: one per box (rounded to 0.1 px, `Target` 1), or one
    row with empty box fields and `Target` 0 when it has none."""
    if len(boxes_xywh) == 0:
        return [(patient_id, None, None, None, None, 0)]
    return [(patient_id, *box.tolist(), 1) for box in boxes_xywh.round(1)]


def write_synthetic_rsna(
    root: str | Path, cfg: SyntheticConfig | None = None, progress: bool = True
) -> pd.DataFrame:
    """Writes a complete synthetic data set in the RSNA layout under `root`.

    Args:
        root: Output folder (created).
        cfg: Settings; `SyntheticConfig()` if omitted.
        progress: Show a tqdm progress bar.

    Returns:
        The label table written to `stage_2_train_labels.csv`.
    """
    cfg = cfg or SyntheticConfig()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    positives = _training_positives(cfg)
    labels, classes = _write_split(
        root, TRAIN_IMAGES, _TRAIN_SPLIT, cfg.num_train, cfg, positives, progress
    )
    test_positives = np.random.default_rng([cfg.test_seed, 98]).uniform(size=cfg.num_test)
    test_labels, _ = _write_split(
        root,
        TEST_IMAGES,
        _TEST_SPLIT,
        cfg.num_test,
        cfg,
        test_positives < cfg.positive_fraction,
        progress,
    )
    label_table = pd.DataFrame(labels, columns=list(LABEL_COLUMNS))
    label_table.to_csv(root / LABELS_FILE, index=False)
    pd.DataFrame(test_labels, columns=list(LABEL_COLUMNS)).to_csv(
        root / TEST_LABELS_FILE, index=False
    )
    pd.DataFrame(classes, columns=["patientId", "class"]).to_csv(
        root / "stage_2_detailed_class_info.csv", index=False
    )
    test_ids = pd.unique(pd.Series([row[0] for row in test_labels]))
    pd.DataFrame({"patientId": test_ids, "PredictionString": "0.5 0 0 100 100"}).to_csv(
        root / "stage_2_sample_submission.csv", index=False
    )
    manifest = {"generator": "retinanet_lib.synthetic", "config": dataclasses.asdict(cfg)}
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return label_table


def _training_positives(cfg: SyntheticConfig) -> np.ndarray:
    """`(num_train,)` bool: which training images get opacities (drawn from `cfg.seed`)."""
    draws = np.random.default_rng([cfg.seed, 99]).uniform(size=cfg.num_train)
    return draws < cfg.positive_fraction


def draw_training_labels(cfg: SyntheticConfig | None = None) -> pd.DataFrame:
    """The label table `write_synthetic_rsna` writes for the training images, without them.

    Only the images with opacities are drawn (their boxes come from the drawing); a negative
    image's row needs nothing but its patient id, the first draw of its generator. So this
    costs about a third of writing the set and gives the same table.

    Args:
        cfg: Settings; `SyntheticConfig()` if omitted.

    Returns:
        The rows of `stage_2_train_labels.csv`, columns `LABEL_COLUMNS`.
    """
    cfg = cfg or SyntheticConfig()
    rows = []
    for index, positive in enumerate(_training_positives(cfg)):
        rng = _image_rng(cfg, _TRAIN_SPLIT, index)
        patient_id = _patient_id(rng)
        no_boxes = np.zeros((0, 4), np.float32)
        boxes_xywh = make_phantom(rng, cfg, positive=True).boxes_xywh if positive else no_boxes
        rows += _label_rows(patient_id, boxes_xywh)
    return pd.DataFrame(rows, columns=list(LABEL_COLUMNS))


def training_labels(cfg: SyntheticConfig | None = None) -> RsnaLabels:
    """The synthetic set's training labels, parsed (`draw_training_labels`, no image written).

    Args:
        cfg: Settings; `SyntheticConfig()` if omitted.

    Returns:
        The labels as `rsna.load_rsna_labels` reads them from the written set.
    """
    cfg = cfg or SyntheticConfig()
    return parse_label_table(
        draw_training_labels(cfg), cfg.image_size, cfg.image_size, "synthetic training labels"
    )


def ensure_synthetic_rsna(
    root: str | Path, cfg: SyntheticConfig | None = None, progress: bool = True
) -> Path:
    """Generates the synthetic set under `root` unless the same one is already there.

    "The same" means a manifest with an identical config; otherwise the set is regenerated.
    A folder holding anything else (e.g. the real data) is refused rather than overwritten.

    Returns:
        `root` as a `Path`.
    """
    cfg = cfg or SyntheticConfig()
    root = Path(root)
    manifest_path = root / MANIFEST_NAME
    wanted = {"generator": "retinanet_lib.synthetic", "config": dataclasses.asdict(cfg)}
    if manifest_path.is_file():
        if json.loads(manifest_path.read_text()) == json.loads(json.dumps(wanted)):
            return root
    elif root.exists() and any(root.iterdir()):
        raise FileExistsError(
            f"{root} is not empty and holds no synthetic-data manifest; refusing to write the "
            "synthetic set there. Pick an empty folder."
        )
    for old_file in (
        *root.glob(f"{TRAIN_IMAGES}/*.dcm"),
        *root.glob(f"{TEST_IMAGES}/*.dcm"),
    ):
        old_file.unlink()  # a different config: start from scratch
    write_synthetic_rsna(root, cfg, progress=progress)
    return root
