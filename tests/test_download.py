import os
import stat
import zipfile

import pytest

from retinanet_lib.download import (
    RULES_URL,
    DataDownloadError,
    download_rsna,
    explain_download_failure,
    safe_extract_zip,
)


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
