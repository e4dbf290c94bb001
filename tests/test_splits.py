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


def test_without_test_labels_there_is_no_test_split(tmp_path):
    write_synthetic_rsna(tmp_path, SMALL, progress=False)
    (tmp_path / TEST_LABELS_FILE).unlink()
    (tmp_path / "synthetic_manifest.json").unlink()
    splits = load_splits("full", config_for_mode("cpu"), data_root=tmp_path)
    assert splits.test is None and not splits.synthetic and splits.data_name == "real RSNA"
    assert len(splits.test_paths) == 8
    assert list(splits.summary().index) == ["train", "validation"]
    assert isinstance(splits.summary(), pd.DataFrame)
