"""The RSNA Pneumonia Detection Challenge files: where they live, their layout, their labels.

`stage_2_train_labels.csv` has one row per box: `patientId,x,y,width,height,Target`, with `x, y`
the box's top-left corner in pixels of the 1024 x 1024 image (format `"xywh"`). A patient
without opacity has one row with empty box fields and `Target` 0.

`load_rsna_labels` parses it with vectorized pandas operations and never drops a row silently:
every rejected row is returned with its reason, and a patient with any rejected row is left out
(their remaining boxes could make a positive image look negative) and counted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "DATA_DIR_ENV",
    "RSNA_LAYOUT",
    "RsnaLabels",
    "check_rsna_layout",
    "data_root",
    "load_rsna_labels",
    "parse_label_table",
    "read_text_table",
    "rejected_rows",
    "require_rsna_layout",
    "split_patients",
    "split_patients_with_test",
]

#: Environment variable naming the folder that holds the RSNA files (real or synthetic).
DATA_DIR_ENV = "RETINANET_DATA_DIR"
#: What a complete RSNA folder holds (stage 2 names), folder entries end with "/".
RSNA_LAYOUT = (
    "stage_2_train_images/",
    "stage_2_test_images/",
    "stage_2_train_labels.csv",
    "stage_2_detailed_class_info.csv",
)
LABELS_FILE = "stage_2_train_labels.csv"
#: Labels of the test images, in the same schema. The Kaggle download has none; the synthetic
#: set writes them so that its test split can be scored (never used to choose anything).
TEST_LABELS_FILE = "stage_2_test_labels.csv"
TRAIN_IMAGES = "stage_2_train_images"
TEST_IMAGES = "stage_2_test_images"
_BOX_COLUMNS = ["x", "y", "width", "height"]
_REQUIRED_COLUMNS = ["patientId", *_BOX_COLUMNS, "Target"]
RSNA_IMAGE_SIZE = 1024


def data_root(default: str | Path = "data") -> Path:
    """The data folder: `$RETINANET_DATA_DIR` if set, else `default` (relative to the cwd)."""
    return Path(os.environ.get(DATA_DIR_ENV, str(default))).expanduser()


def check_rsna_layout(root: str | Path) -> list[str]:
    """Lists what is missing from an RSNA folder (empty list: complete).

    A folder counts as present only if it holds at least one `.dcm` file.
    """
    root = Path(root)
    missing = []
    for entry in RSNA_LAYOUT:
        path = root / entry.rstrip("/")
        if entry.endswith("/"):
            if not path.is_dir() or next(path.glob("*.dcm"), None) is None:
                missing.append(f"{entry} (folder of .dcm files)")
        elif not path.is_file():
            missing.append(entry)
    return missing


def require_rsna_layout(root: str | Path) -> Path:
    """Returns `root` if it holds the RSNA files, else raises with what is missing and the fix."""
    root = Path(root)
    missing = check_rsna_layout(root)
    if missing:
        raise FileNotFoundError(
            f"{root} is not a complete RSNA pneumonia data folder; missing: {', '.join(missing)}. "
            "Download it with `retinanet_lib.download.ensure_rsna_data(folder)` (what full "
            "mode does in the chapters) or `python data_scripts/download_rsna.py`, or point "
            f"${DATA_DIR_ENV} at a folder that has these files, or generate the synthetic stand-in "
            "with `python data_scripts/make_synthetic_rsna.py`."
        )
    return root


@dataclass(frozen=True)
class RsnaLabels:
    """Parsed labels.

    Attributes:
        boxes_xywh: Patient id -> `(G, 4)` float32 boxes `(x, y, width, height)` in original
            image pixels; `(0, 4)` for negative patients. Insertion order = first CSV row.
        rejected: One row per rejected CSV row: its 0-based `row` number (data rows, header not
            counted), `patientId` and `reason`.
        excluded_patients: Patients left out because at least one of their rows was rejected.
    """

    boxes_xywh: dict[str, np.ndarray]
    rejected: pd.DataFrame
    excluded_patients: tuple[str, ...]

    @property
    def patient_ids(self) -> list[str]:
        return list(self.boxes_xywh)

    @property
    def num_boxes(self) -> int:
        return int(sum(len(boxes) for boxes in self.boxes_xywh.values()))

    def summary(self) -> dict[str, int]:
        """Counts: patients, positives, negatives, boxes, rejected rows, excluded patients."""
        positives = sum(len(boxes) > 0 for boxes in self.boxes_xywh.values())
        return {
            "patients": len(self.boxes_xywh),
            "positive_patients": int(positives),
            "negative_patients": len(self.boxes_xywh) - int(positives),
            "boxes": self.num_boxes,
            "rejected_rows": len(self.rejected),
            "excluded_patients": len(self.excluded_patients),
        }


def _row_reasons(table: pd.DataFrame, image_width: float, image_height: float) -> pd.Series:
    """Reason for rejecting each row ('' = valid), computed column-wise."""
    raw = table[_BOX_COLUMNS]
    numbers = raw.apply(pd.to_numeric, errors="coerce")
    blank = raw.isna() | raw.astype(str).apply(lambda column: column.str.strip() == "")
    all_blank = blank.all(axis=1)
    target = pd.to_numeric(table["Target"], errors="coerce")
    non_numeric = (numbers.isna() & ~blank).any(axis=1) | (~all_blank & blank.any(axis=1))
    x, y, width, height = (numbers[c] for c in _BOX_COLUMNS)
    outside = (x < 0) | (y < 0) | (x + width > image_width) | (y + height > image_height)
    conditions = [
        table["patientId"].isna() | (table["patientId"].astype(str).str.strip() == ""),
        ~target.isin([0, 1]),
        non_numeric,
        (target == 0) & ~all_blank,
        (target == 1) & all_blank,
        (target == 1) & ((width <= 0) | (height <= 0)),
        (target == 1) & outside,
    ]
    reasons = [
        "missing patientId",
        "Target is not 0 or 1",
        "non-numeric box field",
        "Target 0 row has a box",
        "Target 1 row has no box",
        "non-positive box size",
        "box outside the image",
    ]
    return pd.Series(np.select(conditions, reasons, default=""), index=table.index)


def load_rsna_labels(
    csv_path: str | Path,
    image_width: float = RSNA_IMAGE_SIZE,
    image_height: float = RSNA_IMAGE_SIZE,
) -> RsnaLabels:
    """Parses `stage_2_train_labels.csv` into per-patient boxes.

    Args:
        csv_path: Path of the label CSV.
        image_width: Width of the images the boxes refer to (RSNA: 1024).
        image_height: Height of the images the boxes refer to (RSNA: 1024).

    Returns:
        The boxes per patient, the rejected rows with reasons, and the excluded patients.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If a required column is missing.
    """
    table = read_text_table(csv_path, "Label file")
    return parse_label_table(table, image_width, image_height, source=str(csv_path))


def read_text_table(csv_path: str | Path, kind: str = "File") -> pd.DataFrame:
    """Reads a CSV (optionally compressed) with every value as text; only empty fields are
    missing, so a row's fields reach the row checks exactly as the file holds them.

    Raises:
        FileNotFoundError: If the file does not exist (the message starts with `kind`).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{kind} {csv_path} not found.")
    return pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_values=[""])


def rejected_rows(table: pd.DataFrame, reasons: pd.Series) -> pd.DataFrame:
    """The rows with a non-empty reason: their 0-based `row`, `patientId` and `reason`."""
    bad = reasons != ""
    return pd.DataFrame(
        {"row": table.index[bad], "patientId": table["patientId"][bad], "reason": reasons[bad]}
    ).reset_index(drop=True)


def parse_label_table(
    table: pd.DataFrame,
    image_width: float = RSNA_IMAGE_SIZE,
    image_height: float = RSNA_IMAGE_SIZE,
    source: str = "label table",
) -> RsnaLabels:
    """Parses a label table already in memory, with the rules of `load_rsna_labels`.

    Args:
        table: One row per box, the columns of `stage_2_train_labels.csv`; values may be
            strings (as read from the file) or numbers.
        image_width: Width of the images the boxes refer to.
        image_height: Height of the images the boxes refer to.
        source: Named in error messages.

    Returns:
        The boxes per patient, the rejected rows with reasons, and the excluded patients.

    Raises:
        ValueError: If a required column is missing.
    """
    missing = [c for c in _REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {missing}; expected {_REQUIRED_COLUMNS} "
            f"(got {list(table.columns)})."
        )
    table = table.reset_index(drop=True)
    reasons = _row_reasons(table, image_width, image_height)
    bad = reasons != ""
    rejected = rejected_rows(table, reasons)
    excluded = pd.unique(table.loc[bad, "patientId"].dropna())
    keep = table[~table["patientId"].isin(excluded) & ~bad]
    order = pd.unique(keep["patientId"])  # first-appearance order
    positives = keep[pd.to_numeric(keep["Target"]) == 1]
    box_values = positives[_BOX_COLUMNS].astype(np.float32).to_numpy()  # (num_boxes, 4)
    groups = positives.groupby("patientId", sort=False).indices  # id -> row positions
    empty = np.zeros((0, 4), np.float32)
    boxes = {pid: box_values[groups[pid]] if pid in groups else empty for pid in order}
    return RsnaLabels(
        boxes_xywh=boxes, rejected=rejected, excluded_patients=tuple(str(p) for p in excluded)
    )


def split_patients(
    labels: RsnaLabels, validation_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Splits patients (never boxes) into train and validation, stratified by positive/negative.

    Args:
        labels: Parsed labels.
        validation_fraction: Share of patients in the validation split, in (0, 1).
        seed: Shuffling seed.

    Returns:
        `(train_ids, validation_ids)`, disjoint, each sorted in CSV order.
    """
    train, validation, _ = split_patients_with_test(labels, validation_fraction, 0.0, seed)
    return train, validation


def split_patients_with_test(
    labels: RsnaLabels, validation_fraction: float, test_fraction: float, seed: int
) -> tuple[list[str], list[str], list[str]]:
    """Splits patients into train, validation and test, stratified by positive/negative.

    Each stratum (patients with and without a box) is shuffled once with `seed`; its first
    `round(n * validation_fraction)` patients go to validation, the next
    `round(n * test_fraction)` to test. With `test_fraction=0` the validation patients are
    exactly those of `split_patients` with the same seed.

    Args:
        labels: Parsed labels.
        validation_fraction: Share of patients in the validation split, in (0, 1).
        test_fraction: Share of patients in the test split, in [0, 1); the two shares
            together stay below 1.
        seed: Shuffling seed.

    Returns:
        `(train_ids, validation_ids, test_ids)`, disjoint, each sorted in CSV order.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must lie in (0, 1), got {validation_fraction}.")
    if not 0.0 <= test_fraction < 1.0 - validation_fraction:
        raise ValueError(
            f"test_fraction must lie in [0, 1 - validation_fraction), got {test_fraction} "
            f"with validation_fraction {validation_fraction}."
        )
    ids = np.asarray(labels.patient_ids)
    positive = np.array([len(labels.boxes_xywh[pid]) > 0 for pid in ids], bool)
    rng = np.random.default_rng(seed)
    validation = np.zeros(len(ids), bool)
    test = np.zeros(len(ids), bool)
    for group in (np.flatnonzero(positive), np.flatnonzero(~positive)):
        shuffled = rng.permutation(group)
        to_validation = int(round(len(group) * validation_fraction))
        to_test = int(round(len(group) * test_fraction))
        validation[shuffled[:to_validation]] = True
        test[shuffled[to_validation : to_validation + to_test]] = True
    train = ~validation & ~test
    return ids[train].tolist(), ids[validation].tolist(), ids[test].tolist()
