import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from retinanet_lib.boxes import scale_boxes, xywh_to_xyxy
from retinanet_lib.config import SyntheticConfig, config_for_mode
from retinanet_lib.encoding import LabelEncoder
from retinanet_lib.pipeline import make_dataset, make_records
from retinanet_lib.rsna import load_rsna_labels, split_patients
from retinanet_lib.synthetic import write_synthetic_rsna

DATA = SyntheticConfig(num_train=12, num_test=1, image_size=512, positive_fraction=0.5, seed=5)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rsna")
    write_synthetic_rsna(root, DATA, progress=False)
    labels = load_rsna_labels(root / "stage_2_train_labels.csv", 512, 512)
    cfg = dataclasses.replace(config_for_mode("cpu"), image_size=128)
    return root, labels, cfg


def test_batches_have_the_model_shapes(setup):
    root, labels, cfg = setup
    records = make_records(root, labels, labels.patient_ids)
    dataset = make_dataset(records, cfg, batch_size=4, training=True)
    spec_images, spec_targets = dataset.element_spec
    assert spec_images.shape.as_list() == [4, 128, 128, 3] and spec_images.dtype == tf.float32
    assert spec_targets.shape.as_list() == [4, 3069, 5] and spec_targets.dtype == tf.float32
    batches = list(dataset)
    assert len(batches) == 3  # 12 images, drop_remainder in training
    images = np.concatenate([b[0].numpy() for b in batches])
    assert images.min() >= -1.0 and images.max() <= 1.0


def test_validation_targets_equal_encoding_the_scaled_csv_boxes(setup):
    root, labels, cfg = setup
    ids = labels.patient_ids[:5]
    dataset = make_dataset(make_records(root, labels, ids), cfg, batch_size=2, training=False)
    targets = np.concatenate([t.numpy() for _, t in dataset])
    assert targets.shape == (5, 3069, 5)  # no image dropped outside training
    encoder = LabelEncoder(cfg)
    for index, patient in enumerate(ids):
        boxes = scale_boxes(xywh_to_xyxy(labels.boxes_xywh[patient]), 128 / 512, 128 / 512)
        expected = encoder.encode_sample(boxes, np.zeros(len(boxes), np.int32))
        np.testing.assert_allclose(targets[index], expected, atol=1e-4)


def test_training_stream_is_reproducible_and_augmented(setup):
    root, labels, cfg = setup
    records = make_records(root, labels, labels.patient_ids)
    first = [b.numpy() for b, _ in make_dataset(records, cfg, 4, training=True)]
    again = [b.numpy() for b, _ in make_dataset(records, cfg, 4, training=True)]
    plain = [b.numpy() for b, _ in make_dataset(records, cfg, 4, training=False)]
    np.testing.assert_array_equal(np.stack(first), np.stack(again))
    assert not np.allclose(np.sort(np.stack(first).ravel()), np.sort(np.stack(plain).ravel()))


def test_raw_mode_and_file_cache(setup, tmp_path):
    root, labels, cfg = setup
    records = make_records(root, labels, labels.patient_ids[:3])
    raw = list(
        make_dataset(records, cfg, 1, training=False, encode=False, cache=str(tmp_path / "cache"))
    )
    image, boxes = raw[0]
    assert image.shape == (128, 128) and image.dtype == tf.uint8 and boxes.shape[-1] == 4
    assert any(p.name.startswith("cache") for p in tmp_path.iterdir())


def test_missing_images_are_an_error_not_a_skip(setup, tmp_path):
    _, labels, _ = setup
    with pytest.raises(FileNotFoundError, match="3 of 3"):
        make_records(tmp_path, labels, labels.patient_ids[:3])


def test_split_feeds_the_pipeline(setup):
    root, labels, cfg = setup
    train_ids, val_ids = split_patients(labels, 0.25, seed=0)
    assert len(make_records(root, labels, train_ids)) + len(val_ids) == 12
    with pytest.raises(ValueError, match="no records"):
        make_dataset(make_records(root, labels, []), cfg, 1, training=False)


def test_records_subset_keeps_the_chosen_order():
    from retinanet_lib.pipeline import Records

    records = Records(
        paths=["a", "b", "c"], boxes_xywh=[np.zeros((0, 4)), np.ones((1, 4)), 2 * np.ones((2, 4))]
    )
    picked = records.subset([2, 0])
    assert picked.paths == ["c", "a"] and len(picked.boxes_xywh[0]) == 2 and len(picked) == 2


def test_make_dataset_follows_the_configured_image_cache(setup):
    from retinanet_lib.config import DataConfig

    root, labels, cfg = setup
    records = make_records(root, labels, labels.patient_ids[:4])
    on_disk = dataclasses.replace(cfg, data=DataConfig(image_cache="disk"))
    first = [images.numpy() for images, _ in make_dataset(records, on_disk, 2, training=False)]
    cache_files = sorted(p.name for p in (root / "cache").iterdir())
    assert any(name.startswith("eval_4_") and name.endswith(".index") for name in cache_files)
    again = [images.numpy() for images, _ in make_dataset(records, on_disk, 2, training=False)]
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(again))
    in_memory = dataclasses.replace(cfg, data=DataConfig(image_cache="memory"))
    make_dataset(records, in_memory, 2, training=False)
    assert sorted(p.name for p in (root / "cache").iterdir()) == cache_files  # nothing new
