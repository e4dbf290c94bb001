"""Small, repeatable experiments: train one configuration with one seed, score it, summarise.

The book's comparisons (loss functions, input size, augmentation, the CPU recipe) are too long
to run inside a chapter, so `data_scripts/` scripts run them with several seeds and write one
CSV row per configuration ("arm") and seed. The CSVs ship with the library
(`retinanet_lib/results/`), so a chapter can plot them in Colab too (`load_result`), next to a
short live run made with the same `run_arm`.

Every run is scored the same way: the score threshold is chosen on the training split
(`evaluate.choose_score_threshold`), then the validation split is scored at that threshold
(RSNA metric, precision and recall at IoU 0.5) and without any threshold (average precision at
IoU 0.5). The test split is never used here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from retinanet_lib.anchors import anchor_level_ids, generate_anchors
from retinanet_lib.boxes import pairwise_iou, scale_boxes, xywh_to_xyxy
from retinanet_lib.config import (
    BACKGROUND_CLASS,
    IGNORE_CLASS,
    DataConfig,
    RetinaNetConfig,
    replace_section,
)
from retinanet_lib.dicom_io import read_dicom_header
from retinanet_lib.encoding import split_targets
from retinanet_lib.evaluate import (
    SplitPredictions,
    average_precision_at,
    choose_score_threshold,
    predict_split,
    score_at,
)
from retinanet_lib.inference import predict_images
from retinanet_lib.metrics import DetectionScores, PairedDifference, paired_bootstrap_difference
from retinanet_lib.pipeline import Records, make_dataset, num_batches
from retinanet_lib.preprocess import augment, to_model_input
from retinanet_lib.splits import DataSplits
from retinanet_lib.train import set_seed, train_retinanet

__all__ = [
    "ArmResult",
    "anchor_counts",
    "anchor_coverage",
    "config_id",
    "FirstStepsLoss",
    "RESULTS_PACKAGE",
    "append_row",
    "append_rows",
    "done_runs",
    "first_steps_losses",
    "load_result",
    "moved_validation_scores",
    "paired_difference",
    "paired_table",
    "run_arm",
    "summarize",
    "summary_text",
    "with_seed",
]

#: Package folder holding the committed study results.
RESULTS_PACKAGE = "retinanet_lib.results"


class FirstStepsLoss(keras.callbacks.Callback):
    """Records the loss of each of the first `num_steps` training batches.

    Keras reports a running mean over the epoch so far (`m_k` after batch `k`, counted from
    0); the loss of batch `k` is recovered as `(k + 1) m_k - k m_(k-1)`. The means are float32,
    so a batch whose loss is near 0 (no opacity, confident background) can come out a hair
    below 0; such values are set to 0.
    """

    def __init__(self, num_steps: int) -> None:
        super().__init__()
        self.num_steps = num_steps
        self.losses: list[float] = []
        self._previous_mean = 0.0

    def on_train_batch_end(self, batch, logs=None):
        if len(self.losses) >= self.num_steps:
            return
        mean = float((logs or {}).get("loss", np.nan))
        previous = self._previous_mean if batch > 0 else 0.0
        self.losses.append(max(0.0, (batch + 1) * mean - batch * previous))
        self._previous_mean = mean


def config_id(cfg: RetinaNetConfig) -> str:
    """A short fingerprint of everything a run's result depends on in its config.

    Two rows of the results CSVs with the same `config_id` and seed describe the same training
    run, whatever the study and the arm's name; `tests/test_reproducibility.py` checks that the
    committed CSVs agree wherever that happens. The seed is left out (it has its own column).
    Only the settings that differ from `RetinaNetConfig()`'s defaults enter the fingerprint,
    so a new setting added later with a default leaves every existing fingerprint unchanged.

    Returns:
        12 hex digits of the SHA-1 of the changed settings as sorted JSON.
    """
    fields = _changed(dataclasses.asdict(with_seed(cfg, 0)), dataclasses.asdict(type(cfg)()))
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _changed(values: dict, defaults: dict) -> dict:
    """The entries of `values` that differ from `defaults`, recursing into sections."""
    changed = {}
    for key, value in values.items():
        default = defaults.get(key)
        if isinstance(value, dict) and isinstance(default, dict):
            inner = _changed(value, default)
            if inner:
                changed[key] = inner
        elif key not in defaults or value != default:
            changed[key] = value
    return changed


def with_seed(cfg: RetinaNetConfig, seed: int) -> RetinaNetConfig:
    """`cfg` with training seed `seed` (weights, data order, augmentation); same data split."""
    return replace_section(cfg, "train", seed=seed)


@dataclass(frozen=True)
class ArmResult:
    """One trained and scored configuration.

    Attributes:
        row: The CSV row: `arm`, `seed`, `rsna_metric`, `precision`, `recall`, `ap50`,
            `score_threshold`, `train_seconds`, `best_epoch`, `val_images`, `data`,
            `config_id` (`config_id(cfg)`: equal for the same training run in any study).
        model: The trained model (best validation-loss weights).
        history: Per-epoch losses.
        first_losses: Training loss of the first steps (when asked for).
        validation: The validation predictions (for curves and galleries).
        per_image: `(I,)` per-image RSNA scores on the validation split at the run's
            threshold, NaN for images the metric does not count (for paired comparisons,
            `metrics.paired_bootstrap_difference`).
    """

    row: dict
    model: keras.Model
    history: dict[str, list[float]]
    first_losses: list[float]
    validation: SplitPredictions
    per_image: np.ndarray


class IncompleteStudyDataError(RuntimeError):
    """A study run skipped unreadable training or validation files."""


def _require_every_file(step: str, rejects: pd.DataFrame) -> None:
    """Raises `IncompleteStudyDataError` if `rejects` (`file`, `error`) lists any file."""
    if len(rejects):
        skipped = ", ".join(Path(name).name for name in rejects["file"].head(3))
        raise IncompleteStudyDataError(
            f"{step}: {len(rejects)} files could not be read and were skipped ({skipped}, ...); "
            "a study row must come from every image of the split. Is another process writing "
            "the data folder?"
        )


def run_arm(
    arm: str,
    cfg: RetinaNetConfig,
    splits: DataSplits,
    seed: int,
    first_steps: int = 0,
) -> ArmResult:
    """Trains `cfg` with `seed` as `train_retinanet` does (best validation-loss checkpoint) and
    scores it on the validation split at a threshold chosen on the training split.

    Args:
        arm: Name of the configuration (the CSV's `arm` column).
        cfg: The configuration.
        splits: Data (train and validation are used).
        seed: Training seed.
        first_steps: Record the loss of this many first training steps.

    Returns:
        The row and the trained model.

    Raises:
        IncompleteStudyDataError: If training or scoring skipped files it could not read.
            Training elsewhere goes on without them; a study row must come from the whole
            split, or it cannot be compared with the same configuration and seed anywhere
            else.
    """
    cfg = with_seed(cfg, seed)
    set_seed(seed)
    recorder = FirstStepsLoss(first_steps)
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        result = train_retinanet(
            cfg,
            splits.train,
            splits.validation,
            workdir,
            verbose=0,
            tensorboard=False,
            extra_callbacks=[recorder] if first_steps else None,
        )
        seconds = time.perf_counter() - start
    _require_every_file(f"{arm}, seed {seed}, training", result.rejects)
    train_split = predict_split(result.model, splits.train, cfg)
    threshold, _ = choose_score_threshold(train_split.predictions, train_split.gt_boxes_xyxy, cfg)
    validation = predict_split(result.model, splits.validation, cfg)
    for name, predicted in (("training split", train_split), ("validation split", validation)):
        _require_every_file(f"{arm}, seed {seed}, scoring the {name}", predicted.rejects)
    scores = score_at(validation.predictions, validation.gt_boxes_xyxy, cfg, threshold)
    curve = average_precision_at(validation.predictions, validation.gt_boxes_xyxy, cfg)
    val_loss = result.history.get("val_loss", [np.nan])
    row = {
        "arm": arm,
        "seed": seed,
        "rsna_metric": round(scores.rsna_metric, 4),
        "precision": round(scores.precision, 4),
        "recall": round(scores.recall, 4),
        "ap50": round(curve.average_precision, 4),
        "score_threshold": threshold,
        "train_seconds": round(seconds, 1),
        "best_epoch": int(np.nanargmin(val_loss)) + 1,
        "val_images": len(validation),
        "data": splits.data_name,
        "config_id": config_id(cfg),
    }
    return ArmResult(
        row, result.model, result.history, recorder.losses, validation, scores.per_image
    )


def anchor_counts(
    records: Records, cfg: RetinaNetConfig, batch_size: int = 16, by_level: bool = False
) -> pd.DataFrame:
    """Positive, ignored and background anchors of every image, as the training targets
    encode them (no augmentation).

    Args:
        records: The images and their boxes.
        cfg: Image size, anchors and matching rule.
        batch_size: Images encoded at a time.
        by_level: Also count the positive anchors of each pyramid level.

    Returns:
        One row per image: `positive`, `ignored`, `background`, `gt_boxes`, and with
        `by_level` one `positive_P<level>` column per level (they sum to `positive`).
    """
    levels = cfg.anchors.levels
    if by_level:
        level_ids = anchor_level_ids(cfg.image_size, cfg.image_size, cfg.anchors)
    dataset = make_dataset(records, cfg, batch_size, training=False, cache=False)
    rows = []
    for _, targets in dataset:
        codes = split_targets(targets)[1].numpy()  # (B, A)
        columns = [
            (codes >= 0).sum(axis=1),
            (codes == IGNORE_CLASS).sum(axis=1),
            (codes == BACKGROUND_CLASS).sum(axis=1),
        ]
        if by_level:
            columns += [((codes >= 0) & (level_ids == level)).sum(axis=1) for level in levels]
        rows.append(np.stack(columns, axis=1))
    names = ["positive", "ignored", "background"]
    if by_level:
        names += [f"positive_P{level}" for level in levels]
    table = pd.DataFrame(np.concatenate(rows), columns=names)
    table.insert(3, "gt_boxes", [len(boxes) for boxes in records.boxes_xywh])
    return table


def anchor_coverage(records: Records, cfg: RetinaNetConfig) -> pd.DataFrame:
    """How well the anchors of `cfg` fit the ground-truth boxes of `records`, box by box.

    The boxes are scaled to the input as the pipeline scales them (each file's own size,
    read from its DICOM header). A box whose best anchor stays below `cfg.encoder.match_iou`
    gets no positive anchor, so no box-regression signal (unless `match_low_quality`). The
    synthetic boxes of one image never overlap, so `anchors_at_match_iou` is also the number
    of positive anchors the encoder gives the box.

    Args:
        records: Images and their boxes (original pixels).
        cfg: Input size, anchors and matching thresholds.

    Returns:
        One row per box: `image` (index into `records`), `best_iou`, `anchors_at_match_iou`.
    """
    anchors_xyxy = generate_anchors(cfg.image_size, cfg.image_size, cfg.anchors)
    rows = []
    for index, (path, boxes_xywh) in enumerate(zip(records.paths, records.boxes_xywh, strict=True)):
        if len(boxes_xywh) == 0:
            continue
        header = read_dicom_header(path)  # the pipeline's resize factors, new / old
        boxes_xyxy = scale_boxes(
            xywh_to_xyxy(boxes_xywh),
            cfg.image_size / header.Columns,
            cfg.image_size / header.Rows,
        )
        iou = np.asarray(pairwise_iou(boxes_xyxy, anchors_xyxy))  # (G, A)
        rows.append(
            pd.DataFrame(
                {
                    "image": index,
                    "best_iou": iou.max(axis=1),
                    "anchors_at_match_iou": (iou >= cfg.encoder.match_iou).sum(axis=1),
                }
            )
        )
    columns = ["image", "best_iou", "anchors_at_match_iou"]
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns)


def first_steps_losses(
    cfg: RetinaNetConfig, splits: DataSplits, seed: int, num_steps: int
) -> list[float]:
    """The loss of each of the first `num_steps` training steps, trained exactly as `run_arm`
    trains (same seed, data order and schedule), but only for as many epochs as needed.

    Returns:
        `num_steps` per-step losses.
    """
    steps_per_epoch = num_batches(len(splits.train), cfg.train.batch_size, training=True)
    epochs = -(-num_steps // steps_per_epoch)
    short = replace_section(with_seed(cfg, seed), "train", epochs=epochs)
    set_seed(seed)
    recorder = FirstStepsLoss(num_steps)
    with tempfile.TemporaryDirectory() as workdir:
        train_retinanet(
            short,
            splits.train,
            splits.validation,
            workdir,
            verbose=0,
            tensorboard=False,
            extra_callbacks=[recorder],
        )
    return recorder.losses


def moved_validation_scores(
    model: keras.Model,
    cfg: RetinaNetConfig,
    validation: SplitPredictions,
    threshold: float,
    move: DataConfig,
    seed: int = 0,
) -> DetectionScores:
    """RSNA metric on the validation images moved by `augment` (a fixed, seeded transform
    per image), so that opacities appear where training rarely put them.

    Args:
        model: A trained model.
        cfg: Its config.
        validation: `predict_split(..., keep_images=True)` of the validation split.
        threshold: Score threshold (chosen on the training split).
        move: The flip / rotation / shift to apply.
        seed: Seed of the transforms (image `i` uses `[seed, i]`).

    Returns:
        The scores on the moved images.
    """
    if validation.images is None:
        raise ValueError("moved_validation_scores needs predict_split(..., keep_images=True).")
    moved = [
        augment(image, boxes, move, seed=[seed, index])
        for index, (image, boxes) in enumerate(
            zip(validation.images, validation.gt_boxes_xyxy, strict=True)
        )
    ]
    images = np.stack([image.numpy() for image, _ in moved])
    predictions = predict_images(model, to_model_input(images, cfg.model.backbone), cfg)
    return score_at(predictions, [boxes.numpy() for _, boxes in moved], cfg, threshold)


def done_runs(csv_path: str | Path) -> set[tuple[str, int]]:
    """`(arm, seed)` pairs already in a results CSV (so a study can resume)."""
    path = Path(csv_path)
    if not path.is_file():
        return set()
    table = pd.read_csv(path)
    return set(zip(table["arm"], table["seed"].astype(int), strict=True))


def append_row(csv_path: str | Path, row: dict) -> None:
    """Appends one row to a results CSV (header written with the first row)."""
    append_rows(csv_path, pd.DataFrame([row]))


def append_rows(csv_path: str | Path, rows: pd.DataFrame) -> None:
    """Appends a table's rows to a results CSV (header written with the first rows)."""
    path = Path(csv_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(path, mode="a", header=not path.is_file(), index=False)


def load_result(name: str) -> pd.DataFrame:
    """A committed study result, e.g. `load_result("loss_study")` (`results/loss_study.csv`)."""
    source = resources.files(RESULTS_PACKAGE) / f"{name}.csv"
    if not source.is_file():
        raise FileNotFoundError(
            f"No study result {name!r} in {RESULTS_PACKAGE}; the scripts in data_scripts/ "
            "write them (see their docstrings)."
        )
    with source.open() as handle:
        return pd.read_csv(handle)


def summarize(
    table: pd.DataFrame,
    by: str | Sequence[str] = "arm",
    columns: Sequence[str] = ("rsna_metric", "ap50", "precision", "recall"),
    order: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Mean, standard deviation, minimum and maximum over seeds, per arm.

    Returns:
        One row per arm, columns `(metric, statistic)` plus `seeds`, in `order` if given.
    """
    grouped = table.groupby(by, sort=False)
    summary = grouped[list(columns)].agg(["mean", "std", "min", "max"])
    summary[("seeds", "")] = grouped.size()
    if order is not None:
        summary = summary.loc[list(order)]
    return summary


def summary_text(
    table: pd.DataFrame,
    columns: Sequence[str] = ("ap50", "rsna_metric"),
    order: Sequence[str] | None = None,
    by: str = "arm",
) -> pd.DataFrame:
    """`summarize` as compact text: "mean ± sd (min to max)" per metric, and the seeds.

    Example:
        A column holds entries like `"0.50 ± 0.02 (0.48 to 0.52)"`.
    """
    summary = summarize(table, by, columns, order)
    text = pd.DataFrame(index=summary.index)
    for column in columns:
        stats = summary[column]
        text[column] = [
            f"{row['mean']:.2f} ± {0.0 if np.isnan(row['std']) else row['std']:.2f} "
            f"({row['min']:.2f} to {row['max']:.2f})"
            for _, row in stats.iterrows()
        ]
    text["seeds"] = summary[("seeds", "")].to_numpy()
    return text


def paired_difference(
    per_image: pd.DataFrame,
    arm_a: str,
    arm_b: str,
    column: str = "rsna_score",
    num_resamples: int = 2000,
) -> PairedDifference:
    """`arm_b - arm_a` on the seeds and images both arms have, with a 95 % paired bootstrap
    interval over seeds and images (`metrics.paired_bootstrap_difference`).

    Args:
        per_image: A study's per-image table: `arm`, `seed`, `image` and `column` (empty where
            the metric does not count the image).
        arm_a: The reference arm.
        arm_b: The arm compared with it.
        column: The per-image score.
        num_resamples: Bootstrap resamples.

    Returns:
        The paired difference.

    Raises:
        ValueError: If the two arms were not run with the same seeds on the same images.
    """
    grids = {}
    for arm in (arm_a, arm_b):
        rows = per_image[per_image["arm"] == arm]
        if rows.empty:
            raise ValueError(f"No per-image rows for arm {arm!r}.")
        grids[arm] = rows.pivot(index="seed", columns="image", values=column).sort_index()
    a, b = grids[arm_a], grids[arm_b]
    if list(a.index) != list(b.index) or set(a.columns) != set(b.columns):
        raise ValueError(
            f"{arm_a!r} and {arm_b!r} were not run on the same seeds and images "
            f"(seeds {list(a.index)} and {list(b.index)})."
        )
    b = b[a.columns]
    return paired_bootstrap_difference(a.to_numpy(), b.to_numpy(), num_resamples=num_resamples)


def paired_table(
    per_image: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    column: str = "rsna_score",
    num_resamples: int = 2000,
) -> pd.DataFrame:
    """`paired_difference` for several pairs of arms, one row each, ready to print.

    Args:
        per_image: A study's per-image table (`arm`, `seed`, `image`, `column`).
        pairs: `(arm_a, arm_b)` pairs; each row is `arm_b - arm_a`.
        column: The per-image score.
        num_resamples: Bootstrap resamples.

    Returns:
        Indexed by `"arm_b - arm_a"`: `difference`, `95% low`, `95% high`, `seeds`, `images`
        and `verdict` ("better" / "worse" only when the interval excludes 0).
    """
    rows = {}
    for arm_a, arm_b in pairs:
        result = paired_difference(per_image, arm_a, arm_b, column, num_resamples)
        rows[f"{arm_b} - {arm_a}"] = result.row()
    return pd.DataFrame.from_dict(rows, orient="index")
