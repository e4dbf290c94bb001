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


def _rebalanced_cfg(cfg, fraction):
    from retinanet_lib.config import DataConfig

    still = DataConfig(
        horizontal_flip=False,
        max_rotation_degrees=0.0,
        max_shift_fraction=0.0,
        positive_image_fraction=fraction,
    )
    return dataclasses.replace(cfg, data=still)


def _drawn_records(setup, fraction, draws):
    """Which record every drawn training image is (by its pixels), and its drawn boxes."""
    root, labels, cfg = setup
    records = make_records(root, labels, labels.patient_ids)
    plain = [
        (image.numpy().tobytes(), boxes.numpy())
        for image, boxes in make_dataset(records, cfg, 1, training=False, encode=False)
    ]
    index_of = {image: index for index, (image, _) in enumerate(plain)}
    stream = make_dataset(records, _rebalanced_cfg(cfg, fraction), 1, True, encode=False)
    drawn, boxes = [], []
    for image, image_boxes in stream.take(draws):
        drawn.append(index_of[image.numpy().tobytes()])  # KeyError: not a record's image
        boxes.append(image_boxes.numpy())
    return records, plain, np.array(drawn), boxes


def test_rebalanced_stream_draws_positive_images_at_the_configured_rate(setup):
    records, plain, drawn, boxes = _drawn_records(setup, 0.8, 600)
    positive = np.array([len(b) > 0 for b in records.boxes_xywh])
    assert abs(positive.mean() - 0.8) > 0.2  # the natural mix (7 of 12) is far from 0.8
    share = positive[drawn].mean()
    assert abs(share - 0.8) < 4 * np.sqrt(0.8 * 0.2 / 600)  # binomial: 4 standard errors
    assert set(drawn) == set(range(len(records)))  # every image is still seen ...
    counts = np.bincount(drawn, minlength=len(records))
    assert counts[positive].min() > counts[~positive].max()  # ... positives more often
    for index, image_boxes in zip(drawn, boxes, strict=True):  # each image keeps its boxes
        np.testing.assert_array_equal(image_boxes, plain[index][1])


def test_rebalanced_stream_is_seeded_and_endless(setup):
    root, labels, cfg = setup
    records = make_records(root, labels, labels.patient_ids)
    rebalanced = _rebalanced_cfg(cfg, 0.5)
    assert make_dataset(records, rebalanced, 4, True).cardinality() == tf.data.INFINITE_CARDINALITY
    first = _drawn_records(setup, 0.5, 48)[2]
    again = _drawn_records(setup, 0.5, 48)[2]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first[:12], first[12:24])  # not one order repeated


def test_rebalancing_needs_both_kinds_of_image(setup):
    root, labels, cfg = setup
    negatives = [p for p in labels.patient_ids if len(labels.boxes_xywh[p]) == 0]
    records = make_records(root, labels, negatives)
    with pytest.raises(ValueError, match="no positive image"):
        make_dataset(records, _rebalanced_cfg(cfg, 0.5), 2, training=True)
    make_dataset(records, _rebalanced_cfg(cfg, 0.5), 2, training=False)  # evaluation: fine


def test_rebalanced_disk_caches_one_file_per_group(setup, tmp_path):
    root, labels, cfg = setup
    records = make_records(root, labels, labels.patient_ids)
    target = str(tmp_path / "train")
    stream = make_dataset(records, _rebalanced_cfg(cfg, 0.5), 2, True, cache=target)
    list(stream.take(12))
    names = {p.name.split(".")[0] for p in tmp_path.iterdir()}
    assert names == {"train_positive", "train_negative"}


def test_positive_image_fraction_must_be_a_probability():
    from retinanet_lib.config import DataConfig

    for bad in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ValueError, match="positive_image_fraction"):
            DataConfig(positive_image_fraction=bad)
