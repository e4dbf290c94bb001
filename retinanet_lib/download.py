"""Getting the real RSNA data: Kaggle download and safe archive extraction.

Two routes, both needing a Kaggle account that has accepted the competition rules at
https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/rules :

* `kagglehub` (version 0.4.3 or later, for `output_dir`; reads `KAGGLE_API_TOKEN`,
  `KAGGLE_USERNAME` + `KAGGLE_KEY`, `~/.kaggle/kaggle.json`, and Colab secrets of those
  names);
* the `kaggle` command-line tool, which downloads a zip that `safe_extract_zip` unpacks.

The data is also offered directly by RSNA (no Kaggle account): download it from the RSNA
"Pneumonia Detection Challenge (2018)" page and point `$RETINANET_DATA_DIR` at the folder.

`ensure_rsna_data` is the data step every chapter shares in full mode: it returns the folder
when the files are there and downloads them once when they are not, so a folder on Google
Drive serves every chapter and every Colab session.
"""

from __future__ import annotations

import errno
import inspect
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

from retinanet_lib.rsna import DATA_DIR_ENV, RSNA_LAYOUT, check_rsna_layout

__all__ = [
    "COMPETITION",
    "DOWNLOAD_FREE_BYTES",
    "DataDownloadError",
    "check_free_space",
    "download_rsna",
    "ensure_rsna_data",
    "explain_download_failure",
    "safe_extract_zip",
]

COMPETITION = "rsna-pneumonia-detection-challenge"
#: Free disk space the download needs in its folder: the archive (about 3.7 GB) and its
#: extracted files (about as large: the DICOM files are JPEG-compressed already) lie side by
#: side until the archive is deleted; the rest is margin.
DOWNLOAD_FREE_BYTES = 8 * 10**9
#: The first kagglehub release whose `competition_download` takes `output_dir`.
KAGGLEHUB_MIN_VERSION = "0.4.3"
#: Appended to a target folder's name for the folder a download is staged in.
STAGING_SUFFIX = ".partial"
#: Where Colab mounts Google Drive.
COLAB_DRIVE_MOUNT = "/content/drive"
_GB = 10**9
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
    if "no space left" in lowered or getattr(error, "errno", None) == errno.ENOSPC:
        return (
            f"The disk filled up during the download ({text}). Free space (the download "
            f"needs {DOWNLOAD_FREE_BYTES / _GB:.0f} GB), or set ${DATA_DIR_ENV} to a folder "
            "on a bigger disk, then run the same step again: it starts afresh."
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


def check_free_space(folder: str | Path, needed_bytes: int | None = None) -> int:
    """Checks that the disk holding `folder` (or its nearest existing parent) has room.

    Args:
        folder: Where the data will go.
        needed_bytes: Free bytes required; `None` means `DOWNLOAD_FREE_BYTES`.

    Returns:
        The free bytes.

    Raises:
        DataDownloadError: Less than `needed_bytes` free; the message gives both sizes and
            where to put the data instead.
    """
    needed_bytes = DOWNLOAD_FREE_BYTES if needed_bytes is None else needed_bytes
    existing = Path(folder).resolve()
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        raise DataDownloadError(
            f"Not enough disk space for the RSNA data in {folder}: {free / _GB:.1f} GB free, "
            f"{needed_bytes / _GB:.0f} GB needed while the archive is extracted. Free some "
            f"space, or set ${DATA_DIR_ENV} to a folder on a bigger disk (in Colab, the "
            "local disk /content, or Google Drive with that much room)."
        )
    return free


def _download_with_kagglehub(target: Path) -> Path:
    try:
        import kagglehub
    except ImportError as error:
        raise DataDownloadError(
            f"kagglehub is not installed: `pip install 'kagglehub>={KAGGLEHUB_MIN_VERSION}'` "
            "(or use method='cli')."
        ) from error
    if "output_dir" not in inspect.signature(kagglehub.competition_download).parameters:
        version = getattr(kagglehub, "__version__", "unknown")
        raise DataDownloadError(
            f"kagglehub {version} cannot download into a folder of your choice: "
            f"`pip install -U 'kagglehub>={KAGGLEHUB_MIN_VERSION}'` (in Colab, then restart "
            "the session), or use method='cli'."
        )
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

    The files are downloaded into a staging folder next to the target (`<target>.partial`),
    and the staging folder becomes the target only once it holds every RSNA file. So an
    interrupted download never leaves a target that looks complete, and the next call starts
    the staging folder afresh.

    Args:
        target_dir: Folder to put the files in; it must be absent, empty or complete.
        method: `"kagglehub"` or `"cli"` (the `kaggle` command).

    Returns:
        The folder holding `stage_2_train_images/` etc.: `target_dir`, or the folder kagglehub
        chose where it does not honour `output_dir` (inside Kaggle's own notebooks).

    Raises:
        DataDownloadError: Missing credentials, unaccepted rules, no network, too little disk
            space, a target folder that holds other files, or an incomplete download; the
            message says what to do.
    """
    if method not in ("kagglehub", "cli"):
        raise ValueError(f"method must be 'kagglehub' or 'cli', got {method!r}.")
    target = Path(target_dir).expanduser()
    if not check_rsna_layout(target):
        return target  # already complete
    if target.is_dir() and any(target.iterdir()):
        raise DataDownloadError(
            f"{target} holds files but not the complete RSNA data (missing: "
            f"{', '.join(check_rsna_layout(target))}). Delete the folder or empty it to "
            "download there, or complete it by hand."
        )
    check_free_space(target)
    staging = target.with_name(target.name + STAGING_SUFFIX)
    if staging.exists():
        shutil.rmtree(staging)  # an earlier, interrupted download
    if method == "kagglehub":
        root = _download_with_kagglehub(staging)
    else:
        root = _download_with_cli(staging)
    missing = check_rsna_layout(root)
    if missing:
        raise DataDownloadError(
            f"The download in {root} is incomplete; missing: {missing}. Run the same step "
            "again: it starts afresh."
        )
    if root.resolve() != staging.resolve():
        return root  # kagglehub put the files elsewhere
    if target.is_dir():
        target.rmdir()  # empty, checked above
    staging.rename(target)
    return target


def _drive_not_mounted(root: Path) -> bool:
    """Whether `root` lies under Colab's Google Drive mount point while nothing is mounted."""
    drive = Path(COLAB_DRIVE_MOUNT)
    return root.is_relative_to(drive) and not os.path.ismount(drive)


def ensure_rsna_data(root: str | Path, method: str = "kagglehub", announce: bool = True) -> Path:
    """The real RSNA folder under `root`, downloaded from Kaggle on first use.

    The files are looked for in `root` itself, then in `root/rsna/`. When neither holds them,
    they are downloaded once into `root/rsna/`; every later call, from any chapter or session
    that sees the same `root` (a Google Drive folder in Colab), finds them and downloads
    nothing. A `root` that holds part of the RSNA files is not downloaded into: the error
    names what is missing.

    Args:
        root: The data folder (`$RETINANET_DATA_DIR` in the chapters).
        method: `"kagglehub"` or `"cli"`, as in `download_rsna`.
        announce: Print where the download goes and how large it is before it starts.

    Returns:
        The folder holding `stage_2_train_images/` etc.

    Raises:
        DataDownloadError: As `download_rsna`, and for a `root` on Google Drive while Drive is
            not mounted, or a `root` that holds part of the RSNA files.
    """
    root = Path(root).expanduser()
    for folder in (root, root / "rsna"):
        if not check_rsna_layout(folder):
            return folder
    if _drive_not_mounted(root):
        raise DataDownloadError(
            f"{root} is on Google Drive, but Drive is not mounted. Run the chapter's first "
            "cell with FULL = True (it mounts Drive), or mount it yourself: "
            f"`from google.colab import drive; drive.mount({COLAB_DRIVE_MOUNT!r})`."
        )
    present = [entry for entry in RSNA_LAYOUT if (root / entry.rstrip("/")).exists()]
    if present:
        raise DataDownloadError(
            f"{root} holds part of the RSNA files ({', '.join(present)}) but not all "
            f"(missing: {', '.join(check_rsna_layout(root))}). Complete the folder, delete "
            f"those files to download the data into {root / 'rsna'}, or set ${DATA_DIR_ENV} "
            "to another folder."
        )
    target = root / "rsna"
    if announce:
        print(
            f"The RSNA data is not in {root}: downloading it from Kaggle into {target} "
            "(about 3.7 GB, once; every chapter reuses it)."
        )
    _credentials_from_colab_secrets()
    return download_rsna(target, method=method)


def _credentials_from_colab_secrets() -> list[str]:
    """Copies Colab secrets named like Kaggle's variables into the environment.

    kagglehub reads Colab secrets itself, but stops at the first one missing: with only
    `KAGGLE_USERNAME` and `KAGGLE_KEY` (a `kaggle.json` token), it finds no credentials.
    Reading each secret on its own lets both kinds of token work. A variable already set is
    kept; outside Colab nothing happens.

    Returns:
        The variables set.
    """
    try:
        from google.colab import userdata
    except ImportError:
        return []
    copied = []
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        if os.environ.get(name):
            continue
        try:
            value = (userdata.get(name) or "").strip()
        except Exception:  # a missing secret, or notebook access not granted
            continue
        if value:
            os.environ[name] = value
            copied.append(name)
    return copied
