import numpy as np
import pytest

from retinanet_lib.rsna import (
    DATA_DIR_ENV,
    check_rsna_layout,
    data_root,
    load_rsna_labels,
    require_rsna_layout,
    split_patients,
    split_patients_with_test,
)

HEADER = "patientId,x,y,width,height,Target\n"


def write_csv(tmp_path, body: str):
    path = tmp_path / "labels.csv"
    path.write_text(HEADER + body)
    return path


def test_negatives_multi_box_and_order(tmp_path):
    path = write_csv(
        tmp_path,
        "neg-1,,,,,0\n"
        "pos-2,264.0,152.0,213.0,379.0,1\n"
        "pos-2,562.0,152.0,256.0,453.0,1\n"
        "pos-3,10,20,30,40,1\n",
    )
    labels = load_rsna_labels(path)
    assert labels.patient_ids == ["neg-1", "pos-2", "pos-3"]
    assert labels.boxes_xywh["neg-1"].shape == (0, 4)
    np.testing.assert_array_equal(
        labels.boxes_xywh["pos-2"], [[264, 152, 213, 379], [562, 152, 256, 453]]
    )
    assert labels.boxes_xywh["pos-2"].dtype == np.float32
    assert labels.summary() == {
        "patients": 3,
        "positive_patients": 2,
        "negative_patients": 1,
        "boxes": 3,
        "rejected_rows": 0,
        "excluded_patients": 0,
    }


def test_bad_rows_are_reported_with_reasons_and_their_patients_excluded(tmp_path):
    path = write_csv(
        tmp_path,
        "ok-1,10,20,30,40,1\n"  # 0 valid
        "bad-a,ten,20,30,40,1\n"  # 1 non-numeric
        "bad-b,10,20,-5,40,1\n"  # 2 non-positive size
        "bad-c,1000,20,30,40,1\n"  # 3 outside the image (1000 + 30 > 1024)
        "bad-d,10,20,30,40,0\n"  # 4 Target 0 with a box
        "bad-e,,,,,1\n"  # 5 Target 1 without a box
        "bad-f,10,20,30,40,2\n"  # 6 bad Target
        "bad-g,10,,30,40,1\n"  # 7 partly empty box
        "ok-1,100,200,30,40,1\n"  # 8 valid second box of ok-1
        "mixed,10,20,30,40,1\n"  # 9 valid row of a patient ...
        "mixed,-3,20,30,40,1\n",  # 10 ... whose other row is bad: patient excluded
    )
    labels = load_rsna_labels(path)
    reasons = dict(zip(labels.rejected["row"], labels.rejected["reason"], strict=True))
    assert reasons == {
        1: "non-numeric box field",
        2: "non-positive box size",
        3: "box outside the image",
        4: "Target 0 row has a box",
        5: "Target 1 row has no box",
        6: "Target is not 0 or 1",
        7: "non-numeric box field",
        10: "box outside the image",
    }
    assert labels.patient_ids == ["ok-1"]
    assert len(labels.boxes_xywh["ok-1"]) == 2
    assert set(labels.excluded_patients) == {
        "bad-a",
        "bad-b",
        "bad-c",
        "bad-d",
        "bad-e",
        "bad-f",
        "bad-g",
        "mixed",
    }
    assert labels.summary()["rejected_rows"] == 8


def test_missing_columns_and_file_raise(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("patientId,x,y,w,h,Target\n")
    with pytest.raises(ValueError, match="width"):
        load_rsna_labels(path)
    with pytest.raises(FileNotFoundError):
        load_rsna_labels(tmp_path / "absent.csv")


def test_image_size_bounds_are_configurable(tmp_path):
    path = write_csv(tmp_path, "p,200,200,100,100,1\n")
    assert load_rsna_labels(path, 512, 512).summary()["rejected_rows"] == 0
    assert load_rsna_labels(path, 256, 256).summary()["rejected_rows"] == 1


def test_split_is_by_patient_stratified_and_deterministic(tmp_path):
    rows = "".join(f"neg{i},,,,,0\n" for i in range(80))
    rows += "".join(f"pos{i},10,10,20,20,1\npos{i},50,50,20,20,1\n" for i in range(20))
    labels = load_rsna_labels(write_csv(tmp_path, rows))
    train, val = split_patients(labels, 0.25, seed=0)
    assert not set(train) & set(val) and len(train) + len(val) == 100
    assert sum(p.startswith("pos") for p in val) == 5 and len(val) == 25
    assert (train, val) == split_patients(labels, 0.25, seed=0)
    assert val != split_patients(labels, 0.25, seed=1)[1]
    with pytest.raises(ValueError):
        split_patients(labels, 1.0, seed=0)


def _validation_by_hand(labels, validation_fraction, seed):
    """The split written out plainly: shuffle each stratum once, take its first share."""
    rng = np.random.default_rng(seed)
    chosen = []
    ids = list(labels.patient_ids)
    for want_positive in (True, False):
        group = [i for i, p in enumerate(ids) if (len(labels.boxes_xywh[p]) > 0) == want_positive]
        order = rng.permutation(np.array(group))
        chosen += [ids[i] for i in order[: int(round(len(group) * validation_fraction))]]
    return sorted(chosen, key=ids.index)


def test_three_way_split_counts_by_hand_and_keeps_the_two_way_validation(tmp_path):
    rows = "".join(f"neg{i},,,,,0\n" for i in range(80))
    rows += "".join(f"pos{i},10,10,20,20,1\npos{i},50,50,20,20,1\n" for i in range(20))
    labels = load_rsna_labels(write_csv(tmp_path, rows))
    train, val, test = split_patients_with_test(labels, 0.25, 0.1, seed=3)
    # 20 positive patients: 5 to validation, 2 to test; 80 negative ones: 20 and 8.
    assert sum(p.startswith("pos") for p in val) == 5 and len(val) == 25
    assert sum(p.startswith("pos") for p in test) == 2 and len(test) == 10
    assert len(train) == 65 and not (set(train) & set(val) | set(train) & set(test))
    assert not set(val) & set(test)
    assert val == _validation_by_hand(labels, 0.25, seed=3)
    assert split_patients(labels, 0.25, seed=3) == (
        sorted(set(train) | set(test), key=list(labels.patient_ids).index),
        val,
    )
    with pytest.raises(ValueError, match="test_fraction"):
        split_patients_with_test(labels, 0.5, 0.5, seed=0)
    with pytest.raises(ValueError, match="test_fraction"):
        split_patients_with_test(labels, 0.2, -0.1, seed=0)


def test_layout_check_names_what_is_missing(tmp_path):
    missing = check_rsna_layout(tmp_path)
    assert len(missing) == 4
    (tmp_path / "stage_2_train_images").mkdir()
    (tmp_path / "stage_2_train_labels.csv").write_text(HEADER)
    missing = check_rsna_layout(tmp_path)
    assert "stage_2_train_images/ (folder of .dcm files)" in missing  # empty folder
    assert "stage_2_train_labels.csv" not in missing
    with pytest.raises(FileNotFoundError, match="stage_2_test_images"):
        require_rsna_layout(tmp_path)


def test_data_root_reads_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert str(data_root("fallback")) == "fallback"
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert data_root("fallback") == tmp_path


def test_prepare_data_cpu_generates_once_and_full_explains(monkeypatch, tmp_path):
    from retinanet_lib.config import SyntheticConfig
    from retinanet_lib.download import DataDownloadError
    from retinanet_lib.splits import prepare_data

    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    small = SyntheticConfig(num_train=3, num_test=1, image_size=128)
    root = prepare_data("cpu", small)
    assert root == tmp_path / "synthetic" and check_rsna_layout(root) == []
    # Full mode with no RSNA files tries the download; here (no credentials, no internet)
    # it fails with what to do, and leaves no half-made data folder behind.
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle-config"))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataDownloadError) as caught:
        prepare_data("full")
    hints = ("KAGGLE_API_TOKEN", DATA_DIR_ENV, "rules")
    assert any(hint in str(caught.value) for hint in hints)
    assert check_rsna_layout(tmp_path / "rsna")
    with pytest.raises(ValueError, match="run mode"):
        prepare_data("gpu")
