"""Run the book's multi-seed studies and write their results CSVs (one row per arm and seed).

    python data_scripts/run_studies.py recipe          # the CPU-recipe ablation (Results page)
    python data_scripts/run_studies.py loss            # Chapter 4: CE, balanced CE, OHEM, focal
    python data_scripts/run_studies.py imbalance       # Chapter 4: balanced batches of images
    python data_scripts/run_studies.py transfer        # Chapter 6: transfer-learning levels
    python data_scripts/run_studies.py resolution      # Chapter 5: 128 px against 256 px
    python data_scripts/run_studies.py augmentation    # Chapter 5: the position-bias tests
    python data_scripts/run_studies.py final           # test-split numbers, before and after
    python data_scripts/run_studies.py batch           # batch 1 against batch 8, scaled rate
    python data_scripts/run_studies.py winners         # Chapter 7: image head, gating, ensembles
    python data_scripts/run_studies.py confirmation    # Chapter 7's verdict on untouched images
    python data_scripts/run_studies.py resolution augmentation final   # several, one process
    python data_scripts/run_studies.py loss --seeds 3 4 --arms "CE"   # more seeds, one arm

Each study trains the CPU default (synthetic data; 4.5 to 10 minutes a run on 2 CPU cores,
depending on what else runs) once per arm and seed, scores the validation split at a score
threshold chosen on the training split (`retinanet_lib.studies.run_arm`), and appends a row to
`retinanet_lib/results/<study>.csv` and every validation image's RSNA score to
`<study>_per_image.csv` (for paired comparisons, `studies.paired_table`). Each row records the
commit the process started from (`commit`; "+changes" when the work tree differed) and a
fingerprint of its configuration (`config_id`). Within one process a configuration and seed is
trained once: a study arm that another study or arm already trained reuses that run, so the
same run gives the same row in every CSV; `tests/test_reproducibility.py` checks that the
committed CSVs agree and that a retrained run would repeat exactly. Rows already in a CSV are
skipped, so an interrupted study resumes; delete the CSVs to start over. Run one study
process at a time on an otherwise idle machine: beside other training processes a run can
come out differently (the Results page, "One configuration, one number").

* *recipe*: changes of the CPU default as it was before the ablation (20 epochs); its
  "30 epochs" row became the default. Each baseline model is scored a second time with flip
  test-time augmentation (arm "flip TTA", no retraining; a missing "flip TTA" row trains the
  baseline's run again).
* *loss*: also writes `loss_first_steps.csv` (the loss of each of the first 60 training steps)
  and `loss_pr_curves.csv` (validation precision-recall curves).
* *imbalance*: the natural mix of training images (about 30 % with an opacity) against
  balanced batches (`DataConfig.positive_image_fraction` 0.5), with image-level recall,
  precision, F1 and specificity on the validation split (`image_*` columns) and, per image,
  whether it got a detection (`imbalance_image_level_per_image.csv`).
* *transfer*: Chapter 6's transfer-learning levels with the backbone pre-trained on the
  synthetic source task (`data_scripts/pretrain_backbone.py`, shipped in
  `retinanet_lib/weights/`): from scratch; frozen; the top stages unfrozen; everything
  fine-tuned with the backbone at 1/10 of the rate; and the blog's two attempts (unfrozen from
  the start; unfrozen after 15 of the 30 epochs). Batch normalisation of a pre-trained
  backbone stays frozen. Also writes every run's loss curves (`transfer_history.csv`) and,
  as the final study does, its test-split score at the validation-chosen threshold (`test_*`
  columns, `transfer_test_per_image.csv`), read only for the arm chosen on validation.
* *resolution*: 256 px, 128 px, and 128 px with every anchor halved; with the training boxes
  that have no anchor at IoU >= 0.5 and the positive anchors per box (`anchor_coverage`).
* *augmentation*: four augmentation settings, each scored on the validation images as they
  are, moved (whole-image flip, rotation and shift: `moved_*` columns and
  `augmentation_moved_per_image.csv`), and on 300 synthetic images whose opacities the
  generator put in the upper lung zones, where the training data has none (`upper_*`,
  `augmentation_upper_per_image.csv`).
* *final*: the only study that touches the test split: the CPU default before and after the
  ablation, each scored once on the test split at the threshold `data_scripts/train.py` would
  save (chosen on the validation split); per-image scores in `final_test_per_image.csv`.
* *batch*: whether the blog's batch size 1 can be traded for a GPU-sized batch: SGD (momentum
  0.9, as the blog) at batch 1 and the blog's rate 5e-4, against batch 8 at the linearly
  scaled rate 4e-3 with a 2-epoch warm-up (Goyal et al. 2017); 30 epochs each, rate / 10
  after epoch 22, five seeds.

* *winners*: Chapter 7, what won the RSNA challenge: the CPU default, with an image-level
  head (multi-task), and with the head and balanced batches, 3 seeds each. Every model is
  also run on the validation and test splits, plainly and with flip test-time augmentation,
  and each arm is scored in the variants `WINNER_VARIANTS` (one model or the ensemble of the
  three seeds; with flips; with an image-level gate), each with its threshold and gate chosen
  on the validation split and the test split scored once at them
  (`retinanet_lib.winners.score_variant`): `winners_variants.csv` and, per test image,
  `winners_test_per_image.csv`. `winners.csv` holds the training runs as every study does.
* *confirmation*: the winners study's three arms again (the same training runs: training
  repeats exactly), scored the same way but on the confirmation test set
  (`splits.CONFIRMATION_TEST`: 600 synthetic images from a test seed of their own), which no
  choice or comparison has seen: `confirmation_variants.csv`,
  `confirmation_test_per_image.csv`.

`LEGACY_STUDIES` lists the CSVs still written by older code (without these columns or with
uncommitted changes), which the agreement checks skip; the book says so where it uses them.
Since the recipe ablation's re-run (2026-11-30) the list is empty.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from retinanet_lib.anchors import fit_aspect_ratios  # noqa: E402
from retinanet_lib.config import (  # noqa: E402
    DataConfig,
    RetinaNetConfig,
    config_for_mode,
    replace_section,
)
from retinanet_lib.evaluate import (  # noqa: E402
    average_precision_at,
    choose_score_threshold,
    predict_split,
    score_at,
)
from retinanet_lib.metrics import bootstrap_interval  # noqa: E402
from retinanet_lib.pipeline import positive_image_mask  # noqa: E402
from retinanet_lib.pretrain import transfer_configs  # noqa: E402
from retinanet_lib.splits import (  # noqa: E402
    DataSplits,
    load_confirmation_test,
    load_splits,
    load_upper_zone_test,
)
from retinanet_lib.studies import (  # noqa: E402
    ArmResult,
    anchor_coverage,
    append_row,
    append_rows,
    config_id,
    done_runs,
    moved_validation_scores,
    run_arm,
    with_seed,
)
from retinanet_lib.winners import ModelOutputs, score_variant, variant_predictions  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "retinanet_lib" / "results"
FIRST_STEPS = 60
RESULTS_EXCLUDE = ":(exclude)retinanet_lib/results"  # git pathspec: the studies' output
#: How the augmentation study moves the validation images: a flip half of the time, up to
#: 5 degrees of rotation and up to 20 % of the side of shift, far beyond training's 6 %.
MOVE = DataConfig(horizontal_flip=True, max_rotation_degrees=5.0, max_shift_fraction=0.2)

Arm = Callable[[RetinaNetConfig, DataSplits], RetinaNetConfig]


def _training_boxes(splits: DataSplits) -> np.ndarray:
    return np.concatenate([boxes for boxes in splits.train.boxes_xywh if len(boxes)])


def _recipe_baseline() -> RetinaNetConfig:
    """The CPU default as it was before the ablation (20 epochs, drop after 14): the recipe
    study's arms are changes of it, so re-running the study reproduces its CSV."""
    return replace_section(config_for_mode("cpu"), "train", epochs=20, epochs_per_drop=14)


RECIPE_ARMS: dict[str, Arm] = {
    "baseline": lambda cfg, splits: cfg,
    "fitted aspect ratios": lambda cfg, splits: replace_section(
        cfg, "anchors", aspect_ratios=fit_aspect_ratios(_training_boxes(splits))
    ),
    "low-quality matching": lambda cfg, splits: replace_section(
        cfg, "encoder", match_low_quality=True
    ),
    "25 epochs": lambda cfg, splits: replace_section(cfg, "train", epochs=25, epochs_per_drop=18),
    "warm-up 1 epoch": lambda cfg, splits: replace_section(cfg, "train", warmup_epochs=1.0),
    "stronger augmentation": lambda cfg, splits: replace_section(
        cfg, "data", max_rotation_degrees=10.0, max_shift_fraction=0.12
    ),
    "no augmentation": lambda cfg, splits: replace_section(
        cfg, "data", horizontal_flip=False, max_rotation_degrees=0.0, max_shift_fraction=0.0
    ),
    "320 px, 14 epochs": lambda cfg, splits: dataclasses.replace(
        replace_section(cfg, "train", epochs=14, epochs_per_drop=10), image_size=320
    ),
    "30 epochs": lambda cfg, splits: replace_section(cfg, "train", epochs=30, epochs_per_drop=22),
    "batch 4": lambda cfg, splits: replace_section(cfg, "train", batch_size=4),
    "2 hidden convolutions per head": lambda cfg, splits: replace_section(
        cfg, "model", head_convs=2
    ),
    "stronger augmentation, 25 epochs": lambda cfg, splits: replace_section(
        replace_section(cfg, "data", max_rotation_degrees=10.0, max_shift_fraction=0.12),
        "train",
        epochs=25,
        epochs_per_drop=18,
    ),
    "stronger augmentation, 30 epochs": lambda cfg, splits: replace_section(
        replace_section(cfg, "data", max_rotation_degrees=10.0, max_shift_fraction=0.12),
        "train",
        epochs=30,
        epochs_per_drop=22,
    ),
}

LOSS_ARMS: dict[str, Arm] = {
    "CE": lambda cfg, splits: replace_section(cfg, "loss", alpha=None, gamma=0.0),
    "CE, no prior (bias 0)": lambda cfg, splits: replace_section(
        replace_section(cfg, "loss", alpha=None, gamma=0.0), "model", class_prior=0.5
    ),
    "balanced CE (alpha 0.75)": lambda cfg, splits: replace_section(
        cfg, "loss", alpha=0.75, gamma=0.0
    ),
    "OHEM (CE, 3 negatives per positive)": lambda cfg, splits: replace_section(
        cfg, "loss", alpha=None, gamma=0.0, hard_negative_ratio=3.0
    ),
    "focal loss (gamma 2, alpha 0.25)": lambda cfg, splits: replace_section(
        cfg, "loss", alpha=0.25, gamma=2.0
    ),
}


def _halved_anchors(cfg: RetinaNetConfig) -> RetinaNetConfig:
    """128 px with every anchor half the size: the anchors keep their size relative to the
    image (and to the opacities) when the input is halved, as they do when the blog's 512 px
    model meets a 1024 px image shrunk to 512."""
    sizes = tuple(size / 2 for size in cfg.anchors.base_sizes)
    return dataclasses.replace(
        replace_section(cfg, "anchors", base_sizes=sizes), image_size=cfg.image_size // 2
    )


RESOLUTION_ARMS: dict[str, Arm] = {
    "128 px": lambda cfg, splits: dataclasses.replace(cfg, image_size=128),
    "128 px, anchors halved": lambda cfg, splits: _halved_anchors(cfg),
    "256 px": lambda cfg, splits: dataclasses.replace(cfg, image_size=256),
}

AUGMENTATION_ARMS: dict[str, Arm] = {
    "none": lambda cfg, splits: replace_section(
        cfg, "data", horizontal_flip=False, max_rotation_degrees=0.0, max_shift_fraction=0.0
    ),
    "flips only": lambda cfg, splits: replace_section(
        cfg, "data", horizontal_flip=True, max_rotation_degrees=0.0, max_shift_fraction=0.0
    ),
    "shifts + rotations only": lambda cfg, splits: replace_section(
        cfg, "data", horizontal_flip=False
    ),
    "flips + shifts + rotations": lambda cfg, splits: cfg,
}

#: The batch study's base: the CPU default trained as the blog trains (SGD, momentum 0.9),
#: with the blog's batch-1 rate 5e-4 and a drop to a tenth after epoch 22.
BLOG_RATES = (5.0e-4, 5.0e-5)
BATCH_ARMS: dict[str, Arm] = {
    "batch 1, rate 5e-4": lambda cfg, splits: replace_section(cfg, "train", batch_size=1),
    "batch 8, rate 4e-3 (scaled), warm-up 2 epochs": lambda cfg, splits: replace_section(
        cfg, "train", batch_size=8, scale_learning_rate=True, warmup_epochs=2.0
    ),
}


def _batch_base() -> RetinaNetConfig:
    return replace_section(
        config_for_mode("cpu"),
        "train",
        optimizer="sgd",
        learning_rates=BLOG_RATES,
        base_batch_size=1,
    )


FINAL_ARMS: dict[str, Arm] = {
    "before the ablation (20 epochs)": lambda cfg, splits: _recipe_baseline(),
    "CPU default (30 epochs)": lambda cfg, splits: cfg,
}

IMBALANCE_ARMS: dict[str, Arm] = {
    "natural mix": lambda cfg, splits: cfg,
    "balanced batches (50 % positive images)": lambda cfg, splits: replace_section(
        cfg, "data", positive_image_fraction=0.5
    ),
}


def _transfer_arm(name: str) -> Arm:
    return lambda cfg, splits: transfer_configs(cfg)[name]


TRANSFER_ARMS: dict[str, Arm] = {
    name: _transfer_arm(name) for name in transfer_configs(config_for_mode("cpu"))
}


WINNER_ARMS: dict[str, Arm] = {
    "CPU default": lambda cfg, splits: cfg,
    "image head": lambda cfg, splits: replace_section(cfg, "model", image_head=True),
    "image head + balanced batches": lambda cfg, splits: replace_section(
        replace_section(cfg, "model", image_head=True), "data", positive_image_fraction=0.5
    ),
}
#: The winners study's variants of each arm: (name, ensemble of the seeds, flips, gate).
WINNER_VARIANTS = (
    ("single model", False, False, False),
    ("single, gated", False, False, True),
    ("single, flip TTA", False, True, False),
    ("ensemble of 3", True, False, False),
    ("ensemble of 3, gated", True, False, True),
    ("ensemble of 3, flip TTA", True, True, False),
    ("ensemble of 3, flip TTA, gated", True, True, True),
)

CONFIRMATION_ARMS = WINNER_ARMS  # the same three arms, scored on other images

STUDIES = {  # arms, seeds, base configuration
    "recipe": (RECIPE_ARMS, (0, 1, 2), _recipe_baseline),
    "loss": (LOSS_ARMS, (0, 1, 2), lambda: config_for_mode("cpu")),
    "resolution": (RESOLUTION_ARMS, (0, 1, 2), lambda: config_for_mode("cpu")),
    "augmentation": (AUGMENTATION_ARMS, (0, 1, 2), lambda: config_for_mode("cpu")),
    "final": (FINAL_ARMS, (0, 1, 2), lambda: config_for_mode("cpu")),
    "batch": (BATCH_ARMS, (0, 1, 2, 3, 4), _batch_base),
    "imbalance": (IMBALANCE_ARMS, (0, 1, 2), lambda: config_for_mode("cpu")),
    "transfer": (TRANSFER_ARMS, (0, 1, 2), lambda: config_for_mode("cpu")),
    "winners": (WINNER_ARMS, (0, 1, 2), lambda: config_for_mode("cpu")),
    "confirmation": (CONFIRMATION_ARMS, (0, 1, 2), lambda: config_for_mode("cpu")),
}
#: Studies that score variants of each arm's models (`run_winners`), and their test images.
VARIANT_STUDIES = {"winners": None, "confirmation": load_confirmation_test}
#: Studies written by older code, before rows carried `commit` and `config_id` and every
#: study wrote `<study>_per_image.csv`; re-running them (delete the CSV) brings them up to date.
LEGACY_STUDIES: tuple[str, ...] = ()


def _commit() -> str:
    """The commit the code was at, with "+changes" when the work tree differs from it (a
    changed tracked file or an untracked `.py` file).

    The studies' own output (`retinanet_lib/results/`) does not count as a change: a re-run
    deletes a study's CSVs first, and the rows it writes are what the study produces."""
    root = Path(__file__).resolve().parent.parent
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
    )
    if head.returncode != 0:
        return "unknown"
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", "--", ".", RESULTS_EXCLUDE],
        cwd=root,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    # A changed tracked file, or a new Python file (a module the run may import); logs and
    # other untracked output do not count.
    dirty = [line for line in status if not line.startswith("??") or line.endswith(".py")]
    return head.stdout.strip() + ("+changes" if dirty else "")


PerImage = dict[str, pd.DataFrame]  # CSV name suffix -> `image`, `rsna_score` columns


def _per_image(names: list[str], per_image: np.ndarray) -> pd.DataFrame:
    """One row per image: its file name and RSNA score (empty when the metric skips it)."""
    return pd.DataFrame({"image": names, "rsna_score": np.round(per_image, 4)})


def _names(records, indices) -> list[str]:
    return [Path(records.paths[i]).stem for i in indices]


def _position_scores(
    result: ArmResult, cfg: RetinaNetConfig, splits: DataSplits
) -> tuple[dict, PerImage]:
    """The position-bias tests, at the run's threshold (chosen on the training split):
    the validation images moved (whole-image flip, rotation and shift, with black bands),
    and the upper-zone test images, whose opacities the generator itself put where the
    training data never has them (nothing moved)."""
    threshold = result.row["score_threshold"]
    validation = predict_split(result.model, splits.validation, cfg, keep_images=True)
    moved = moved_validation_scores(result.model, cfg, validation, threshold, MOVE)
    upper_records = load_upper_zone_test()
    upper_split = predict_split(result.model, upper_records, cfg)
    upper = score_at(upper_split.predictions, upper_split.gt_boxes_xyxy, cfg, threshold)
    columns = {
        "moved_rsna_metric": round(moved.rsna_metric, 4),
        "moved_precision": round(moved.precision, 4),
        "moved_recall": round(moved.recall, 4),
        "upper_rsna_metric": round(upper.rsna_metric, 4),
        "upper_precision": round(upper.precision, 4),
        "upper_recall": round(upper.recall, 4),
        "upper_images": len(upper_split),
    }
    tables = {
        "moved": _per_image(_names(splits.validation, validation.indices), moved.per_image),
        "upper": _per_image(_names(upper_records, upper_split.indices), upper.per_image),
    }
    return columns, tables


def _coverage(result: ArmResult, cfg: RetinaNetConfig, splits: DataSplits) -> tuple[dict, PerImage]:
    """How the anchors fit the training boxes at this input size (no training involved)."""
    coverage = anchor_coverage(splits.train, cfg)
    columns = {
        "train_boxes": len(coverage),
        "train_boxes_without_anchor": int((coverage["best_iou"] < cfg.encoder.match_iou).sum()),
        "positive_anchors_per_box": round(float(coverage["anchors_at_match_iou"].mean()), 2),
    }
    return columns, {}


def _test_scores(
    result: ArmResult, cfg: RetinaNetConfig, splits: DataSplits
) -> tuple[dict, PerImage]:
    """The final numbers, by `data_scripts/train.py`'s rule: the threshold chosen on the
    validation split, the test split scored once at it, with a bootstrap interval."""
    model, validation = result.model, result.validation
    threshold, _ = choose_score_threshold(validation.predictions, validation.gt_boxes_xyxy, cfg)
    test = predict_split(model, splits.test, cfg)
    scores = score_at(test.predictions, test.gt_boxes_xyxy, cfg, threshold)
    low, high = bootstrap_interval(scores.per_image)
    columns = {
        "val_chosen_threshold": threshold,
        "test_rsna_metric": round(scores.rsna_metric, 4),
        "test_ci_low": round(low, 4),
        "test_ci_high": round(high, 4),
        "test_precision": round(scores.precision, 4),
        "test_recall": round(scores.recall, 4),
        "test_images": len(test),
    }
    return columns, {"test": _per_image(_names(splits.test, test.indices), scores.per_image)}


def _with_flips(cfg: RetinaNetConfig) -> RetinaNetConfig:
    """The configuration scored with flip test-time augmentation (what the "flip TTA" row's
    `config_id` and every flip-averaged prediction use)."""
    return replace_section(cfg, "decode", flip_tta=True)


def _flip_tta_row(
    result: ArmResult, cfg: RetinaNetConfig, splits: DataSplits
) -> tuple[dict, pd.DataFrame]:
    """The baseline model scored again with flip test-time augmentation (no retraining):
    its row and its per-image validation scores. The row's `config_id` is that of the
    configuration with `decode.flip_tta` on: the same training run as the baseline's, scored
    another way, so the two rows are not the same result."""
    tta_cfg = _with_flips(cfg)
    train_split = predict_split(result.model, splits.train, tta_cfg)
    threshold, _ = choose_score_threshold(
        train_split.predictions, train_split.gt_boxes_xyxy, tta_cfg
    )
    validation = predict_split(result.model, splits.validation, tta_cfg)
    scores = score_at(validation.predictions, validation.gt_boxes_xyxy, tta_cfg, threshold)
    curve = average_precision_at(validation.predictions, validation.gt_boxes_xyxy, tta_cfg)
    row = {
        **result.row,
        "arm": "flip TTA",
        "rsna_metric": round(scores.rsna_metric, 4),
        "precision": round(scores.precision, 4),
        "recall": round(scores.recall, 4),
        "ap50": round(curve.average_precision, 4),
        "score_threshold": threshold,
        "config_id": config_id(tta_cfg),
    }
    names = _names(splits.validation, validation.indices)
    return row, _per_image(names, scores.per_image)


def _append_run(study: str, name: str, seed: int, row: dict, tables: PerImage) -> None:
    """One run's row to `<study>.csv` and its per-image tables to
    `<study>[_<suffix>]_per_image.csv`."""
    append_row(RESULTS / f"{study}.csv", row)
    for suffix, table in tables.items():
        table.insert(0, "seed", seed)
        table.insert(0, "arm", name)
        stem = f"{study}_{suffix}" if suffix else study
        append_rows(RESULTS / f"{stem}_per_image.csv", table)


def _write_history(study: str, name: str, seed: int, result: ArmResult) -> None:
    """Every epoch's training and validation loss, to `<study>_history.csv`."""
    history = pd.DataFrame({k: np.round(v, 5) for k, v in result.history.items()})
    history.insert(0, "epoch", np.arange(1, len(history) + 1))
    history.insert(0, "seed", seed)
    history.insert(0, "arm", name)
    append_rows(RESULTS / f"{study}_history.csv", history)


def _loss_extras(name: str, seed: int, result: ArmResult, cfg: RetinaNetConfig) -> None:
    steps = pd.DataFrame(
        {
            "arm": name,
            "seed": seed,
            "step": np.arange(1, len(result.first_losses) + 1),
            "loss": np.round(result.first_losses, 5),
        }
    )
    for row in steps.to_dict("records"):
        append_row(RESULTS / "loss_first_steps.csv", row)
    curve = average_precision_at(
        result.validation.predictions, result.validation.gt_boxes_xyxy, cfg
    )
    for recall, precision, score in zip(curve.recall, curve.precision, curve.scores, strict=True):
        append_row(
            RESULTS / "loss_pr_curves.csv",
            {
                "arm": name,
                "seed": seed,
                "recall": round(float(recall), 4),
                "precision": round(float(precision), 4),
                "score": round(float(score), 4),
            },
        )


def _image_level(
    result: ArmResult, cfg: RetinaNetConfig, splits: DataSplits
) -> tuple[dict, PerImage]:
    """ "Does this image have an opacity?" on the validation split, at the run's threshold:
    image-level recall, precision, F1 and specificity, and per image whether an image with
    an opacity got a detection (`found`) and one without got one (`false_alarm`), for paired
    intervals on recall and on the false-alarm rate."""
    validation = result.validation
    scores = score_at(
        validation.predictions, validation.gt_boxes_xyxy, cfg, result.row["score_threshold"]
    )
    level = scores.image_level
    has_opacity = np.array([len(boxes) > 0 for boxes in validation.gt_boxes_xyxy])
    flagged = (scores.detections_per_image > 0).astype(float)
    columns = {
        "image_recall": round(level.recall, 4),
        "image_precision": round(level.precision, 4),
        "image_f1": round(level.f1, 4),
        "image_specificity": round(level.specificity, 4),
        "positive_images": int(has_opacity.sum()),
        "train_positive_share": round(float(positive_image_mask(splits.train).mean()), 4),
    }
    table = pd.DataFrame(
        {
            "image": _names(splits.validation, validation.indices),
            "has_opacity": has_opacity,
            "found": np.where(has_opacity, flagged, np.nan),
            "false_alarm": np.where(has_opacity, np.nan, flagged),
        }
    )
    return columns, {"image_level": table}


#: Studies that also write every run's loss curves (`<study>_history.csv`).
HISTORY_STUDIES = ("transfer",)

#: Extra columns of a study, from the trained run: `(result, cfg, splits) -> (columns, tables)`
#: where `tables` are more per-image scores, written to `<study>_<suffix>_per_image.csv`.
EXTRA_COLUMNS = {
    "augmentation": _position_scores,
    "resolution": _coverage,
    "final": _test_scores,
    "imbalance": _image_level,
    "transfer": _test_scores,  # the winner's final number; the chapter reads no other arm's
}


def run_study(
    study: str,
    seeds: tuple[int, ...],
    only: list[str] | None,
    runs: dict[tuple[str, int], ArmResult] | None = None,
    commit: str | None = None,
) -> Path:
    """Runs the missing (arm, seed) rows of one study and appends them to its CSVs.

    `runs` holds the training runs already made in this process, by `(config_id, seed)`:
    an arm whose configuration another study (or arm) has already trained with that seed
    reuses that run instead of training the same thing again, so one run gives one row
    wherever it appears. (A retrained copy would give the same numbers:
    `tests/test_reproducibility.py` checks that training repeats exactly for a seed.)
    """
    arms, _, make_base = STUDIES[study]
    runs = {} if runs is None else runs
    base = make_base()
    splits = load_splits("cpu", base)
    csv_path = RESULTS / f"{study}.csv"
    done = done_runs(csv_path)
    commit = commit or _commit()  # the code the process runs: main() reads it at the start
    for seed in seeds:  # seeds outermost: a partial study still covers every arm
        for name, make_cfg in arms.items():
            # The recipe's "flip TTA" row scores the baseline's run again: a missing one
            # needs that run even when the baseline's own row is done.
            needs_tta = study == "recipe" and name == "baseline" and ("flip TTA", seed) not in done
            if (only and name not in only) or ((name, seed) in done and not needs_tta):
                continue
            cfg = make_cfg(base, splits)
            start = time.perf_counter()
            key = (config_id(cfg), seed)
            reused = key in runs
            if not reused:
                runs[key] = run_arm(name, cfg, splits, seed, first_steps=FIRST_STEPS)
            result = runs[key]
            seeded = with_seed(cfg, seed)
            row = {**result.row, "arm": name}
            validation_names = _names(splits.validation, result.validation.indices)
            tables: PerImage = {"": _per_image(validation_names, result.per_image)}
            if study in EXTRA_COLUMNS:
                columns, extra_tables = EXTRA_COLUMNS[study](result, seeded, splits)
                row.update(columns)
                tables.update(extra_tables)
            row["commit"] = commit
            if (name, seed) not in done:
                _append_run(study, name, seed, row, tables)
                if study == "loss":
                    _loss_extras(name, seed, result, seeded)
                if study in HISTORY_STUDIES:
                    _write_history(study, name, seed, result)
            if needs_tta:
                tta_row, tta_per_image = _flip_tta_row(result, seeded, splits)
                tta_row["commit"] = commit
                _append_run(study, "flip TTA", seed, tta_row, {"": tta_per_image})
                print(f"{study} | flip TTA | seed {seed}: {tta_row}", flush=True)
            elapsed = time.perf_counter() - start
            how = "reused" if reused else "trained"
            print(f"{study} | {name} | seed {seed} ({how}, {elapsed:.0f} s): {row}", flush=True)
    return csv_path


def _model_outputs(result: ArmResult, cfg: RetinaNetConfig, splits: DataSplits, test_records):
    """A trained model's outputs on the validation split (those `run_arm` already made) and
    a test set, plain and flip-averaged, and their ground truth."""
    flipped_cfg = _with_flips(cfg)
    validation = result.validation
    test = predict_split(result.model, test_records, cfg)
    outputs = ModelOutputs(
        validation=validation.predictions,
        test=test.predictions,
        validation_flipped=predict_split(result.model, splits.validation, flipped_cfg).predictions,
        test_flipped=predict_split(result.model, test_records, flipped_cfg).predictions,
    )
    return outputs, validation, test


def run_winners(
    seeds: tuple[int, ...],
    only: list[str] | None,
    runs: dict[tuple[str, int], ArmResult],
    commit: str,
    study: str = "winners",
) -> Path:
    """The winners (or confirmation) study: trains each arm with every seed (reusing a run
    trained earlier in this process), writes the runs as any study does, then scores every
    variant of `WINNER_VARIANTS` of the arm on the study's test set (the test split, or for
    the confirmation study the confirmation set). An arm is resumed as a whole (its ensembles
    need all of its models in memory): an arm whose variants are all in the CSV is skipped."""
    arms, _, make_base = STUDIES[study]
    base = make_base()
    splits = load_splits("cpu", base)
    load_test = VARIANT_STUDIES[study]
    test_records = splits.test if load_test is None else load_test()
    if test_records is None:
        raise ValueError(f"The {study} study needs a labelled test split.")
    csv_path = RESULTS / f"{study}.csv"
    variants_path = RESULTS / f"{study}_variants.csv"
    done_variants = set()
    if variants_path.is_file():
        table = pd.read_csv(variants_path, dtype={"seeds": str})
        done_variants = set(zip(table["arm"], table["variant"], table["seeds"], strict=True))
    done = done_runs(csv_path)
    ensemble_seeds = "+".join(map(str, seeds))
    for name, make_cfg in arms.items():
        wanted = {
            (name, variant, ensemble_seeds if ensemble else str(seed))
            for variant, ensemble, _, _ in WINNER_VARIANTS
            for seed in seeds
        }
        if (only and name not in only) or wanted <= done_variants:
            continue
        cfg = make_cfg(base, splits)
        members, truth = [], {}
        for seed in seeds:
            start = time.perf_counter()
            key = (config_id(cfg), seed)
            reused = key in runs
            if not reused:
                runs[key] = run_arm(name, cfg, splits, seed)
            result = runs[key]
            seeded = with_seed(cfg, seed)
            outputs, validation, test = _model_outputs(result, seeded, splits, test_records)
            members.append(outputs)
            truth = {"validation": validation.gt_boxes_xyxy, "test": test.gt_boxes_xyxy}
            test_names = _names(test_records, test.indices)
            if (name, seed) not in done:
                append_row(csv_path, {**result.row, "arm": name, "commit": commit})
                names = _names(splits.validation, result.validation.indices)
                table = _per_image(names, result.per_image)
                table.insert(0, "seed", seed)
                table.insert(0, "arm", name)
                append_rows(RESULTS / f"{study}_per_image.csv", table)
            how = "reused" if reused else "trained"
            print(f"{study} | {name} | seed {seed} ({how}, {time.perf_counter() - start:.0f} s)")
        for variant, ensemble, flip, gate in WINNER_VARIANTS:
            groups = (
                [(ensemble_seeds, members)]
                if ensemble
                else [(str(seed), [member]) for seed, member in zip(seeds, members, strict=True)]
            )
            for label, group in groups:
                if (name, variant, label) in done_variants:
                    continue
                validation, test = variant_predictions(group, flip)
                scored = score_variant(
                    validation, truth["validation"], test, truth["test"], cfg, gate
                )
                row = {"arm": name, "variant": variant, "seeds": label, **scored.row}
                append_row(variants_path, {**row, "config_id": config_id(cfg), "commit": commit})
                per_image = scored.per_image
                per_image.insert(0, "image", test_names)
                per_image.insert(0, "seeds", label)
                per_image.insert(0, "variant", variant)
                per_image.insert(0, "arm", name)
                append_rows(RESULTS / f"{study}_test_per_image.csv", per_image)
                print(f"{study} | {name} | {variant} | seeds {label}: {row}", flush=True)
    return variants_path


def refresh_config_ids(study: str) -> Path:
    """Recomputes the `config_id` column of a study's CSV from its arm definitions (no
    training): `config_id` is a function of the configuration alone, so a change in how it is
    computed can be applied to committed rows. The CSV gains the column if it lacks it."""
    arms, _, make_base = STUDIES[study]
    base = make_base()
    splits = load_splits("cpu", base)
    csv_path = RESULTS / f"{study}.csv"
    table = pd.read_csv(csv_path)
    ids = {name: config_id(make_cfg(base, splits)) for name, make_cfg in arms.items()}
    missing = sorted(set(table["arm"]) - set(ids))
    if "flip TTA" in missing:  # the baseline's run, scored with flip test-time augmentation
        baseline = arms["baseline"](base, splits)
        ids["flip TTA"] = config_id(_with_flips(baseline))
        missing.remove("flip TTA")
    if missing:
        raise ValueError(f"{csv_path.name} holds arms the study no longer defines: {missing}")
    column = table["arm"].map(ids)
    if "config_id" in table:
        table["config_id"] = column
    else:
        table.insert(list(table.columns).index("data") + 1, "config_id", column)
    table.to_csv(csv_path, index=False)
    return csv_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="+", choices=sorted(STUDIES), metavar="study")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--arms", nargs="+", default=None, help="only these arms")
    parser.add_argument(
        "--refresh-config-ids",
        action="store_true",
        help="recompute the config_id column of the studies' CSVs from their arms (no training)",
    )
    args = parser.parse_args(argv)
    if args.refresh_config_ids:
        for study in args.studies:
            print(f"config_id refreshed in {refresh_config_ids(study)}")
        return 0
    runs: dict[tuple[str, int], ArmResult] = {}  # shared: a run is trained once
    # The code this process runs is the code it imported now: read the commit once, here.
    # (Read per study, it would name whatever the work tree holds when the study begins.)
    commit = _commit()
    for study in args.studies:
        seeds = tuple(args.seeds) if args.seeds else STUDIES[study][1]
        if study in VARIANT_STUDIES:
            path = run_winners(seeds, args.arms, runs, commit, study)
        else:
            path = run_study(study, seeds, args.arms, runs, commit)
        print(f"results in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
