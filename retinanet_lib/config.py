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
    "IMAGE_CACHES",
    "MAX_DELTA_LOG_SCALE",
    "PRIOR_PROBABILITY",
    "RUN_MODES",
    "RUN_MODE_ENV",
    "SMOKE_ENV",
    "BACKBONES",
    "AnchorConfig",
    "DataConfig",
    "DecodeConfig",
    "LossConfig",
    "ModelConfig",
    "OPTIMIZERS",
    "PRECISIONS",
    "PretrainConfig",
    "TrainConfig",
    "EncoderConfig",
    "RetinaNetConfig",
    "SmokeConfig",
    "SyntheticConfig",
    "config_for_mode",
    "describe_setup",
    "replace_section",
    "run_mode_from_env",
    "smoke_from_env",
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


#: Where `DataConfig.image_cache` may keep the decoded images.
IMAGE_CACHES = ("memory", "disk", "none")

#: Backbones `retinanet_lib.model.build_backbone` knows.
BACKBONES = ("resnet50", "small_resnet")


@dataclass(frozen=True)
class DataConfig:
    """Image preprocessing, augmentation and the train/validation split.

    Attributes:
        clahe_clip_limit: CLAHE contrast limit (OpenCV `clipLimit`).
        clahe_tile_grid: CLAHE tiles per side (OpenCV `tileGridSize`).
        validation_fraction: Share of patients held out for validation.
        test_fraction: Share of patients held out as the labelled test split when the data
            folder has no test labels (the Kaggle download: its stage-2 test images have
            none). Drawn from the training labels by patient, after validation, with `seed`;
            unused when `stage_2_test_labels.csv` exists (the synthetic set).
        horizontal_flip: Randomly mirror training images (boxes mirrored too).
        max_rotation_degrees: Training images are rotated by up to this angle either way.
        max_shift_fraction: ... and shifted by up to this fraction of the side.
        shuffle_buffer: Size of the training shuffle buffer.
        image_cache: Where the pipeline keeps decoded, resized 8-bit images after the first
            pass: one of `IMAGE_CACHES`. `"memory"` is fastest; `"disk"` writes a cache file
            (in the run folder when training through `data_scripts/train.py`) so that the
            26,684 real images at 512 px (about 7 GB) fit a 12 GB Colab runtime; `"none"`
            decodes every epoch.
        seed: Seed of the train/validation split. Shuffling and augmentation follow the
            training seed (`TrainConfig.seed`), so several training seeds share one split.
        positive_image_fraction: Image-level rebalancing, one of the transfer-learning
            notes' cures for unbalanced labels. `None` trains on the natural mix (about 30 %
            of the images have an opacity, in the synthetic data as in RSNA). A fraction
            `f` draws every training image from the images with an opacity with probability
            `f` and from the others with probability `1 - f`, with replacement: positive
            images are oversampled and negative ones undersampled, batches are balanced in
            expectation, and an epoch keeps its number of images (the same training budget).
    """

    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8
    validation_fraction: float = 0.2
    test_fraction: float = 0.1
    horizontal_flip: bool = True
    max_rotation_degrees: float = 5.0
    max_shift_fraction: float = 0.06
    shuffle_buffer: int = 512
    image_cache: str = "memory"
    seed: int = 0
    positive_image_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.image_cache not in IMAGE_CACHES:
            raise ValueError(
                f"image_cache must be one of {IMAGE_CACHES}, got {self.image_cache!r}."
            )
        if self.clahe_clip_limit <= 0 or self.clahe_tile_grid < 1:
            raise ValueError("CLAHE needs clahe_clip_limit > 0 and clahe_tile_grid >= 1.")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must lie in (0, 1), got {self.validation_fraction}."
            )
        if not 0.0 <= self.test_fraction < 1.0 - self.validation_fraction:
            raise ValueError(
                f"test_fraction must lie in [0, 1 - validation_fraction), got {self.test_fraction}."
            )
        if not 0.0 <= self.max_rotation_degrees <= 45.0:
            raise ValueError("max_rotation_degrees must lie in [0, 45].")
        if not 0.0 <= self.max_shift_fraction < 0.5:
            raise ValueError("max_shift_fraction must lie in [0, 0.5).")
        fraction = self.positive_image_fraction
        if fraction is not None and not 0.0 < fraction < 1.0:
            raise ValueError(
                f"positive_image_fraction must lie in (0, 1) or be None, got {fraction}."
            )

    @property
    def augments(self) -> bool:
        """Whether any augmentation is switched on."""
        return self.horizontal_flip or self.max_rotation_degrees > 0 or self.max_shift_fraction > 0


@dataclass(frozen=True)
class ModelConfig:
    """Backbone, feature pyramid and heads.

    Attributes:
        backbone: One of `BACKBONES`: the blog's `"resnet50"` or the CPU-sized
            `"small_resnet"` that trains from scratch in minutes.
        backbone_weights: `"imagenet"` (ResNet50), `"opacity"` (the small backbone
            pre-trained on a synthetic source task, shipped with the library:
            `retinanet_lib.pretrain`), a path to a weights file, or `None` (random init).
        freeze_backbone: Train only the FPN and heads (the blog's transfer-learning setup).
        fpn_channels: Width of the pyramid features P3..P7 and of the head convolutions
            (256 in the paper).
        head_convs: Number of 3x3 conv + ReLU layers in each head before its output conv.
        small_resnet_widths: Channels of the small backbone's stages (C2..C5).
        class_prior: Initial probability of every anchor's class output: the class head's
            bias is `-log((1 - prior) / prior)`. The paper's 0.01 (`PRIOR_PROBABILITY`);
            0.5 gives a bias of 0, the setting the paper warns against.
        frozen_backbone_stages: Backbone layers whose names start with one of these stage
            prefixes followed by "_" are frozen, the lower stages of "unfreeze the top"
            transfer learning (small backbone: `"stem"`, `"c2"` ... `"c5"`; ResNet50:
            `"conv1"` ... `"conv5"`). Ignored when `freeze_backbone` freezes it all.
        freeze_backbone_batchnorm: Freeze every batch-normalisation layer of the backbone
            (its statistics and its scale and shift), also where the backbone trains, as
            torchvision's detection models do with a pre-trained backbone
            (`FrozenBatchNorm2d`). A frozen Keras batch-normalisation layer runs in inference
            mode, the mode Keras's transfer-learning guide keeps when it fine-tunes: batch
            statistics of small batches from a new domain would otherwise overwrite the
            statistics the pre-trained weights were trained with. (The guide calls the base
            model with `training=False`; in Keras 3 a functional model's outer `training`
            flag overrides that argument of a nested model, so the library freezes the layers
            instead.)
        image_head: Add the image-level "any opacity?" output of the RSNA challenge's
            2nd place: global average pooling of the backbone's top level (C5), then one
            dense logit. It travels as one more channel of the predictions, the same value
            at every anchor of an image: `(B, A, 4 + K + 1)` (`model.image_logits`).
    """

    backbone: str = "resnet50"
    backbone_weights: str | None = "imagenet"
    freeze_backbone: bool = True
    fpn_channels: int = 256
    head_convs: int = 4
    small_resnet_widths: tuple[int, int, int, int] = (16, 32, 64, 128)
    class_prior: float = PRIOR_PROBABILITY
    frozen_backbone_stages: tuple[str, ...] = ()
    freeze_backbone_batchnorm: bool = False
    image_head: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "small_resnet_widths", tuple(self.small_resnet_widths))
        object.__setattr__(self, "frozen_backbone_stages", tuple(self.frozen_backbone_stages))
        if not 0.0 < self.class_prior < 1.0:
            raise ValueError(f"class_prior must lie in (0, 1), got {self.class_prior}.")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}.")
        if self.fpn_channels < 1 or self.head_convs < 0:
            raise ValueError("Need fpn_channels >= 1 and head_convs >= 0.")
        if len(self.small_resnet_widths) != 4 or min(self.small_resnet_widths) < 1:
            raise ValueError(
                f"small_resnet_widths needs 4 positive values, got {self.small_resnet_widths}."
            )


@dataclass(frozen=True)
class LossConfig:
    """The detection loss.

    Attributes:
        alpha: Weight of the positive class in the classification loss (negatives get
            `1 - alpha`); `None` weighs both equally (plain cross-entropy when `gamma` is 0).
        gamma: Focusing parameter: `(1 - p_t) ** gamma` down-weights easy examples; 0 gives
            (alpha-balanced) cross-entropy.
        smooth_l1_delta: Where smooth L1 turns from quadratic to linear (`delta` / `beta`).
        box_loss_weight: Weight of the box term against the classification term.
        hard_negative_ratio: Online hard example mining (OHEM), the sampling heuristic the
            focal loss replaced: when set, the classification term of an image keeps all its
            positive anchors and only its `ratio x P` highest-loss background anchors (`P`
            positives); SSD and the focal-loss paper's OHEM baseline use 3. `None`: every
            background anchor counts.
        hard_negative_minimum: With OHEM, an image keeps at least this many background
            anchors, so an image without any positive (most RSNA images) still trains its
            background: 96, the negatives of one R-CNN mini-batch (32 positives, 96
            negatives).
        image_loss_weight: Weight of the image-level binary cross-entropy (a model built
            with `ModelConfig.image_head`; no effect without one). An image's label is 1 when
            any of its anchors is positive.
    """

    alpha: float | None = 0.25
    gamma: float = 2.0
    smooth_l1_delta: float = 1.0
    box_loss_weight: float = 1.0
    hard_negative_ratio: float | None = None
    hard_negative_minimum: int = 96
    image_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.alpha is not None and not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1) or be None, got {self.alpha}.")
        if self.gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}.")
        if self.smooth_l1_delta <= 0 or self.box_loss_weight < 0:
            raise ValueError("Need smooth_l1_delta > 0 and box_loss_weight >= 0.")
        if self.hard_negative_ratio is not None and self.hard_negative_ratio <= 0:
            raise ValueError(
                f"hard_negative_ratio must be positive or None, got {self.hard_negative_ratio}."
            )
        if self.hard_negative_minimum < 0:
            raise ValueError(
                f"hard_negative_minimum must be >= 0, got {self.hard_negative_minimum}."
            )
        if not self.image_loss_weight >= 0:
            raise ValueError(f"image_loss_weight must be >= 0, got {self.image_loss_weight}.")


@dataclass(frozen=True)
class DecodeConfig:
    """Turning predictions into detections.

    Attributes:
        score_threshold: Detections below this class probability are dropped.
        nms_iou_threshold: Non-maximum suppression removes a box overlapping a higher-scored
            one by more than this IoU.
        max_detections: At most this many detections per image (after NMS).
        max_candidates: Highest-scoring boxes per image considered by NMS.
        flip_tta: Test-time augmentation: also predict on the mirrored image and average the
            two predictions of every anchor (its mirror anchor's, with the x offset negated).
        gate_threshold: Image-level gating (the RSNA winners' classifier in front of the
            detector): an image whose image-level probability is below this keeps no
            detection. The probability is the image head's (`ModelConfig.image_head`), or
            without a head the image's highest anchor score. `None`: no gating.
    """

    score_threshold: float = 0.05
    nms_iou_threshold: float = 0.5
    max_detections: int = 20
    max_candidates: int = 1000
    flip_tta: bool = False
    gate_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.gate_threshold is not None and not 0.0 <= self.gate_threshold < 1.0:
            raise ValueError(
                f"gate_threshold must lie in [0, 1) or be None, got {self.gate_threshold}."
            )
        if not 0.0 <= self.score_threshold < 1.0:
            raise ValueError(f"score_threshold must lie in [0, 1), got {self.score_threshold}.")
        if not 0.0 < self.nms_iou_threshold <= 1.0:
            raise ValueError(f"nms_iou_threshold must lie in (0, 1], got {self.nms_iou_threshold}.")
        if self.max_detections < 1 or self.max_candidates < self.max_detections:
            raise ValueError("Need 1 <= max_detections <= max_candidates.")


#: Optimizers `retinanet_lib.train.make_optimizer` knows.
OPTIMIZERS = ("sgd", "adam")
#: Keras dtype policies training may use: full float32 (the blog's), or mixed precision with
#: float32 variables and float16 / bfloat16 computation (`keras.mixed_precision`).
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclass(frozen=True)
class TrainConfig:
    """The training run. Defaults are the blog's: SGD, 25 epochs, the learning rate lowered
    every 5 epochs through 5.0e-4, 5.0e-5, 2.5e-5, 2.5e-6, 1.0e-6, batch size 1.

    Attributes:
        epochs: Number of passes over the training split.
        batch_size: Images per step (global, across devices).
        optimizer: One of `OPTIMIZERS`.
        learning_rates: Piecewise-constant values, one per `epochs_per_drop` epochs.
        epochs_per_drop: Epochs between two learning-rate drops.
        momentum: SGD momentum.
        warmup_epochs: The learning rate rises linearly from 0 to its first value over this
            many epochs (0: no warm-up, as in the blog).
        scale_learning_rate: The linear scaling rule (Goyal et al. 2017): `learning_rates`
            are the rates for `base_batch_size` images per step, and training multiplies them
            by `batch_size / base_batch_size` (`effective_learning_rates`). Pair it with a
            short warm-up (`warmup_epochs`), as the paper does. Off in the blog's setup.
        base_batch_size: The batch size `learning_rates` were chosen for (the blog's 1).
        mixed_precision: One of `PRECISIONS`. `"mixed_float16"` and `"mixed_bfloat16"` compute
            in 16 bits with float32 variables; the model's outputs (which feed the loss and
            the decoder) stay float32, and float16 training uses a loss-scale optimizer.
        max_bad_file_fraction: Training refuses to start (or stops) when more than this
            share of the image files cannot be read; fewer are skipped and reported.
        seed: Seed for weights, data order and augmentation (`retinanet_lib.train.set_seed`).
        backbone_learning_rate_factor: The backbone's weights train at this multiple of the
            learning rate (the transfer-learning notes fine-tune pre-trained layers at about
            1/10 of the rate); the FPN and heads at the rate itself.
        backbone_frozen_epochs: The backbone's learning rate is 0 for this many first epochs
            and then `backbone_learning_rate_factor` times the rate: "train the new layers,
            then unfreeze the backbone" in one run (with `ModelConfig.freeze_backbone_batchnorm`
            the backbone is then truly frozen, batch-normalisation statistics included)
    """

    epochs: int = 25
    batch_size: int = 1
    optimizer: str = "sgd"
    learning_rates: tuple[float, ...] = (5.0e-4, 5.0e-5, 2.5e-5, 2.5e-6, 1.0e-6)
    epochs_per_drop: int = 5
    momentum: float = 0.9
    warmup_epochs: float = 0.0
    scale_learning_rate: bool = False
    base_batch_size: int = 1
    mixed_precision: str = "float32"
    max_bad_file_fraction: float = 0.01
    seed: int = 0
    backbone_learning_rate_factor: float = 1.0
    backbone_frozen_epochs: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "learning_rates", tuple(self.learning_rates))
        if self.backbone_learning_rate_factor < 0:
            raise ValueError(
                "backbone_learning_rate_factor must be >= 0, got "
                f"{self.backbone_learning_rate_factor}."
            )
        if not 0 <= self.backbone_frozen_epochs < self.epochs:
            raise ValueError(
                "backbone_frozen_epochs must lie in [0, epochs), got "
                f"{self.backbone_frozen_epochs}."
            )
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(
                f"mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}."
            )
        if self.base_batch_size < 1:
            raise ValueError(f"base_batch_size must be >= 1, got {self.base_batch_size}.")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}.")
        if not 0.0 <= self.max_bad_file_fraction < 1.0:
            raise ValueError(
                f"max_bad_file_fraction must lie in [0, 1), got {self.max_bad_file_fraction}."
            )
        if self.epochs < 1 or self.batch_size < 1 or self.epochs_per_drop < 1:
            raise ValueError("epochs, batch_size and epochs_per_drop must be >= 1.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}.")
        if not self.learning_rates or min(self.learning_rates) <= 0:
            raise ValueError(f"learning_rates must be positive, got {self.learning_rates}.")

    @property
    def effective_learning_rates(self) -> tuple[float, ...]:
        """The rates training uses: `learning_rates`, times `batch_size / base_batch_size`
        when `scale_learning_rate` is on (the linear scaling rule).

        Example:
            >>> TrainConfig(batch_size=8, scale_learning_rate=True).effective_learning_rates[0]
            0.004
        """
        if not self.scale_learning_rate:
            return self.learning_rates
        factor = self.batch_size / self.base_batch_size
        return tuple(rate * factor for rate in self.learning_rates)

    @property
    def scales_backbone_rate(self) -> bool:
        """Whether the backbone trains at another rate than the rest (at some epoch)."""
        return self.backbone_learning_rate_factor != 1.0 or self.backbone_frozen_epochs > 0


_SECTIONS: dict[str, type] = {
    "train": TrainConfig,
    "decode": DecodeConfig,
    "loss": LossConfig,
    "anchors": AnchorConfig,
    "encoder": EncoderConfig,
    "data": DataConfig,
    "model": ModelConfig,
}


@dataclass(frozen=True)
class RetinaNetConfig:
    """Everything that defines one detector, built once and passed down.

    Attributes:
        image_size: Side of the square model input in pixels (the blog: 512).
        num_classes: Number of object classes (RSNA: 1, lung opacity).
        anchors: Anchor geometry.
        encoder: Matching thresholds and box variance.
        data: Preprocessing, augmentation and split.
        model: Backbone, FPN and heads.
        loss: Focal loss and smooth L1 settings.
        decode: Score threshold and non-maximum suppression.
        train: Optimizer, schedule, epochs and batch size.
    """

    image_size: int = 512
    num_classes: int = 1
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if int(self.image_size) != self.image_size or self.image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {self.image_size}.")
        if int(self.num_classes) != self.num_classes or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {self.num_classes}.")

    def with_score_threshold(self, score_threshold: float) -> RetinaNetConfig:
        """This config with another `decode.score_threshold` (e.g. a run's chosen one)."""
        decode = dataclasses.replace(self.decode, score_threshold=float(score_threshold))
        return dataclasses.replace(self, decode=decode)

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


#: Environment variable that turns full mode into its smoke setting: `1` on, `0` or unset off.
SMOKE_ENV = "RETINANET_SMOKE"


@dataclass(frozen=True)
class SmokeConfig:
    """Full mode's smoke setting: the full architecture on a handful of images, for one epoch.

    It checks that every cell of every chapter runs in full mode (CI executes them this way,
    on synthetic data in the RSNA layout at 1024 px); it measures nothing. Because ImageNet
    weights cannot be downloaded there, the backbone starts from random weights, only under
    this setting, and the chapters print so (`notebook.setup_notebook`).

    Attributes:
        epochs: Training epochs.
        train_images: Training images kept (half with an opacity where there are enough).
        validation_images: Validation images kept, chosen the same way.
        test_images: Test images kept, chosen the same way.
    """

    epochs: int = 1
    train_images: int = 16
    validation_images: int = 8
    test_images: int = 8

    def describe(self) -> str:
        """One line for the chapters' output: what the smoke setting changes."""
        return (
            f"full mode's smoke setting ({SMOKE_ENV}=1), wherever this page runs full "
            f"mode: ResNet50 from random weights, not ImageNet; {self.epochs} epoch; "
            f"{self.train_images} training, "
            f"{self.validation_images} validation and {self.test_images} test images. "
            "Its numbers mean nothing."
        )


def smoke_from_env() -> SmokeConfig | None:
    """The smoke setting if `$RETINANET_SMOKE` is `1`, `None` if it is `0`, empty or unset.

    Raises:
        ValueError: For any other value.
    """
    value = os.environ.get(SMOKE_ENV, "").strip()
    if value in ("", "0"):
        return None
    if value != "1":
        raise ValueError(f"{SMOKE_ENV}={value!r}: use 1 (smoke setting) or 0 (off).")
    return SmokeConfig()


def replace_section(cfg: RetinaNetConfig, section: str, **changes: Any) -> RetinaNetConfig:
    """`cfg` with some fields of one section (`"train"`, `"model"`, ...) replaced.

    Example:
        >>> replace_section(RetinaNetConfig(), "train", epochs=3).train.epochs
        3
    """
    return dataclasses.replace(
        cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)}
    )


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
    """The detector config of a run mode.

    `"full"` is the blog's setup: 512 px, ResNet50 with ImageNet weights, frozen, FPN and heads
    256 wide, SGD for 25 epochs on the blog's piecewise schedule; the decoded training images
    are cached in a file in the run folder. `"cpu"` keeps the anchors,
    matching and loss but uses a 256 px input, the small backbone trained from scratch, a
    64-wide FPN, heads with one hidden convolution, and Adam (30 epochs, rate 1e-3 then 1e-4),
    so it trains in about 4 to 10 minutes on 2 CPU cores. The CPU default's schedule,
    30 epochs with the drop after epoch 22, came out of a measured ablation (the results page,
    `retinanet_lib/results/recipe.csv`).

    With `$RETINANET_SMOKE=1` (`SmokeConfig`), `"full"` trains one epoch from a randomly
    initialised backbone.
    """
    if mode not in RUN_MODES:
        raise ValueError(f"Unknown run mode {mode!r}; use one of {RUN_MODES}.")
    if mode == "full":  # 26,684 decoded 512 px images (~7 GB) are cached on disk, not in RAM
        blog_data = DataConfig(  # the blog trained without augmentation
            image_cache="disk",
            horizontal_flip=False,
            max_rotation_degrees=0.0,
            max_shift_fraction=0.0,
        )
        blog = RetinaNetConfig(image_size=512, data=blog_data)
        smoke = smoke_from_env()
        if smoke is None:
            return blog
        blog = replace_section(blog, "model", backbone_weights=None)
        return replace_section(blog, "train", epochs=smoke.epochs)
    cpu_model = ModelConfig(
        backbone="small_resnet",
        backbone_weights=None,
        freeze_backbone=False,
        fpn_channels=64,
        head_convs=1,
    )
    cpu_train = TrainConfig(
        epochs=30,
        batch_size=8,
        base_batch_size=8,  # its rates were tuned at batch 8
        optimizer="adam",
        learning_rates=(1e-3, 1e-4),
        epochs_per_drop=22,
    )
    return RetinaNetConfig(image_size=256, model=cpu_model, train=cpu_train)


def _format_rate(rate: float) -> str:
    """`5e-4`, `2.5e-5`: a learning rate the way papers write it."""
    mantissa, exponent = f"{rate:.3e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def _describe_augmentation(data: DataConfig) -> str:
    parts = ["horizontal flips"] if data.horizontal_flip else []
    if data.max_rotation_degrees > 0:
        parts.append(f"rotations up to {data.max_rotation_degrees:g} degrees")
    if data.max_shift_fraction > 0:
        parts.append(f"shifts up to {data.max_shift_fraction:.0%}")
    return ", ".join(parts) if parts else "none"


def describe_setup(cfg: RetinaNetConfig) -> dict[str, str]:
    """The model and training setup in words, one entry per row of a side-by-side table.

    Example:
        >>> describe_setup(config_for_mode("full"))["learning rate from epoch"]
        '5e-4 (1), 5e-5 (6), 2.5e-5 (11), 2.5e-6 (16), 1e-6 (21)'
    """
    model, train = cfg.model, cfg.train
    weights = {"imagenet": "ImageNet weights", None: "trained from scratch"}.get(
        model.backbone_weights, "weights from a file"
    )
    rates = train.effective_learning_rates
    starts = [1 + k * train.epochs_per_drop for k in range(len(rates))]
    schedule = ", ".join(
        f"{_format_rate(rate)} ({start})"
        for rate, start in zip(rates, starts, strict=True)
        if start <= train.epochs
    )
    optimizer = "SGD, momentum " + f"{train.momentum:g}" if train.optimizer == "sgd" else "Adam"
    return {
        "input size": f"{cfg.image_size} x {cfg.image_size} px",
        "backbone": f"{model.backbone}, {weights}",
        "backbone trained": "no (frozen)" if model.freeze_backbone else "yes",
        "FPN width (channels)": str(model.fpn_channels),
        "hidden convolutions per head": str(model.head_convs),
        "optimizer": optimizer,
        "learning rate from epoch": schedule,
        "warm-up (epochs)": f"{train.warmup_epochs:g}",
        "augmentation": _describe_augmentation(cfg.data),
        "batch size": str(train.batch_size),
        "epochs": str(train.epochs),
    }


#: Where the synthetic generator draws opacity centres, as a range of heights in units of the
#: lung's half-height (-1 apex, +1 base). "lower" is RSNA's bias to the lower zones and the
#: data set's default; "upper" never overlaps it, so a model trained on the default has never
#: seen an opacity centred there (the position-bias study's test images).
OPACITY_ZONES = {"lower": (-0.2, 0.6), "upper": (-0.9, -0.45)}
OPACITY_ZONE_NAMES = tuple(OPACITY_ZONES)


@dataclass(frozen=True)
class SyntheticConfig:
    """Settings of the synthetic RSNA-format data set (see `retinanet_lib.synthetic`).

    Attributes:
        num_train: Images in `stage_2_train_images/` (labelled in the CSV).
        num_test: Images in `stage_2_test_images/`. Unlike the real Kaggle download, the
            synthetic test split is labelled (`stage_2_test_labels.csv`), so it can serve as
            an independent test set, used only for final numbers.
        image_size: Side of every image in pixels (RSNA: 1024).
        positive_fraction: Share of training images with at least one opacity (RSNA: ~0.23).
        box_count_probs: Probability of 1, 2, 3, ... boxes on a positive image.
        box_width_median: Median opacity width in pixels (log-normal).
        box_aspect_median: Median height / width of an opacity (RSNA boxes are tall).
        box_size_log_sigma: Spread (log-normal sigma) of widths and aspects.
        box_side_range: Smallest and largest box side drawn, in pixels.
        opacity_strength_range: Added brightness of an opacity (image scale 0..1).
        clutter_fraction: Share of negatives carrying faint lung-like clutter.
        clutter_strength_range: Added brightness of clutter blobs (fainter than opacities).
        opacity_zone: Where opacity centres sit: `"lower"` (RSNA's bias to the lower zones)
            or `"upper"` (a zone the default never uses: see `OPACITY_ZONES`).
        noise_std_range: Standard deviation of the pixel noise (image scale 0..1).
        compression: `"jpeg"` (JPEG baseline, as RSNA) or `"none"`.
        jpeg_quality: Pillow JPEG quality.
        seed: The training images are a deterministic function of this seed.
        test_seed: The test images are drawn from their own generator seed, so the test
            split is independent of the training data.
    """

    num_train: int = 300
    num_test: int = 300
    image_size: int = 1024
    positive_fraction: float = 0.3
    box_count_probs: tuple[float, ...] = (0.42, 0.52, 0.05, 0.01)
    box_width_median: float = 220.0
    box_aspect_median: float = 1.45
    box_size_log_sigma: float = 0.3
    box_side_range: tuple[float, float] = (40.0, 800.0)
    opacity_strength_range: tuple[float, float] = (0.12, 0.26)
    clutter_fraction: float = 0.5
    clutter_strength_range: tuple[float, float] = (0.03, 0.07)
    opacity_zone: str = "lower"
    noise_std_range: tuple[float, float] = (0.01, 0.03)
    compression: str = "jpeg"
    jpeg_quality: int = 90
    seed: int = 0
    test_seed: int = 1

    def __post_init__(self) -> None:
        for name in (
            "box_count_probs",
            "box_side_range",
            "opacity_strength_range",
            "clutter_strength_range",
            "noise_std_range",
        ):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.num_train < 1 or self.num_test < 0:
            raise ValueError(
                f"Need num_train >= 1 and num_test >= 0, got {self.num_train}, {self.num_test}."
            )
        if self.image_size < 64:
            raise ValueError(f"image_size must be at least 64, got {self.image_size}.")
        if not 0.0 <= self.positive_fraction <= 1.0 or not 0.0 <= self.clutter_fraction <= 1.0:
            raise ValueError("positive_fraction and clutter_fraction must lie in [0, 1].")
        if not math.isclose(sum(self.box_count_probs), 1.0, abs_tol=1e-6):
            raise ValueError(f"box_count_probs must sum to 1, got {self.box_count_probs}.")
        low, high = self.box_side_range
        if not 0 < low < high:
            raise ValueError(f"box_side_range must be 0 < low < high, got {self.box_side_range}.")
        if self.compression not in ("jpeg", "none"):
            raise ValueError(f"compression must be 'jpeg' or 'none', got {self.compression!r}.")
        if self.opacity_zone not in OPACITY_ZONE_NAMES:
            raise ValueError(
                f"opacity_zone must be one of {OPACITY_ZONE_NAMES}, got {self.opacity_zone!r}."
            )


@dataclass(frozen=True)
class PretrainConfig:
    """Pre-training the small backbone on a source task (Chapter 6's transfer learning).

    The source task is image classification, "does this X-ray have an opacity?", on a
    synthetic set of its own: the same generator as the detection data (same anatomy and
    opacities), other images (another seed) and another task (one label per image, no boxes).
    By the transfer-learning notes' rule of thumb it is a *similar* source.

    Attributes:
        source: The source images (balanced: half of them have an opacity).
        validation_fraction: Share of the source images held out to watch the classifier.
        epochs: Passes over the source training images.
        batch_size: Images per step.
        learning_rate: Adam's first rate (cosine decay to 0 over the epochs).
        batchnorm_momentum: Momentum of the batch-normalisation moving averages during
            pre-training (Keras's default 0.99 trails a short run; the statistics are
            recomputed exactly at the end anyway: `pretrain.precise_batchnorm`).
        seed: Weights, split and data order.
    """

    source: SyntheticConfig = field(
        default_factory=lambda: SyntheticConfig(
            num_train=600, num_test=1, positive_fraction=0.5, seed=3, test_seed=4
        )
    )
    validation_fraction: float = 0.2
    epochs: int = 12
    batch_size: int = 16
    learning_rate: float = 1.0e-3
    batchnorm_momentum: float = 0.9
    seed: int = 0
