"""The real RSNA labels and headers (torchxrayvision's data files) and the label statistics.

The counts are the challenge's own (the blog and Kaggle's data page give them); the
statistics are checked against slow, obvious references and hand-computed cases.
"""

from __future__ import annotations

import dataclasses
import importlib.machinery
import shutil

import numpy as np
import pandas as pd
import pytest

from retinanet_lib import label_statistics, real_labels, rsna, synthetic
from retinanet_lib.config import RetinaNetConfig, SyntheticConfig
from retinanet_lib.encoding import LabelEncoder


@pytest.fixture(scope="module")
def real() -> real_labels.RealRsnaLabels:
    return real_labels.load_real_labels()


@pytest.fixture(scope="module")
def synthetic_train_labels() -> rsna.RsnaLabels:
    return rsna.parse_label_table(synthetic.draw_training_labels(SyntheticConfig()))


def test_the_real_label_file_has_the_challenges_counts(real):
    assert real.labels.summary() == {
        "patients": 26_684,
        "positive_patients": 6_012,
        "negative_patients": 20_672,
        "boxes": 9_555,
        "rejected_rows": 0,
        "excluded_patients": 0,
    }
    assert real.num_label_rows == 30_227
    assert real.description.startswith("real RSNA labels, 30,227 rows (from torchxrayvision")


def test_the_reader_agrees_with_a_plain_count_of_the_file(real):
    raw = pd.read_csv(real_labels.real_labels_folder() / real_labels.LABELS_FILE)
    assert list(raw.columns) == ["patientId", "x", "y", "width", "height", "Target"]
    assert raw["patientId"].nunique() == len(real.labels.boxes_xywh)
    assert (raw["Target"] == 1).sum() == real.labels.num_boxes
    first = raw[raw["Target"] == 1].iloc[0]
    np.testing.assert_array_equal(
        real.labels.boxes_xywh[first["patientId"]][0],
        first[["x", "y", "width", "height"]].to_numpy(np.float32),
    )


def test_the_real_labels_read_like_a_kaggle_download(real, tmp_path):
    """Same reader, same patients, same split as the file in a Kaggle folder."""
    kaggle_copy = tmp_path / rsna.LABELS_FILE
    shutil.copy(real_labels.real_labels_folder() / real_labels.LABELS_FILE, tmp_path / "l.zip")
    pd.read_csv(tmp_path / "l.zip").to_csv(kaggle_copy, index=False)
    downloaded = rsna.load_rsna_labels(kaggle_copy)
    assert downloaded.patient_ids == real.labels.patient_ids
    assert rsna.split_patients(downloaded, 0.1, 0) == rsna.split_patients(real.labels, 0.1, 0)


def test_the_headers_reject_exactly_the_impossible_ages(real):
    raw = pd.read_csv(real_labels.real_labels_folder() / real_labels.HEADERS_FILE)
    assert len(raw) == 26_684
    too_old = raw.loc[raw["PatientAge"] > real_labels.MAX_AGE_YEARS, "PatientID"]
    assert sorted(raw.loc[too_old.index, "PatientAge"]) == [148, 150, 151, 153, 155]
    assert sorted(real.headers.rejected["patientId"]) == sorted(too_old)
    assert set(real.headers.rejected["reason"]) == {"age outside 0 to 122 years"}
    table = real.headers.table
    assert len(table) == 26_684 - 5
    assert table["view_position"].value_counts().to_dict() == {"PA": 14_506, "AP": 12_173}
    assert set(table.index) <= set(real.labels.boxes_xywh)


def test_every_kind_of_bad_header_row_is_named(tmp_path):
    path = tmp_path / "headers.csv"
    rows = [
        ("a", "40", "F", "AP", "0.14"),
        ("b", "40.5", "M", "PA", "0.14"),
        ("c", "-1", "M", "PA", "0.14"),
        ("d", "40", "X", "PA", "0.14"),
        ("e", "40", "M", "LL", "0.14"),
        ("f", "40", "M", "PA", "0"),
        ("g", "40", "M", "PA", "0.14"),
        ("g", "41", "M", "PA", "0.14"),
        ("", "40", "M", "PA", "0.14"),
    ]
    pd.DataFrame(
        rows, columns=["PatientID", "PatientAge", "PatientSex", "ViewPosition", "PixelSpacing"]
    ).to_csv(path, index=False)
    headers = real_labels.load_dicom_headers(path)
    assert list(headers.table.index) == ["a"]
    assert headers.table.loc["a", "age_years"] == 40
    assert headers.rejected["reason"].tolist() == [
        "age is not a whole number",
        "age outside 0 to 122 years",
        "sex not in ('F', 'M')",
        "view position not in ('AP', 'PA')",
        "pixel spacing not positive",
        "duplicate patientId",
        "duplicate patientId",
        "missing patientId",
    ]
    pd.DataFrame({"PatientID": ["a"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="ViewPosition"):
        real_labels.load_dicom_headers(path)


def test_a_missing_package_names_it_and_says_how_to_install(monkeypatch):
    monkeypatch.setattr(real_labels.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(real_labels.RealLabelsMissingError) as error:
        real_labels.load_real_labels()
    assert isinstance(error.value, FileNotFoundError)
    message = str(error.value)
    assert "torchxrayvision" in message and "--no-deps" in message and "Colab" in message


def test_a_package_without_the_files_lists_them(monkeypatch, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / real_labels.LABELS_FILE).write_text("patientId\n")
    spec = importlib.machinery.ModuleSpec("torchxrayvision", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(real_labels.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(real_labels.RealLabelsMissingError, match=real_labels.HEADERS_FILE):
        real_labels.real_labels_folder()


def test_drawn_training_labels_are_the_written_ones(tmp_path):
    small = dataclasses.replace(SyntheticConfig(), num_train=24, num_test=2, image_size=128)
    synthetic.write_synthetic_rsna(tmp_path, small, progress=False)
    written = rsna.load_rsna_labels(tmp_path / rsna.LABELS_FILE)
    drawn = rsna.parse_label_table(synthetic.draw_training_labels(small))
    assert drawn.patient_ids == written.patient_ids
    for pid in written.patient_ids:
        np.testing.assert_array_equal(drawn.boxes_xywh[pid], written.boxes_xywh[pid])
    assert written.num_boxes > 0


def _labels(boxes_by_patient: dict) -> rsna.RsnaLabels:
    rows = []
    for pid, boxes in boxes_by_patient.items():
        rows += [(pid, *box, 1) for box in boxes] or [(pid, None, None, None, None, 0)]
    table = pd.DataFrame(rows, columns=["patientId", "x", "y", "width", "height", "Target"])
    return rsna.parse_label_table(table)


def test_box_table_measures_in_a_1024_pixel_frame():
    labels = _labels({"a": [(10, 20, 30, 60)], "b": []})
    table = label_statistics.box_table(labels, image_size=256)
    row = table.iloc[0]
    assert (row["width"], row["height"], row["aspect"]) == (120.0, 240.0, 2.0)
    assert row["centre_x"] == pytest.approx(25 / 256) and row["centre_y"] == pytest.approx(
        0.1953125
    )
    assert row["area_fraction"] == pytest.approx(1800 / 256**2)


def _ks_statistic(a, b) -> float:
    """The largest gap between two empirical CDFs, evaluated at every pooled value."""
    gaps = [abs(np.mean(a <= v) - np.mean(b <= v)) for v in np.concatenate([a, b])]
    return max(gaps)


def test_the_two_sample_comparison_against_hand_cases():
    rng = np.random.default_rng(0)
    widths = rng.uniform(50, 300, size=60).round()
    same = _labels({f"p{k}": [(100, 100, w, 1.5 * w)] for k, w in enumerate(widths)})
    shifted = _labels({f"q{k}": [(100, 100, w + 400, 1.5 * w)] for k, w in enumerate(widths)})
    identical = label_statistics.compare_label_sets(same, same).set_index("quantity")
    assert (identical["statistic"] == 0).all()
    assert (identical["verdict"] == "no difference found").all()
    apart = label_statistics.compare_label_sets(same, shifted).set_index("quantity")
    assert apart.loc["width", "statistic"] == 1.0 and apart.loc["width", "verdict"] == "differs"
    assert apart.loc["height", "statistic"] == 0.0  # the same heights
    a = label_statistics.box_table(same)["aspect"].to_numpy()
    b = label_statistics.box_table(shifted)["aspect"].to_numpy()
    assert apart.loc["aspect", "statistic"] == pytest.approx(_ks_statistic(a, b))


def test_the_generator_against_the_real_labels_pins_each_difference(real, synthetic_train_labels):
    """What Chapter 3 says: no difference found in width, six differences (p < 0.01)."""
    tests = label_statistics.compare_label_sets(real.labels, synthetic_train_labels)
    verdicts = tests.set_index("quantity")["verdict"].to_dict()
    assert verdicts == {
        "width": "no difference found",
        "height": "differs",
        "aspect": "differs",
        "area_fraction": "differs",
        "midline_distance": "differs",
        "centre_y": "differs",
        "boxes per positive image": "differs",
    }
    medians = tests.set_index("quantity")
    assert medians.loc["height", "other_median"] > medians.loc["height", "reference_median"]
    real_counts = label_statistics.boxes_per_positive_image(real.labels)
    synthetic_counts = label_statistics.boxes_per_positive_image(synthetic_train_labels)
    assert np.mean(real_counts == 2) > np.mean(real_counts == 1)
    assert np.mean(synthetic_counts == 1) > np.mean(synthetic_counts == 2)


def _slow_positive_anchors(labels, cfg, image_size) -> list[int]:
    """Per image: the IoU of every anchor with every box, each anchor to its best box; with
    low-quality matching, each box's best anchors (IoU > 0) are positive too."""
    encoder = LabelEncoder(dataclasses.replace(cfg, image_size=image_size))
    anchors = np.asarray(encoder.anchors_xyxy, np.float32)  # float32, as the library
    counts = []
    for boxes_xywh in labels.boxes_xywh.values():
        if not len(boxes_xywh):
            continue
        boxes = np.concatenate([boxes_xywh[:, :2], boxes_xywh[:, :2] + boxes_xywh[:, 2:]], 1)
        boxes = (boxes * (image_size / 1024.0)).astype(np.float32)
        iou = np.zeros((len(anchors), len(boxes)), np.float32)
        for g, box in enumerate(boxes):
            inter_w = np.clip(
                np.minimum(anchors[:, 2], box[2]) - np.maximum(anchors[:, 0], box[0]), 0, None
            )
            inter_h = np.clip(
                np.minimum(anchors[:, 3], box[3]) - np.maximum(anchors[:, 1], box[1]), 0, None
            )
            inter = inter_w * inter_h
            area_a = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
            area_b = (box[2] - box[0]) * (box[3] - box[1])
            iou[:, g] = inter / (area_a + area_b - inter)
        best = iou.argmax(axis=1)
        positive = iou.max(axis=1) >= cfg.encoder.match_iou
        if cfg.encoder.match_low_quality:
            positive |= ((iou >= iou.max(axis=0, keepdims=True)) & (iou > 0)).any(axis=1)
        counts += [int((positive & (best == g)).sum()) for g in range(len(boxes))]
        _, stats = encoder.encode_sample_with_stats(boxes, np.zeros(len(boxes), np.int32))
        assert stats["num_unmatched_gt"] == sum(c == 0 for c in counts[-len(boxes) :])
    return counts


@pytest.mark.slow
def test_anchor_coverage_matches_a_slow_reference(real):
    ids = [pid for pid, b in real.labels.boxes_xywh.items() if len(b)][:40]
    ids += [pid for pid, b in real.labels.boxes_xywh.items() if len(b) >= 3][:5]
    subset = rsna.RsnaLabels(
        boxes_xywh={pid: real.labels.boxes_xywh[pid] for pid in ids},
        rejected=real.labels.rejected,
        excluded_patients=(),
    )
    cfg = RetinaNetConfig()
    for size in (128, 256):
        fast = label_statistics.positive_anchors_per_box(subset, cfg, size)
        assert fast.tolist() == _slow_positive_anchors(subset, cfg, size)
    coverage = label_statistics.anchor_coverage(subset, cfg, (128,))
    slow = np.array(_slow_positive_anchors(subset, cfg, 128))
    assert coverage.loc[0, "boxes_without_anchor"] == (slow == 0).sum() > 0
    assert coverage.loc[0, "median"] == np.median(slow)
    # Low-quality matching: every box gets its best anchor, whatever its level.
    low_quality = dataclasses.replace(
        cfg, encoder=dataclasses.replace(cfg.encoder, match_low_quality=True)
    )
    fast = label_statistics.positive_anchors_per_box(subset, low_quality, 128)
    assert fast.tolist() == _slow_positive_anchors(subset, low_quality, 128)
    assert (fast > 0).all()
    halved = label_statistics.anchor_coverage(subset, cfg, (128,), anchor_scale=0.5)
    half_cfg = dataclasses.replace(
        cfg, anchors=dataclasses.replace(cfg.anchors, base_sizes=(16.0, 32.0, 64.0, 128.0, 256.0))
    )
    assert halved.loc[0, "boxes_without_anchor"] == sum(
        c == 0 for c in _slow_positive_anchors(subset, half_cfg, 128)
    )


def test_positive_rate_and_view_auc_by_hand():
    labels = _labels(
        {
            "p1": [(0, 0, 10, 10)],
            "p2": [(0, 0, 10, 10)],
            "p3": [(0, 0, 10, 10)],
            "n1": [],
            "n2": [],
            "n3": [],
        }
    )
    views = pd.Series({"p1": "AP", "p2": "AP", "p3": "PA", "n1": "AP", "n2": "PA"})
    rates = label_statistics.positive_rate_by_view(labels, views)
    assert rates.loc["AP", "positive_rate"] == pytest.approx(2 / 3)
    assert rates.loc["PA", "positive_rate"] == pytest.approx(1 / 2)
    assert rates.loc["no valid header", "patients"] == 1
    # n3 has no view and is left out: 3 positives x 2 negatives = 6 pairs. AP beats PA in
    # 2 pairs (p1, p2 against n2), ties in 3 (p1, p2 against n1; p3 against n2), loses 1.
    assert label_statistics.view_only_auc(labels, views) == pytest.approx((2 + 0.5 * 3) / 6)


def test_the_location_prior_floor_by_hand():
    """Every positive has the same left-half box, so the fitted prior is that box: each
    positive scores 1, each negative with a prediction 0, each negative without one is not
    counted."""
    box = (100, 300, 200, 400)
    labels = _labels({**{f"p{k}": [box] for k in range(10)}, **{f"n{k}": [] for k in range(10)}})
    views = pd.Series({**{f"p{k}": "AP" for k in range(10)}, **{f"n{k}": "PA" for k in range(10)}})
    floor = label_statistics.location_prior_floor(labels, num_folds=2, seed=0, gate_view=views)
    assert (floor["prior_boxes"] == 1).all()
    expected_no_gate = floor["with_opacity"] / floor["images"]
    np.testing.assert_allclose(floor["no_gate"], expected_no_gate)
    np.testing.assert_allclose(floor["perfect_gate"], 1.0)
    np.testing.assert_allclose(floor["view_gate"], 1.0)
