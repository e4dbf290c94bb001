import dataclasses

import numpy as np
import pandas as pd

from retinanet_lib.config import SyntheticConfig, config_for_mode
from retinanet_lib.rsna import TEST_LABELS_FILE, load_rsna_labels
from retinanet_lib.splits import load_splits
from retinanet_lib.synthetic import write_synthetic_rsna

SMALL = SyntheticConfig(num_train=20, num_test=8, image_size=128, positive_fraction=0.5)


def test_three_disjoint_splits_with_labelled_test_images(tmp_path):
    write_synthetic_rsna(tmp_path, SMALL, progress=False)
    cfg = config_for_mode("cpu")
    splits = load_splits("cpu", cfg, data_root=tmp_path)
    assert splits.synthetic and splits.data_name == "synthetic"
    assert len(splits.train) == 16 and len(splits.validation) == 4 and len(splits.test) == 8
    assert not set(splits.train.paths) & set(splits.validation.paths)
    assert len(splits.test_paths) == 8 and sorted(splits.test.paths) == splits.test_paths
    test_labels = load_rsna_labels(tmp_path / TEST_LABELS_FILE)
    for path, boxes in zip(splits.test.paths, splits.test.boxes_xywh, strict=True):
        np.testing.assert_array_equal(boxes, test_labels.boxes_xywh[path.split("/")[-1][:-4]])
    table = splits.summary()
    assert table.index.name == "split (synthetic)"
    assert table.loc["test", "images"] == 8
    # Another training seed never changes the split.
    reseeded = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=5))
    assert load_splits("cpu", reseeded, data_root=tmp_path).validation.paths == (
        splits.validation.paths
    )


def test_without_test_labels_the_test_split_is_held_out_of_training_by_patient(tmp_path):
    """The Kaggle layout: stage-2 test images without labels."""
    write_synthetic_rsna(tmp_path, SMALL, progress=False)
    labelled = load_splits("cpu", config_for_mode("cpu"), data_root=tmp_path)
    (tmp_path / TEST_LABELS_FILE).unlink()
    (tmp_path / "synthetic_manifest.json").unlink()
    cfg = config_for_mode("full")
    splits = load_splits("full", cfg, data_root=tmp_path)
    assert not splits.synthetic and splits.data_name == "real RSNA" and splits.test_held_out
    labels = splits.labels
    positive = [len(labels.boxes_xywh[pid]) > 0 for pid in labels.patient_ids]
    per_stratum = (sum(positive), len(positive) - sum(positive))
    expected_test = sum(round(n * cfg.data.test_fraction) for n in per_stratum)
    expected_val = sum(round(n * cfg.data.validation_fraction) for n in per_stratum)
    assert (len(splits.test), len(splits.validation)) == (expected_test, expected_val)
    assert len(splits.train) + expected_val + expected_test == 20
    groups = [set(s.paths) for s in (splits.train, splits.validation, splits.test)]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert all("/stage_2_train_images/" in path for path in splits.test.paths)
    test_positives = sum(len(boxes) > 0 for boxes in splits.test.boxes_xywh)
    assert test_positives == round(per_stratum[0] * cfg.data.test_fraction)
    # The validation patients are those of the split without a test part.
    assert splits.validation.paths == labelled.validation.paths
    # The Kaggle test images are still there to predict, for the submission.
    assert len(splits.test_paths) == 8
    table = splits.summary()
    assert list(table.index) == ["train", "validation", "test (held out of training)"]


def test_a_zero_test_fraction_leaves_no_test_split(tmp_path):
    write_synthetic_rsna(tmp_path, SMALL, progress=False)
    (tmp_path / TEST_LABELS_FILE).unlink()
    cfg = config_for_mode("cpu")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, test_fraction=0.0))
    splits = load_splits("cpu", cfg, data_root=tmp_path)
    assert splits.test is None and not splits.test_held_out
    assert list(splits.summary().index) == ["train", "validation"]
    assert isinstance(splits.summary(), pd.DataFrame)


def test_the_smoke_setting_keeps_a_handful_of_each_kind_and_says_so(tmp_path, monkeypatch, capsys):
    from retinanet_lib.config import SMOKE_ENV, SmokeConfig
    from retinanet_lib.splits import smoke_subset

    write_synthetic_rsna(tmp_path, SMALL, progress=False)
    (tmp_path / TEST_LABELS_FILE).unlink()
    full = load_splits("full", config_for_mode("full"), data_root=tmp_path)
    monkeypatch.setenv(SMOKE_ENV, "1")
    smoke = load_splits("full", config_for_mode("full"), data_root=tmp_path)
    limits = SmokeConfig()
    for name, limit in (("train", limits.train_images), ("validation", 8), ("test", 8)):
        before, after = getattr(full, name), getattr(smoke, name)
        positive = [len(b) > 0 for b in before.boxes_xywh]
        expected_positives = min(limit // 2, sum(positive))
        expected = expected_positives + min(limit - expected_positives, positive.count(False))
        assert len(after) == expected, name
        kept = [len(b) > 0 for b in after.boxes_xywh]
        assert kept == [True] * expected_positives + [False] * (expected - expected_positives)
        assert set(after.paths) <= set(before.paths)
    # The CPU default ignores the smoke setting.
    assert len(load_splits("cpu", config_for_mode("cpu"), data_root=tmp_path).train) == len(
        full.train
    )
    # By hand: positives first, each kind in split order.
    records = full.train
    first_positive = next(i for i, b in enumerate(records.boxes_xywh) if len(b))
    assert smoke_subset(records, 2).paths[0] == records.paths[first_positive]
