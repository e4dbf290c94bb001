import errno
import os
import shutil
import stat
import sys
import types
import zipfile
from pathlib import Path

import pytest

from retinanet_lib import download
from retinanet_lib.config import SyntheticConfig
from retinanet_lib.download import (
    COMPETITION,
    RULES_URL,
    DataDownloadError,
    check_free_space,
    download_rsna,
    ensure_rsna_data,
    explain_download_failure,
    safe_extract_zip,
)
from retinanet_lib.rsna import check_rsna_layout
from retinanet_lib.synthetic import write_synthetic_rsna

TINY = SyntheticConfig(num_train=2, num_test=1, image_size=64)


def make_zip(path, members: dict[str, str]):
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return path


def test_safe_archive_is_extracted(tmp_path):
    archive = make_zip(tmp_path / "ok.zip", {"a.csv": "x", "images/b.dcm": "y"})
    written = safe_extract_zip(archive, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == [
        "a.csv",
        "images/b.dcm",
    ]
    assert (tmp_path / "out" / "images" / "b.dcm").read_text() == "y"


@pytest.mark.parametrize("evil", ["../escape.txt", "images/../../escape.txt", "/abs/escape.txt"])
def test_members_outside_the_target_are_refused_before_writing(tmp_path, evil):
    archive = make_zip(tmp_path / "evil.zip", {"fine.txt": "ok", evil: "pwned"})
    with pytest.raises(DataDownloadError, match="outside"):
        safe_extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "out" / "fine.txt").exists()  # all or nothing


def test_symlink_members_are_refused(tmp_path):
    archive_path = tmp_path / "link.zip"
    with zipfile.ZipFile(archive_path, "w") as archive:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(DataDownloadError, match="symbolic link"):
        safe_extract_zip(archive_path, tmp_path / "out")


def test_bad_archive_is_a_clear_error(tmp_path):
    (tmp_path / "x.zip").write_text("not a zip")
    with pytest.raises(DataDownloadError, match="not a readable zip"):
        safe_extract_zip(tmp_path / "x.zip", tmp_path / "out")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (RuntimeError("UnauthenticatedError: User is not authenticated"), "KAGGLE_API_TOKEN"),
        (RuntimeError("403 Client Error: Forbidden"), RULES_URL),
        (OSError("[Errno -2] Name or service not known"), "RETINANET_DATA_DIR"),
        (OSError(errno.ENOSPC, "No space left on device"), "The disk filled up"),
    ],
)
def test_failures_are_explained_with_the_fix(error, expected):
    assert expected in explain_download_failure(error)


def test_download_offline_or_without_credentials_fails_clearly(tmp_path, monkeypatch):
    """Here (CI) there are no credentials and no internet: the message must say what to do."""
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle-config"))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataDownloadError) as caught:
        download_rsna(tmp_path / "data", method="kagglehub")
    message = str(caught.value)
    assert any(hint in message for hint in ("KAGGLE_API_TOKEN", "RETINANET_DATA_DIR", "rules"))
    assert not os.path.exists(tmp_path / "data" / "stage_2_train_labels.csv")


def test_unknown_method_raises(tmp_path):
    with pytest.raises(ValueError, match="method"):
        download_rsna(tmp_path, method="torrent")


def _fake_kagglehub(monkeypatch, competition_download):
    module = types.ModuleType("kagglehub")
    module.__version__ = "0.3.13"
    module.competition_download = competition_download
    monkeypatch.setitem(sys.modules, "kagglehub", module)


def test_too_little_disk_space_is_refused_with_both_sizes(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(DataDownloadError) as caught:
        check_free_space(tmp_path / "not" / "made" / "yet", needed_bytes=free * 2)
    message = str(caught.value)
    assert f"{free / 1e9:.1f} GB free" in message and "RETINANET_DATA_DIR" in message
    assert check_free_space(tmp_path / "not" / "made" / "yet", needed_bytes=1) == pytest.approx(
        free, rel=0.01
    )


def test_download_checks_disk_space_before_any_network_call(tmp_path, monkeypatch):
    calls = []
    _fake_kagglehub(monkeypatch, lambda handle, path=None, *, output_dir=None: calls.append(1))
    monkeypatch.setattr(download, "DOWNLOAD_FREE_BYTES", 10**18)  # an exabyte: never free
    with pytest.raises(DataDownloadError, match="Not enough disk space"):
        download_rsna(tmp_path / "data")
    assert calls == []


def test_a_kagglehub_without_output_dir_is_a_clear_error(tmp_path, monkeypatch):
    _fake_kagglehub(monkeypatch, lambda handle, path=None, *, force_download=False: "/x")
    with pytest.raises(DataDownloadError, match=r"kagglehub 0\.3\.13 .*kagglehub>=0\.4\.3"):
        download_rsna(tmp_path / "data")


def test_the_data_step_downloads_once_into_rsna_and_then_reuses_it(tmp_path, monkeypatch):
    calls = []

    def fake_download(handle, path=None, *, force_download=False, output_dir=None):
        calls.append((handle, output_dir))
        write_synthetic_rsna(output_dir, TINY, progress=False)
        return output_dir

    _fake_kagglehub(monkeypatch, fake_download)
    first = ensure_rsna_data(tmp_path, announce=False)
    assert first == tmp_path / "rsna" and check_rsna_layout(first) == []
    assert calls == [(COMPETITION, str(tmp_path / "rsna.partial"))]  # staged, then renamed
    assert not (tmp_path / "rsna.partial").exists()
    # Another chapter, or another session on the same Drive folder: nothing is downloaded.
    assert ensure_rsna_data(tmp_path, announce=False) == first
    assert ensure_rsna_data(tmp_path / "rsna", announce=False) == first
    assert len(calls) == 1


def test_a_folder_with_part_of_the_files_is_not_downloaded_into(tmp_path, monkeypatch):
    (tmp_path / "stage_2_train_labels.csv").write_text("patientId,x,y,width,height,Target\n")
    _fake_kagglehub(monkeypatch, lambda *a, **k: pytest.fail("must not download"))
    with pytest.raises(DataDownloadError, match="holds part of the RSNA files") as caught:
        ensure_rsna_data(tmp_path, announce=False)
    assert "stage_2_train_images/" in str(caught.value)  # what is missing
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DataDownloadError, match="holds files but not the complete"):
        download_rsna(tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_an_interrupted_download_leaves_no_data_folder_and_the_next_one_starts_afresh(
    tmp_path, monkeypatch
):
    def dies_midway(handle, path=None, *, force_download=False, output_dir=None):
        write_synthetic_rsna(output_dir, TINY, progress=False)
        raise ConnectionError("Connection reset by peer")

    _fake_kagglehub(monkeypatch, dies_midway)
    with pytest.raises(DataDownloadError, match="No connection to Kaggle"):
        ensure_rsna_data(tmp_path, announce=False)
    assert not (tmp_path / "rsna").exists()  # nothing that looks like data
    seen = []

    def succeeds(handle, path=None, *, force_download=False, output_dir=None):
        seen.append(sorted(p.name for p in Path(output_dir).glob("*")))  # staging emptied?
        write_synthetic_rsna(output_dir, TINY, progress=False)
        return output_dir

    _fake_kagglehub(monkeypatch, succeeds)
    assert ensure_rsna_data(tmp_path, announce=False) == tmp_path / "rsna"
    assert seen == [[]] and check_rsna_layout(tmp_path / "rsna") == []


def test_a_download_kagglehub_puts_elsewhere_is_used_where_it_is(tmp_path, monkeypatch):
    elsewhere = tmp_path / "kaggle-input"
    write_synthetic_rsna(elsewhere, TINY, progress=False)
    _fake_kagglehub(monkeypatch, lambda handle, path=None, *, output_dir=None: str(elsewhere))
    assert ensure_rsna_data(tmp_path / "data", announce=False) == elsewhere


def test_a_drive_folder_without_drive_mounted_is_a_clear_error(monkeypatch):
    _fake_kagglehub(monkeypatch, lambda *a, **k: pytest.fail("must not download"))
    with pytest.raises(DataDownloadError, match="Drive is not mounted.*FULL = True"):
        ensure_rsna_data("/content/drive/MyDrive/retinanet", announce=False)


def test_both_kinds_of_kaggle_token_are_read_from_colab_secrets(monkeypatch):
    """kagglehub gives up on the first missing secret; a kaggle.json pair must work too."""
    secrets = {"KAGGLE_USERNAME": "student", "KAGGLE_KEY": "abc123"}

    def get(name):
        if name not in secrets:
            raise KeyError(f"SecretNotFoundError: {name}")
        return secrets[name]

    google = types.ModuleType("google")
    colab = types.ModuleType("google.colab")
    colab.userdata = types.SimpleNamespace(get=get)
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.setenv(name, "")  # recorded, so monkeypatch restores what was there
    assert download._credentials_from_colab_secrets() == ["KAGGLE_USERNAME", "KAGGLE_KEY"]
    assert os.environ["KAGGLE_USERNAME"] == "student" and os.environ["KAGGLE_KEY"] == "abc123"
    assert os.environ["KAGGLE_API_TOKEN"] == ""
    monkeypatch.setenv("KAGGLE_KEY", "already set")
    monkeypatch.setenv("KAGGLE_USERNAME", "")
    download._credentials_from_colab_secrets()
    assert os.environ["KAGGLE_KEY"] == "already set"


def test_an_incomplete_download_names_what_is_missing(tmp_path, monkeypatch):
    def fake_download(handle, path=None, *, force_download=False, output_dir=None):
        Path(output_dir).mkdir(parents=True)
        (Path(output_dir) / "stage_2_train_labels.csv").write_text("patientId\n")
        return output_dir

    _fake_kagglehub(monkeypatch, fake_download)
    with pytest.raises(DataDownloadError, match="incomplete.*stage_2_train_images"):
        ensure_rsna_data(tmp_path, announce=False)
