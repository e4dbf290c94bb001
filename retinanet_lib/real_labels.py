"""The challenge's real labels and DICOM headers, as the PyPI package `torchxrayvision` ships them.

The RSNA images cannot be redistributed, but `torchxrayvision` (Cohen et al., Apache-2.0 code)
ships two of the challenge's files in its package data folder `torchxrayvision/data/`:

* `kaggle_stage_2_train_labels.csv.zip`: the real `stage_2_train_labels.csv` (30,227 rows);
* `kaggle_stage_2_train_images_dicom_headers.csv.gz`: the DICOM header fields of the 26,684
  training images (age, sex, view position, pixel spacing, ...).

The labels are the RSNA's (Shih et al. 2019), published under the competition's terms on
Kaggle; here they are only read, never copied into the project. This module finds the files by
path (`importlib.util.find_spec`), so neither PyTorch nor an import of the package is needed:
`pip install --no-deps torchxrayvision` brings them (`requirements-data.txt`). The labels go
through the library's own rules (`rsna.parse_label_table`, which `rsna.load_rsna_labels`
runs on a Kaggle download's file).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from retinanet_lib.rsna import RsnaLabels, parse_label_table, read_text_table, rejected_rows

__all__ = [
    "DicomHeaders",
    "RealLabelsMissingError",
    "RealRsnaLabels",
    "load_dicom_headers",
    "load_real_labels",
    "real_labels_folder",
]

#: The package that ships the files, and the version whose files the book's outputs show.
PACKAGE = "torchxrayvision"
PACKAGE_PIN = "torchxrayvision==1.5.7"
LABELS_FILE = "kaggle_stage_2_train_labels.csv.zip"
HEADERS_FILE = "kaggle_stage_2_train_images_dicom_headers.csv.gz"
#: The oldest verified human lived 122 years; an age above this is a typing error.
MAX_AGE_YEARS = 122
VIEW_POSITIONS = ("AP", "PA")
SEXES = ("F", "M")
_HEADER_COLUMNS = {
    "PatientID": "patientId",
    "PatientAge": "age_years",
    "PatientSex": "sex",
    "ViewPosition": "view_position",
    "PixelSpacing": "pixel_spacing_mm",
}

_INSTALL_HINT = (
    f"Install the files with `pip install --no-deps {PACKAGE_PIN}` (data files only, no "
    f"PyTorch; `pip install -r requirements-data.txt --no-deps` does it), or in Colab "
    f"`pip install {PACKAGE}`."
)


class RealLabelsMissingError(FileNotFoundError):
    """The real RSNA labels are not installed: the message says how to install them."""


def real_labels_folder() -> Path:
    """The folder that holds the real label and header files.

    Returns:
        `torchxrayvision/data/` of the installed package (the package is not imported).

    Raises:
        RealLabelsMissingError: If the package or one of the two files is missing.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RealLabelsMissingError(
            f"The real RSNA labels come with the PyPI package `{PACKAGE}`, which is not "
            f"installed. {_INSTALL_HINT}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    missing = [name for name in (LABELS_FILE, HEADERS_FILE) if not (folder / name).is_file()]
    if missing:
        raise RealLabelsMissingError(
            f"`{PACKAGE}` is installed but {folder} lacks {missing}; this version of the "
            f"package does not ship the RSNA files. {_INSTALL_HINT}"
        )
    return folder


def _package_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:  # files present, metadata not
        return "unknown version"


@dataclass(frozen=True)
class DicomHeaders:
    """The training images' DICOM header fields, one row per patient.

    Attributes:
        table: Indexed by `patientId`; columns `age_years` (int), `sex` (`"F"`/`"M"`),
            `view_position` (`"AP"`/`"PA"`) and `pixel_spacing_mm` (float).
        rejected: One row per rejected file row: its 0-based `row`, `patientId` and `reason`.
    """

    table: pd.DataFrame
    rejected: pd.DataFrame


def _header_reasons(table: pd.DataFrame) -> pd.Series:
    """Reason for rejecting each header row ('' = valid), column-wise."""
    age = pd.to_numeric(table["age_years"], errors="coerce")
    spacing = pd.to_numeric(table["pixel_spacing_mm"], errors="coerce")
    patient = table["patientId"].astype(str).str.strip()
    conditions = [
        table["patientId"].isna() | (patient == ""),
        patient.duplicated(keep=False),
        age.isna() | (age != np.floor(age)),
        (age < 0) | (age > MAX_AGE_YEARS),
        ~table["sex"].isin(SEXES),
        ~table["view_position"].isin(VIEW_POSITIONS),
        spacing.isna() | (spacing <= 0),
    ]
    reasons = [
        "missing patientId",
        "duplicate patientId",
        "age is not a whole number",
        f"age outside 0 to {MAX_AGE_YEARS} years",
        f"sex not in {SEXES}",
        f"view position not in {VIEW_POSITIONS}",
        "pixel spacing not positive",
    ]
    return pd.Series(np.select(conditions, reasons, default=""), index=table.index)


def load_dicom_headers(csv_path: str | Path) -> DicomHeaders:
    """Reads a table of DICOM header fields (the format `torchxrayvision` ships).

    Every row is checked; a rejected row is returned with its reason, never dropped silently.

    Args:
        csv_path: The CSV (optionally compressed), with at least the columns `PatientID`,
            `PatientAge`, `PatientSex`, `ViewPosition` and `PixelSpacing`.

    Returns:
        The valid rows, indexed by patient, and the rejected ones.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If a required column is missing.
    """
    raw = read_text_table(csv_path, "Header file")
    missing = [column for column in _HEADER_COLUMNS if column not in raw.columns]
    if missing:
        raise ValueError(
            f"{csv_path}: missing column(s) {missing}; expected {list(_HEADER_COLUMNS)}."
        )
    table = raw[list(_HEADER_COLUMNS)].rename(columns=_HEADER_COLUMNS)
    reasons = _header_reasons(table)
    bad = reasons != ""
    rejected = rejected_rows(table, reasons)
    valid = (
        table[~bad]
        .astype({"age_years": float, "pixel_spacing_mm": float})
        .astype({"age_years": int})
    )
    return DicomHeaders(table=valid.set_index("patientId"), rejected=rejected)


@dataclass(frozen=True)
class RealRsnaLabels:
    """The real labels and headers, read with the library's rules.

    Attributes:
        labels: Per-patient boxes (the rules of `rsna.load_rsna_labels`, on the real file).
        headers: Per-patient header fields (`load_dicom_headers`).
        num_label_rows: Rows of the label file (header line not counted).
        source: Where the files came from (package and version), for printed outputs.
    """

    labels: RsnaLabels
    headers: DicomHeaders
    num_label_rows: int
    source: str

    @property
    def description(self) -> str:
        """The words every number from these files carries."""
        return f"real RSNA labels, {self.num_label_rows:,} rows ({self.source})"


def load_real_labels() -> RealRsnaLabels:
    """Reads the real `stage_2_train_labels.csv` and the training images' DICOM headers.

    Returns:
        The labels (`rsna.parse_label_table`) and the headers (`load_dicom_headers`).

    Raises:
        RealLabelsMissingError: If `torchxrayvision`'s files are not installed.
    """
    folder = real_labels_folder()
    table = read_text_table(folder / LABELS_FILE, "Label file")  # read once: labels and rows
    return RealRsnaLabels(
        labels=parse_label_table(table, source=str(folder / LABELS_FILE)),
        headers=load_dicom_headers(folder / HEADERS_FILE),
        num_label_rows=len(table),
        source=f"from {PACKAGE} {_package_version()}",
    )
