import dataclasses

import numpy as np
import pandas as pd
import pytest

from retinanet_lib.config import SyntheticConfig
from retinanet_lib.dicom_io import read_dicom_header, read_dicom_image
from retinanet_lib.rsna import check_rsna_layout, load_rsna_labels
from retinanet_lib.synthetic import (
    CLASS_NAMES,
    LABEL_COLUMNS,
    ensure_synthetic_rsna,
    make_phantom,
    write_synthetic_rsna,
)

SMALL = SyntheticConfig(num_train=24, num_test=3, image_size=256, positive_fraction=0.5, seed=3)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_rsna(root, SMALL, progress=False)
    return root


def test_layout_and_csv_schema(small_root):
    assert check_rsna_layout(small_root) == []
    table = pd.read_csv(small_root / "stage_2_train_labels.csv", dtype=str, keep_default_na=False)
    assert tuple(table.columns) == LABEL_COLUMNS
    negatives = table[table["Target"] == "0"]
    assert (negatives[["x", "y", "width", "height"]] == "").all().all()  # empty fields
    assert negatives["patientId"].is_unique  # one row per negative patient
    assert table["patientId"].nunique() == SMALL.num_train
    classes = pd.read_csv(small_root / "stage_2_detailed_class_info.csv")
    assert len(classes) == len(table) and set(classes["class"]) <= set(CLASS_NAMES)
    assert len(list((small_root / "stage_2_test_images").glob("*.dcm"))) == SMALL.num_test


def test_dicoms_look_like_rsna_files(small_root):
    table = pd.read_csv(small_root / "stage_2_train_labels.csv")
    patient = table["patientId"].iloc[0]
    path = small_root / "stage_2_train_images" / f"{patient}.dcm"
    header = read_dicom_header(path)
    assert header.PatientID == patient and header.Modality == "CR"
    assert header.PhotometricInterpretation == "MONOCHROME2" and header.BitsStored == 8
    assert str(header.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.50"
    image = read_dicom_image(path)
    assert image.shape == (256, 256) and image.dtype == np.uint8


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_boxes_cover_what_the_opacity_added(seed):
    """Same seed with opacity strength 0 gives the same image minus the opacities."""
    cfg = dataclasses.replace(SMALL, image_size=512, noise_std_range=(0.0, 0.0))
    with_opacity = make_phantom(np.random.default_rng(seed), cfg, positive=True)
    without = make_phantom(
        np.random.default_rng(seed),
        dataclasses.replace(cfg, opacity_strength_range=(0.0, 0.0)),
        positive=True,
    )
    added = with_opacity.image.astype(float) - without.image.astype(float)
    assert added.min() >= 0 and added.max() > 10
    inside = np.zeros(added.shape, bool)
    for x, y, w, h in with_opacity.boxes_xywh.round().astype(int):
        assert added[y : y + h, x : x + w].mean() > 3  # each box holds a bright region
        grow_x, grow_y = int(0.25 * w), int(0.25 * h)  # soft edges fade out past the box
        inside[max(0, y - grow_y) : y + h + grow_y, max(0, x - grow_x) : x + w + grow_x] = True
    assert added[inside].sum() / added.sum() > 0.98  # nothing bright outside the boxes


def test_labels_parse_cleanly(small_root):
    labels = load_rsna_labels(small_root / "stage_2_train_labels.csv", 256, 256)
    summary = labels.summary()
    assert summary["rejected_rows"] == 0 and summary["patients"] == SMALL.num_train
    assert summary["positive_patients"] > 0 and summary["negative_patients"] > 0


def test_determinism_and_seed_dependence():
    a = make_phantom(np.random.default_rng([1, 0, 5]), SMALL, positive=True)
    b = make_phantom(np.random.default_rng([1, 0, 5]), SMALL, positive=True)
    c = make_phantom(np.random.default_rng([2, 0, 5]), SMALL, positive=True)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes_xywh, b.boxes_xywh)
    assert not np.array_equal(a.image, c.image)


def test_statistics_are_rsna_like():
    cfg = SyntheticConfig(image_size=1024)
    boxes, counts, positives = [], [], 0
    for index in range(60):
        rng = np.random.default_rng([cfg.seed, 0, index])
        phantom = make_phantom(rng, cfg, positive=index % 2 == 0)
        positives += len(phantom.boxes_xywh) > 0
        if index % 2 == 0:
            counts.append(len(phantom.boxes_xywh))
            boxes.append(phantom.boxes_xywh)
        else:
            assert len(phantom.boxes_xywh) == 0
    sides = np.concatenate(boxes)[:, 2:]
    assert 1 <= min(counts) and max(counts) <= 4
    assert sides.min() >= 20 and sides.max() <= 800
    assert 150 <= np.median(sides) <= 400
    assert positives == 30


def test_ensure_reuses_then_regenerates_and_refuses_foreign_folders(tmp_path):
    root = tmp_path / "set"
    ensure_synthetic_rsna(root, SMALL, progress=False)
    stamp = (root / "stage_2_train_labels.csv").stat().st_mtime_ns
    ensure_synthetic_rsna(root, SMALL, progress=False)
    assert (root / "stage_2_train_labels.csv").stat().st_mtime_ns == stamp
    smaller = dataclasses.replace(SMALL, num_train=5, num_test=1)
    ensure_synthetic_rsna(root, smaller, progress=False)
    assert len(list((root / "stage_2_train_images").glob("*.dcm"))) == 5
    foreign = tmp_path / "real"
    foreign.mkdir()
    (foreign / "stage_2_train_labels.csv").write_text("patientId\n")
    with pytest.raises(FileExistsError, match="refusing"):
        ensure_synthetic_rsna(foreign, SMALL, progress=False)


def test_bad_config_raises():
    with pytest.raises(ValueError):
        SyntheticConfig(box_count_probs=(0.5, 0.4))
    with pytest.raises(ValueError):
        SyntheticConfig(compression="png")
    with pytest.raises(ValueError):
        SyntheticConfig(num_train=0)


def test_the_test_split_is_labelled_and_drawn_from_its_own_seed(small_root, tmp_path):
    test_labels = load_rsna_labels(small_root / "stage_2_test_labels.csv")
    test_ids = {p.stem for p in (small_root / "stage_2_test_images").glob("*.dcm")}
    assert set(test_labels.patient_ids) == test_ids
    assert not test_ids & set(load_rsna_labels(small_root / "stage_2_train_labels.csv").patient_ids)
    # Changing the training seed leaves the test images unchanged, and vice versa.
    other_train = dataclasses.replace(SMALL, seed=SMALL.seed + 1)
    write_synthetic_rsna(tmp_path / "a", other_train, progress=False)
    same_test = load_rsna_labels(tmp_path / "a" / "stage_2_test_labels.csv")
    assert same_test.patient_ids == test_labels.patient_ids
    assert load_rsna_labels(tmp_path / "a" / "stage_2_train_labels.csv").patient_ids != (
        load_rsna_labels(small_root / "stage_2_train_labels.csv").patient_ids
    )
    other_test = dataclasses.replace(SMALL, test_seed=SMALL.test_seed + 1)
    write_synthetic_rsna(tmp_path / "b", other_test, progress=False)
    assert load_rsna_labels(tmp_path / "b" / "stage_2_test_labels.csv").patient_ids != (
        test_labels.patient_ids
    )


def test_upper_zone_opacities_sit_above_every_default_one():
    """The position-bias test images: same generator, opacity centres moved up only."""
    from retinanet_lib.config import OPACITY_ZONE_NAMES, OPACITY_ZONES

    assert set(OPACITY_ZONES) == set(OPACITY_ZONE_NAMES)
    low, high = OPACITY_ZONES["lower"]
    assert OPACITY_ZONES["upper"][1] < low  # the two ranges of heights never overlap
    centres = {}
    for zone in OPACITY_ZONE_NAMES:
        cfg = SyntheticConfig(opacity_zone=zone, image_size=256)
        boxes = [
            make_phantom(np.random.default_rng([7, i]), cfg, positive=True).boxes_xywh
            for i in range(30)
        ]
        boxes = np.concatenate(boxes)
        centres[zone] = (boxes[:, 1] + boxes[:, 3] / 2) / 256
        assert len(boxes) >= 30  # every positive phantom still gets its opacities
    assert np.median(centres["upper"]) < np.min(centres["lower"]) + 0.05
    assert np.median(centres["upper"]) < np.median(centres["lower"]) - 0.15
    with pytest.raises(ValueError, match="opacity_zone"):
        SyntheticConfig(opacity_zone="left")
