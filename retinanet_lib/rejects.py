"""Files that could not be read: skipped, counted and reported by name, never silently.

In long runs (training on 26,684 DICOMs, predicting 3,000) one truncated or foreign file must not
stop everything. The pipeline and the prediction loop skip such a file and add it to a
`RejectLog`; the run ends with a report that names every file and its error, printed and
written as `rejects.csv` next to the run's other outputs. `verify_dicoms` checks a whole data set
up front, in parallel, and fills the same log.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from retinanet_lib.dicom_io import read_dicom_image

__all__ = ["REJECTS_FILE", "RejectLog", "TooManyBadFilesError", "verify_dicoms"]

#: Name of the report written into a run or output folder.
REJECTS_FILE = "rejects.csv"


class TooManyBadFilesError(RuntimeError):
    """More files are unreadable than `TrainConfig.max_bad_file_fraction` allows."""


class RejectLog:
    """A thread-safe record of unreadable files: each file once, with its first error.

    Example:
        >>> log = RejectLog()
        >>> log.add("a.dcm", ValueError("truncated"))
        >>> len(log), log.table()["error"].tolist()
        (1, ['ValueError: truncated'])
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._errors: dict[str, str] = {}

    def add(self, path: str | Path, error: BaseException | str) -> None:
        """Records `path` (only its first error is kept)."""
        if isinstance(error, BaseException):
            error = f"{type(error).__name__}: {error}"
        with self._lock:
            self._errors.setdefault(str(path), str(error))

    def __len__(self) -> int:
        with self._lock:
            return len(self._errors)

    def __contains__(self, path: object) -> bool:
        with self._lock:
            return str(path) in self._errors

    def table(self) -> pd.DataFrame:
        """One row per rejected file: `file`, `error`, sorted by file."""
        with self._lock:
            items = sorted(self._errors.items())
        return pd.DataFrame(items, columns=["file", "error"])

    def check_fraction(self, num_files: int, max_fraction: float) -> None:
        """Raises `TooManyBadFilesError` if more than `max_fraction` of `num_files` are bad."""
        if num_files > 0 and len(self) > max_fraction * num_files:
            raise TooManyBadFilesError(
                f"{len(self)} of {num_files} files ({len(self) / num_files:.1%}) cannot be read, "
                f"more than the {max_fraction:.1%} allowed (TrainConfig.max_bad_file_fraction). "
                f"First: {self.table().iloc[0].tolist()}. Is the data folder complete and "
                "uncorrupted? `python data_scripts/verify_data.py` lists every bad file."
            )

    def report(self, folder: str | Path | None = None, what: str = "files") -> str:
        """A one-line summary; with `folder`, also writes the table to `folder/rejects.csv`.

        Returns:
            E.g. `"2 unreadable files skipped: a.dcm (ValueError: ...), b.dcm (...)"`.
        """
        table = self.table()
        if folder is not None and len(table):
            Path(folder).mkdir(parents=True, exist_ok=True)
            table.to_csv(Path(folder) / REJECTS_FILE, index=False)
        if not len(table):
            return f"no unreadable {what}"
        shown = ", ".join(f"{Path(f).name} ({e})" for f, e in table.head(3).itertuples(False))
        more = f", and {len(table) - 3} more" if len(table) > 3 else ""
        where = f" (all listed in {Path(folder) / REJECTS_FILE})" if folder is not None else ""
        return f"{len(table)} unreadable {what} skipped{where}: {shown}{more}"


def verify_dicoms(
    paths: Sequence[str | Path], workers: int = 4, progress: bool = True
) -> RejectLog:
    """Decodes every file once, in parallel, and records those that cannot be read.

    Decoding (pydicom, Pillow/pylibjpeg, NumPy) releases the GIL for most of its work, so
    threads use several cores.

    Args:
        paths: DICOM files.
        workers: Threads.
        progress: Show a tqdm progress bar.

    Returns:
        A `RejectLog` of the unreadable files (empty when all are fine).
    """
    log = RejectLog()

    def check(path: str | Path) -> None:
        try:
            read_dicom_image(path)
        except Exception as error:  # noqa: BLE001 (every failure is recorded by name)
            log.add(path, error)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(check, paths)
        for _ in tqdm(results, total=len(paths), disable=not progress, unit="file"):
            pass
    return log
