import threading

import pytest

from retinanet_lib.config import SyntheticConfig
from retinanet_lib.rejects import REJECTS_FILE, RejectLog, TooManyBadFilesError, verify_dicoms
from retinanet_lib.synthetic import write_synthetic_rsna


def test_each_file_is_recorded_once_with_its_first_error():
    log = RejectLog()
    log.add("b.dcm", ValueError("truncated"))
    log.add("a.dcm", "plain text")
    log.add("b.dcm", OSError("second error"))
    table = log.table()
    assert table["file"].tolist() == ["a.dcm", "b.dcm"]
    assert table["error"].tolist() == ["plain text", "ValueError: truncated"]
    assert len(log) == 2 and "a.dcm" in log and "c.dcm" not in log


def test_threads_can_record_concurrently():
    log = RejectLog()
    threads = [
        threading.Thread(target=lambda k=k: [log.add(f"{k}-{i}", "x") for i in range(200)])
        for k in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(log) == 1600


def test_fraction_check_and_report(tmp_path):
    log = RejectLog()
    log.check_fraction(100, 0.01)  # nothing bad: fine
    log.add("one.dcm", "bad")
    log.check_fraction(100, 0.01)  # exactly 1 %: allowed
    log.add("two.dcm", "bad")
    with pytest.raises(TooManyBadFilesError, match="2 of 100"):
        log.check_fraction(100, 0.01)
    line = log.report(tmp_path)
    assert line.startswith("2 unreadable files skipped") and "one.dcm (bad)" in line
    assert (tmp_path / REJECTS_FILE).read_text().splitlines()[0] == "file,error"
    assert RejectLog().report(tmp_path / "clean") == "no unreadable files"
    assert not (tmp_path / "clean").exists()  # nothing to write


def test_verify_names_exactly_the_bad_files(tmp_path):
    write_synthetic_rsna(tmp_path, SyntheticConfig(num_train=6, num_test=0, image_size=128), False)
    paths = sorted((tmp_path / "stage_2_train_images").glob("*.dcm"))
    paths[1].write_bytes(paths[1].read_bytes()[:500])  # truncated
    paths[4].write_bytes(b"\x00" * 300)  # not DICOM
    missing = tmp_path / "missing.dcm"
    log = verify_dicoms([*paths, missing], workers=3, progress=False)
    assert log.table()["file"].tolist() == sorted(str(p) for p in (paths[1], paths[4], missing))
    assert all(error.startswith("DicomReadError") for error in log.table()["error"])


def test_parallel_checks_keep_every_pydicom_warning_in_the_log(tmp_path, recwarn):
    """`warnings.catch_warnings` is process-wide: without the lock in `dicom_io`, one thread
    restores another's handlers and a truncated file's warning escapes (to stderr in a
    notebook) instead of being named in that file's error. Many truncated files in 8 threads
    make the race near-certain; each error must name the end-of-file warning."""
    write_synthetic_rsna(tmp_path, SyntheticConfig(num_train=2, num_test=0, image_size=128), False)
    whole = sorted((tmp_path / "stage_2_train_images").glob("*.dcm"))[0].read_bytes()
    paths = []
    for k in range(64):
        path = tmp_path / f"truncated-{k}.dcm"
        path.write_bytes(whole[:3000])  # the pixel data element never ends
        paths.append(path)
    log = verify_dicoms(paths, workers=8, progress=False)
    errors = log.table()["error"]
    assert len(errors) == 64
    assert errors.str.contains("End of file reached before delimiter").all()
    assert not [w for w in recwarn if "End of file" in str(w.message)]
