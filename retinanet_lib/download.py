"""Getting the real RSNA data: Kaggle download and safe archive extraction.

Two routes, both needing a Kaggle account that has accepted the competition rules at
https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/rules :

* `kagglehub` (preinstalled on Colab; reads `KAGGLE_API_TOKEN`, `KAGGLE_USERNAME` +
  `KAGGLE_KEY`, `~/.kaggle/kaggle.json`, and Colab secrets of those names);
* the `kaggle` command-line tool, which downloads a zip that `safe_extract_zip` unpacks.

The data is also offered directly by RSNA (no Kaggle account): download it from the RSNA
"Pneumonia Detection Challenge (2018)" page and point `$RETINANET_DATA_DIR` at the folder.
"""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

from retinanet_lib.rsna import DATA_DIR_ENV, check_rsna_layout

__all__ = [
    "COMPETITION",
    "DataDownloadError",
    "download_rsna",
    "explain_download_failure",
    "safe_extract_zip",
]

COMPETITION = "rsna-pneumonia-detection-challenge"
RULES_URL = f"https://www.kaggle.com/c/{COMPETITION}/rules"
_CREDENTIALS_HELP = (
    "Create an API token at https://www.kaggle.com/settings/api and either set "
    "KAGGLE_API_TOKEN (or KAGGLE_USERNAME and KAGGLE_KEY), or save kaggle.json to ~/.kaggle/ "
    "(chmod 600). In Colab, add them as secrets (key icon) with those names."
)
_OFFLINE_HELP = (
    "Download the data on a machine with internet access (Kaggle, or RSNA's own page for the "
    f"2018 challenge), copy the folder here and set ${DATA_DIR_ENV} to it; or run the book on "
    "the built-in synthetic data (the default)."
)


class DataDownloadError(RuntimeError):
    """The download failed; the message says why and what to do."""


def explain_download_failure(error: BaseException) -> str:
    """Turns a kagglehub/kaggle/network exception into a message with the fix."""
    text = f"{type(error).__name__}: {error}"
    lowered = text.lower()
    if "unauthenticated" in lowered or "401" in lowered or "credentials" in lowered:
        return f"Kaggle credentials are missing or invalid ({text}). {_CREDENTIALS_HELP}"
    if "403" in lowered or "forbidden" in lowered or "rules" in lowered:
        return (
            f"Kaggle refused the download ({text}). Accept the competition rules first at "
            f"{RULES_URL} (same account as your token), then retry."
        )
    network_words = (
        "name or service not known",
        "temporary failure in name resolution",
        "connection",
        "network is unreachable",
        "timed out",
        "max retries",
    )
    if any(word in lowered for word in network_words):
        return f"No connection to Kaggle ({text}). {_OFFLINE_HELP}"
    return f"The Kaggle download failed ({text}). {_OFFLINE_HELP}"


def safe_extract_zip(zip_path: str | Path, target_dir: str | Path) -> list[Path]:
    """Extracts a zip archive, refusing any member that would land outside `target_dir`.

    Absolute paths, `..` components that climb out, and symbolic links are refused before
    anything is written.

    Returns:
        The extracted file paths.

    Raises:
        DataDownloadError: For an unsafe member (nothing is extracted) or a bad archive.
    """
    target = Path(target_dir).resolve()
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, FileNotFoundError) as error:
        raise DataDownloadError(f"{zip_path}: not a readable zip archive ({error}).") from error
    with archive:
        members = archive.infolist()
        for member in members:
            destination = (target / member.filename).resolve()
            is_symlink = (member.external_attr >> 16) & 0o170000 == 0o120000
            if Path(member.filename).is_absolute() or not destination.is_relative_to(target):
                raise DataDownloadError(
                    f"{zip_path}: member {member.filename!r} would be written outside "
                    f"{target}; refusing to extract this archive."
                )
            if is_symlink:
                raise DataDownloadError(
                    f"{zip_path}: member {member.filename!r} is a symbolic link; refusing to "
                    "extract this archive."
                )
        target.mkdir(parents=True, exist_ok=True)
        archive.extractall(target)
    return [target / m.filename for m in members if not m.is_dir()]


def _download_with_kagglehub(target: Path) -> Path:
    try:
        import kagglehub
    except ImportError as error:
        raise DataDownloadError(
            "kagglehub is not installed: `pip install kagglehub` (or use method='cli')."
        ) from error
    try:
        return Path(kagglehub.competition_download(COMPETITION, output_dir=str(target)))
    except Exception as error:  # kagglehub raises many types; all are explained
        raise DataDownloadError(explain_download_failure(error)) from error


def _download_with_cli(target: Path) -> Path:
    kaggle = shutil.which("kaggle")
    if kaggle is None:
        raise DataDownloadError(
            "The kaggle command is not installed: `pip install kaggle six` (or use "
            "method='kagglehub')."
        )
    target.mkdir(parents=True, exist_ok=True)
    command = [kaggle, "competitions", "download", COMPETITION, "-p", str(target)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise DataDownloadError(
            explain_download_failure(RuntimeError((result.stderr or result.stdout).strip()))
        )
    for archive in target.glob("*.zip"):
        safe_extract_zip(archive, target)
        archive.unlink()
    return target


def download_rsna(target_dir: str | Path, method: str = "kagglehub") -> Path:
    """Downloads the RSNA pneumonia data and checks its layout.

    Args:
        target_dir: Folder to put the files in.
        method: `"kagglehub"` or `"cli"` (the `kaggle` command).

    Returns:
        The folder holding `stage_2_train_images/` etc.

    Raises:
        DataDownloadError: Missing credentials, unaccepted rules, no network, or an incomplete
            download; the message says what to do.
    """
    if method not in ("kagglehub", "cli"):
        raise ValueError(f"method must be 'kagglehub' or 'cli', got {method!r}.")
    target = Path(target_dir)
    if not check_rsna_layout(target):
        return target  # already complete
    root = _download_with_kagglehub(target) if method == "kagglehub" else _download_with_cli(target)
    missing = check_rsna_layout(root)
    if missing:
        raise DataDownloadError(f"The download in {root} is incomplete; missing: {missing}.")
    return root
