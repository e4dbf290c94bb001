"""Frozen configuration objects and named constants.

Every number that shapes the detector (anchor sizes, matching thresholds, the box variance, ...)
lives here, once. The config is built once, usually in a notebook's parameters cell, and passed
down to the functions that need it; nothing else rebuilds anchors or variances on its own.

Example:
    >>> cfg = RetinaNetConfig()
    >>> cfg.anchors.num_anchors_per_location
    9
    >>> RetinaNetConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BACKGROUND_CLASS",
    "BOX_FORMATS",
    "IGNORE_CLASS",
    "MAX_DELTA_LOG_SCALE",
    "PRIOR_PROBABILITY",
    "RUN_MODES",
    "RUN_MODE_ENV",
    "AnchorConfig",
    "EncoderConfig",
    "RetinaNetConfig",
    "config_for_mode",
    "run_mode_from_env",
]

#: Class target of an anchor that matched no ground-truth box (IoU below `ignore_iou`).
BACKGROUND_CLASS = -1
#: Class target of an anchor whose best IoU lies between `ignore_iou` and `match_iou`.
IGNORE_CLASS = -2
#: Initial foreground probability of the class head (focal-loss paper, section 3.3).
PRIOR_PROBABILITY = 0.01
#: Upper bound on decoded `log(box_size / anchor_size)`: a box at most 62.5x its anchor
#: (torchvision's `log(1000 / 16)`). Keeps `exp` finite for an untrained box head.
MAX_DELTA_LOG_SCALE = math.log(1000.0 / 16.0)
#: The three box formats the library speaks; the names are those of Keras 3.
#: `xywh` is top-left corner plus size (the RSNA CSV), `center_xywh` is centre plus size.
BOX_FORMATS = ("xyxy", "xywh", "center_xywh")


def _check_positive(name: str, values: tuple[float, ...]) -> None:
    if len(values) == 0:
        raise ValueError(f"{name} must not be empty.")
    if any(not math.isfinite(v) or v <= 0 for v in values):
        raise ValueError(f"{name} must hold finite positive numbers, got {values}.")


@dataclass(frozen=True)
class AnchorConfig:
    """Where anchors sit and what shapes they have.

    Attributes:
        levels: Pyramid levels; level `l` has stride `2**l` (P3..P7 -> strides 8..128).
        base_sizes: Side of the square anchor (aspect ratio 1, scale 1) on each level, in
            input pixels; the paper's areas 32^2..512^2 give sides 32..512.
        aspect_ratios: Width / height of the anchor shapes at every location.
        scales: Factors applied to the side of every shape (2^0, 2^(1/3), 2^(2/3)).
    """

    levels: tuple[int, ...] = (3, 4, 5, 6, 7)
    base_sizes: tuple[float, ...] = (32.0, 64.0, 128.0, 256.0, 512.0)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    scales: tuple[float, ...] = (2.0**0, 2.0 ** (1 / 3), 2.0 ** (2 / 3))

    def __post_init__(self) -> None:
        for name in ("levels", "base_sizes", "aspect_ratios", "scales"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.levels) != len(self.base_sizes):
            raise ValueError(
                f"One base size per level is needed: {len(self.levels)} levels but "
                f"{len(self.base_sizes)} base sizes."
            )
        if any(int(level) != level or level < 1 for level in self.levels):
            raise ValueError(f"levels must be positive integers, got {self.levels}.")
        if list(self.levels) != sorted(set(self.levels)):
            raise ValueError(f"levels must be strictly increasing, got {self.levels}.")
        _check_positive("base_sizes", self.base_sizes)
        _check_positive("aspect_ratios", self.aspect_ratios)
        _check_positive("scales", self.scales)

    @property
    def strides(self) -> tuple[int, ...]:
        """Stride of each level in input pixels (`2**level`)."""
        return tuple(2**level for level in self.levels)

    @property
    def num_anchors_per_location(self) -> int:
        """Number of anchor shapes at every feature-map cell (ratios x scales)."""
        return len(self.aspect_ratios) * len(self.scales)


@dataclass(frozen=True)
class EncoderConfig:
    """How ground-truth boxes are matched to anchors and encoded.

    Attributes:
        match_iou: An anchor whose best IoU is at least this is positive.
        ignore_iou: An anchor whose best IoU is below this is background; between the two
            thresholds it is ignored (it adds nothing to the loss).
        box_variance: Divisors of the four deltas `(dx, dy, dw, dh)`; they bring the targets
            to roughly unit scale.
        match_low_quality: If True, each ground-truth box also claims the anchor(s) with
            which it has its highest IoU, even below `match_iou` (Faster R-CNN's rule). The
            blog and the keras.io example leave this off, so small boxes can end up with no
            positive anchor; `LabelEncoder.encode_sample_with_stats` counts them.
    """

    match_iou: float = 0.5
    ignore_iou: float = 0.4
    box_variance: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    match_low_quality: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "box_variance", tuple(self.box_variance))
        if not 0.0 < self.ignore_iou <= self.match_iou <= 1.0:
            raise ValueError(
                "Need 0 < ignore_iou <= match_iou <= 1, got "
                f"ignore_iou={self.ignore_iou}, match_iou={self.match_iou}."
            )
        if len(self.box_variance) != 4:
            raise ValueError(f"box_variance needs 4 values, got {self.box_variance}.")
        _check_positive("box_variance", self.box_variance)


_SECTIONS: dict[str, type] = {"anchors": AnchorConfig, "encoder": EncoderConfig}


@dataclass(frozen=True)
class RetinaNetConfig:
    """Everything that defines one detector, built once and passed down.

    Attributes:
        image_size: Side of the square model input in pixels (the blog: 512).
        num_classes: Number of object classes (RSNA: 1, lung opacity).
        anchors: Anchor geometry.
        encoder: Matching thresholds and box variance.
    """

    image_size: int = 512
    num_classes: int = 1
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def __post_init__(self) -> None:
        if int(self.image_size) != self.image_size or self.image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {self.image_size}.")
        if int(self.num_classes) != self.num_classes or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {self.num_classes}.")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-serialisable) of every setting."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RetinaNetConfig:
        """Inverse of `to_dict`; unknown keys raise `ValueError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"Unknown RetinaNetConfig keys: {sorted(unknown)}.")
        kwargs = dict(values)
        for name, section_cls in _SECTIONS.items():
            if name in kwargs and isinstance(kwargs[name], dict):
                kwargs[name] = section_cls(**kwargs[name])
        return cls(**kwargs)


#: The two ways to run the book: the CPU default (synthetic data, small input and backbone)
#: and the blog's full setup (real RSNA data, ResNet50 + ImageNet, 512 px; for a GPU).
RUN_MODES = ("cpu", "full")
#: Environment variable that chooses the run mode in every chapter's parameters cell.
RUN_MODE_ENV = "RETINANET_MODE"
_IMAGE_SIZE_FOR_MODE = {"cpu": 256, "full": 512}


def run_mode_from_env(default: str = "cpu") -> str:
    """Reads the run mode from `$RETINANET_MODE` (`"cpu"` if unset).

    Raises:
        ValueError: If the variable holds anything but one of `RUN_MODES`.
    """
    mode = os.environ.get(RUN_MODE_ENV, default).strip().lower()
    if mode not in RUN_MODES:
        raise ValueError(f"{RUN_MODE_ENV}={mode!r} is not a run mode; use one of {RUN_MODES}.")
    return mode


def config_for_mode(mode: str) -> RetinaNetConfig:
    """The detector config of a run mode: 256 px for `"cpu"`, the blog's 512 px for `"full"`."""
    if mode not in RUN_MODES:
        raise ValueError(f"Unknown run mode {mode!r}; use one of {RUN_MODES}.")
    return RetinaNetConfig(image_size=_IMAGE_SIZE_FOR_MODE[mode])
