"""The three splits every chapter and script works with, from one call.

* **train**: the patients the model learns from;
* **validation**: patients held out of training, used to pick the checkpoint, the score
  threshold and the recipe;
* **test**: labelled images used only for final numbers. The synthetic set labels its
  `stage_2_test_images/` (`stage_2_test_labels.csv`, drawn from its own generator seed). The
  Kaggle download has no test labels, so there the test split is held out of the training
  labels, by patient (`DataConfig.test_fraction`, 10 % of the patients, stratified like the
  validation split), and the Kaggle test images are only predicted, for the submission
  (`test_paths`).

Example:
    >>> splits = load_splits("cpu", config_for_mode("cpu"))  # doctest: +SKIP
    >>> splits.summary()  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from retinanet_lib.config import RetinaNetConfig, SyntheticConfig, smoke_from_env
from retinanet_lib.pipeline import Records, make_records
from retinanet_lib.rsna import (
    LABELS_FILE,
    TEST_IMAGES,
    TEST_LABELS_FILE,
    RsnaLabels,
    data_root,
    load_rsna_labels,
    split_patients_with_test,
)
from retinanet_lib.synthetic import ensure_synthetic_rsna

__all__ = [
    "CONFIRMATION_TEST",
    "DataSplits",
    "load_confirmation_test",
    "load_splits",
    "load_upper_zone_test",
    "prepare_data",
    "smoke_subset",
]


def prepare_data(mode: str, synthetic_cfg: SyntheticConfig | None = None) -> Path:
    """The data folder a chapter should read, for a run mode.

    * `"cpu"`: the synthetic set in `data_root() / "synthetic"`, generated on first use
      (about 15 s for 320 images) and reused afterwards.
    * `"full"`: the real data at `$RETINANET_DATA_DIR` (or its `rsna/` subfolder),
      downloaded from Kaggle into `rsna/` on first use (`download.ensure_rsna_data`); a clear
      error says what to do when that cannot be done.

    Returns:
        A folder with the RSNA layout.
    """
    if mode == "cpu":
        return ensure_synthetic_rsna(data_root() / "synthetic", synthetic_cfg, progress=False)
    if mode != "full":
        raise ValueError(f"Unknown run mode {mode!r}; use 'cpu' or 'full'.")
    from retinanet_lib.download import ensure_rsna_data

    return ensure_rsna_data(data_root())


#: The position-bias test set: as many images as the synthetic test split, drawn like it (same
#: anatomy, opacity sizes, share of positive images, exposure and noise) from a seed of their
#: own, with the opacities centred in the upper lung zones, where the default never puts them.
UPPER_ZONE_TEST = SyntheticConfig(num_train=1, num_test=300, opacity_zone="upper", test_seed=2)


#: A second, untouched test set: 600 images drawn exactly like the synthetic test split (same
#: generator settings) from a test seed no other set uses. Chapter 7 compares its variants on
#: the test split; this set then gives the comparison's verdict on images nothing was chosen
#: or compared on.
CONFIRMATION_TEST = SyntheticConfig(num_train=1, num_test=600, test_seed=5)


def _synthetic_test(folder: str, synthetic_cfg: SyntheticConfig) -> Records:
    root = ensure_synthetic_rsna(data_root() / folder, synthetic_cfg, progress=False)
    labels = load_rsna_labels(root / TEST_LABELS_FILE)
    return make_records(root, labels, labels.patient_ids, folder=TEST_IMAGES)


def load_confirmation_test(synthetic_cfg: SyntheticConfig = CONFIRMATION_TEST) -> Records:
    """The confirmation test set (`CONFIRMATION_TEST`), generated on first use in
    `data_root() / "synthetic_confirmation"` (about 30 s) and reused.

    Returns:
        The test records (the folder's one training image is not used).
    """
    return _synthetic_test("synthetic_confirmation", synthetic_cfg)


def load_upper_zone_test(synthetic_cfg: SyntheticConfig = UPPER_ZONE_TEST) -> Records:
    """Labelled synthetic test images whose opacities sit where the training data has none.

    Generated on first use in `data_root() / "synthetic_upper_zone"` (about 15 s) and reused.
    Nothing is shifted or rotated: the generator itself places the opacities, so the images
    have the anatomy and noise of the ordinary test split. The opacities differ in where they
    are and, since the generator clips them at the lung apex, in size: they come out smaller
    (Chapter 5 prints both splits' box sizes).

    Returns:
        The test records (the folder's one training image is not used).
    """
    return _synthetic_test("synthetic_upper_zone", synthetic_cfg)


@dataclass(frozen=True)
class DataSplits:
    """Records of the train, validation and (when labelled) test splits.

    Attributes:
        root: The RSNA-layout data folder.
        synthetic: Whether the data is the library's synthetic stand-in.
        labels: Parsed training labels (with their rejected rows).
        train: Training records.
        validation: Validation records (patients disjoint from `train`).
        test: Labelled test records: the labelled test images, or, when the test images
            have no labels, patients held out of the training labels.
        test_paths: Every file in the test-image folder, labelled or not (for prediction and
            the Kaggle submission).
        test_held_out: Whether `test` was held out of the training labels.
    """

    root: Path
    synthetic: bool
    labels: RsnaLabels
    train: Records
    validation: Records
    test: Records | None
    test_paths: list[str]
    test_held_out: bool = False

    @property
    def data_name(self) -> str:
        """The words every printed number carries: `"synthetic"` or `"real RSNA"`."""
        return "synthetic" if self.synthetic else "real RSNA"

    def summary(self) -> pd.DataFrame:
        """Images and positive images per split."""
        rows = {}
        test_name = "test (held out of training)" if self.test_held_out else "test"
        named = {"train": self.train, "validation": self.validation, test_name: self.test}
        for name, records in named.items():
            if records is not None:
                positives = sum(len(boxes) > 0 for boxes in records.boxes_xywh)
                rows[name] = {"images": len(records), "positive images": positives}
        table = pd.DataFrame(rows).T.rename_axis(f"split ({self.data_name})")
        return table


def load_splits(mode: str, cfg: RetinaNetConfig, data_root: str | Path | None = None) -> DataSplits:
    """Finds (or generates) the data of a run mode and splits it.

    Args:
        mode: `"cpu"` (synthetic data, generated on first use) or `"full"` (real data).
        cfg: Detector config; `cfg.data.validation_fraction`, `cfg.data.test_fraction`
            (used only when the folder has no test labels) and `cfg.data.seed` fix the
            patient split, identical for every training seed.
        data_root: An RSNA-layout folder to use instead of the mode's default.

    Returns:
        The splits.
    """
    from retinanet_lib.rsna import require_rsna_layout
    from retinanet_lib.synthetic import MANIFEST_NAME

    root = require_rsna_layout(data_root) if data_root is not None else prepare_data(mode)
    labels = load_rsna_labels(root / LABELS_FILE)
    held_out = not (root / TEST_LABELS_FILE).is_file()
    test_fraction = cfg.data.test_fraction if held_out else 0.0
    train_ids, val_ids, test_ids = split_patients_with_test(
        labels, cfg.data.validation_fraction, test_fraction, seed=cfg.data.seed
    )
    if held_out:
        test = make_records(root, labels, test_ids) if test_ids else None
    else:
        test_labels = load_rsna_labels(root / TEST_LABELS_FILE)
        test = make_records(root, test_labels, test_labels.patient_ids, folder=TEST_IMAGES)
    splits = DataSplits(
        root=root,
        synthetic=(root / MANIFEST_NAME).is_file(),
        labels=labels,
        train=make_records(root, labels, train_ids),
        validation=make_records(root, labels, val_ids),
        test=test,
        test_paths=sorted(str(p) for p in (root / TEST_IMAGES).glob("*.dcm")),
        test_held_out=held_out and test is not None,
    )
    smoke = smoke_from_env() if mode == "full" else None
    if smoke is None:
        return splits
    return dataclasses.replace(
        splits,
        train=smoke_subset(splits.train, smoke.train_images),
        validation=smoke_subset(splits.validation, smoke.validation_images),
        test=None if splits.test is None else smoke_subset(splits.test, smoke.test_images),
        test_paths=splits.test_paths[: smoke.test_images],
    )


def smoke_subset(records: Records, count: int) -> Records:
    """The first `count // 2` images with an opacity and as many without, fewer where the
    split has fewer (the smoke setting's splits: every kind of image, a handful of each).

    Returns:
        At most `count` records, positives first, each group in split order.
    """
    has_box = np.array([len(boxes) > 0 for boxes in records.boxes_xywh], bool)
    positives = np.flatnonzero(has_box)[: count // 2]
    negatives = np.flatnonzero(~has_box)[: count - len(positives)]
    return records.subset([int(i) for i in (*positives, *negatives)])
