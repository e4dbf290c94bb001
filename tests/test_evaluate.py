import dataclasses

import numpy as np
import pytest

from retinanet_lib.boxes import scale_boxes, xywh_to_xyxy
from retinanet_lib.config import EncoderConfig, SyntheticConfig, config_for_mode
from retinanet_lib.encoding import LabelEncoder, split_targets
from retinanet_lib.evaluate import (
    average_precision_at,
    choose_score_threshold,
    detections_of,
    evaluate_thresholds,
    predict_split,
    score_at,
    split_images,
)
from retinanet_lib.model import build_retinanet
from retinanet_lib.pipeline import make_records
from retinanet_lib.rsna import load_rsna_labels
from retinanet_lib.synthetic import write_synthetic_rsna

# Low-quality matching gives every box at least one positive anchor, so perfect predictions
# reproduce every box (at 128 px a small box can otherwise match no anchor at all).
CFG = dataclasses.replace(
    config_for_mode("cpu"), image_size=128, encoder=EncoderConfig(match_low_quality=True)
)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    write_synthetic_rsna(
        root,
        SyntheticConfig(num_train=6, num_test=0, positive_fraction=0.5, seed=4),
        progress=False,
    )
    labels = load_rsna_labels(root / "stage_2_train_labels.csv")
    return make_records(root, labels, labels.patient_ids), labels


def perfect_predictions(gt_boxes):
    encoder = LabelEncoder(CFG)
    outputs = []
    for boxes in gt_boxes:
        deltas, classes = split_targets(encoder.encode_sample(boxes, np.zeros(len(boxes), int)))
        logits = np.where(classes.numpy() >= 0, 8.0, -8.0)[:, None]
        outputs.append(np.concatenate([deltas.numpy(), logits], -1))
    return np.stack(outputs).astype(np.float32)


def test_ground_truth_is_the_csv_boxes_scaled_to_the_input(records):
    recs, labels = records
    gt = predict_split(build_retinanet(CFG), recs, CFG).gt_boxes_xyxy
    assert len(gt) == 6
    for boxes, patient_boxes in zip(gt, recs.boxes_xywh, strict=True):
        expected = scale_boxes(xywh_to_xyxy(patient_boxes), 128 / 1024, 128 / 1024)
        np.testing.assert_allclose(boxes, expected, atol=1e-4)


def test_perfect_predictions_score_one_and_empty_ones_zero(records):
    recs, _ = records
    gt = predict_split(build_retinanet(CFG), recs, CFG).gt_boxes_xyxy
    assert any(len(b) for b in gt) and any(not len(b) for b in gt)
    perfect = perfect_predictions(gt)
    assert score_at(perfect, gt, CFG, 0.5).rsna_metric == pytest.approx(1.0)
    silent = perfect.copy()
    silent[..., 4] = -8.0  # no confident anchor anywhere
    assert score_at(silent, gt, CFG, 0.5).rsna_metric == 0.0
    table = evaluate_thresholds(perfect, gt, CFG, (0.3, 0.9))
    assert list(table.index) == [0.3, 0.9] and (table["rsna_metric"] == 1.0).all()
    assert average_precision_at(perfect, gt, CFG).average_precision == pytest.approx(1.0)
    assert average_precision_at(silent, gt, CFG).average_precision == 0.0


def test_choose_score_threshold_takes_the_best_and_the_lowest_on_a_tie(records):
    recs, _ = records
    gt = predict_split(build_retinanet(CFG), recs, CFG).gt_boxes_xyxy
    perfect = perfect_predictions(gt)  # confident anchors at probability sigmoid(8) = 0.9997
    threshold, table = choose_score_threshold(perfect, gt, CFG, (0.2, 0.5, 0.9))
    assert threshold == 0.2 and len(table) == 3  # all three score 1.0: the lowest wins
    weak = perfect.copy()
    weak[..., 4] = np.where(weak[..., 4] > 0, 0.0, -8.0)  # positives at probability 0.5
    threshold, table = choose_score_threshold(weak, gt, CFG, (0.2, 0.6))
    assert threshold == 0.2 and table.loc[0.6, "rsna_metric"] == 0.0


def test_predict_split_keeps_order_and_skips_unreadable_files(records, tmp_path):
    recs, _ = records
    model = build_retinanet(CFG)
    full = predict_split(model, recs, CFG, batch_size=4, keep_images=True)
    assert full.predictions.shape == (6, 3069, 5) and full.predictions.dtype == np.float32
    assert full.images.shape == (6, 128, 128) and full.images.dtype == np.uint8
    np.testing.assert_array_equal(full.indices, np.arange(6))
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not a DICOM file")
    paths = list(recs.paths)
    paths[2] = str(broken)
    damaged = predict_split(model, dataclasses.replace(recs, paths=paths), CFG, batch_size=4)
    np.testing.assert_array_equal(damaged.indices, [0, 1, 3, 4, 5])
    np.testing.assert_allclose(damaged.predictions, full.predictions[[0, 1, 3, 4, 5]], atol=1e-4)
    assert damaged.rejects["file"].tolist() == [str(broken)]
    assert "DicomReadError" in damaged.rejects["error"][0]


def test_predict_images_matches_the_model_batch_by_batch():
    from retinanet_lib.inference import predict_images

    model = build_retinanet(CFG)
    images = np.random.default_rng(0).normal(size=(5, 128, 128, 3)).astype(np.float32)
    got = predict_images(model, images, CFG, batch_size=2)
    assert got.shape == (5, 3069, 5)
    np.testing.assert_allclose(got, np.asarray(model(images)), rtol=1e-4, atol=1e-4)


def test_figure29_picks_follow_the_per_image_scores():
    from retinanet_lib.evaluate import figure29_picks
    from retinanet_lib.metrics import DetectionScores

    box = np.array([[0, 0, 10, 10]], np.float32)
    empty = np.zeros((0, 4), np.float32)
    gt = [box, empty, box, box, empty, box]
    per_image = np.array([0.5, np.nan, 0.9, 0.1, 0.0, 0.7])
    scores = DetectionScores(0.0, per_image, 0.0, 0.0, *(np.zeros(8),) * 3)
    predictions = np.zeros((6, 4, 5), np.float32)
    predictions[4, 2, 4] = 3.0  # the negative image 4 has the most confident anchor
    picks = figure29_picks(scores, gt, predictions)
    assert picks == [
        (2, "(a) found"),
        (5, "(b) found"),
        (4, "(c) negative"),
        (3, "(d) worst positive"),
    ]
    with pytest.raises(ValueError):
        figure29_picks(scores, [box, box, empty, empty, empty, empty], predictions)


def test_heatmaps_of_match_the_heatmap_of_decoded_boxes(records):
    from retinanet_lib.anchors import generate_anchors
    from retinanet_lib.evaluate import heatmaps_of
    from retinanet_lib.heatmap import score_heatmap
    from retinanet_lib.inference import decode_all

    rng = np.random.default_rng(3)
    predictions = rng.normal(0, 1, (2, 3069, 5)).astype(np.float32)
    maps = heatmaps_of(predictions, CFG, "score_weighted")
    boxes, probabilities = decode_all(predictions, generate_anchors(128, 128, CFG.anchors), CFG)
    expected = score_heatmap(boxes[1], probabilities[1, :, 0], (128, 128), "score_weighted")
    assert len(maps) == 2 and maps[1].shape == (128, 128)
    np.testing.assert_allclose(maps[1], expected, atol=1e-6)


def test_metric_table_reports_each_split_with_an_interval(records):
    from retinanet_lib.evaluate import SplitPredictions, metric_table

    recs, _ = records
    gt = predict_split(build_retinanet(CFG), recs, CFG).gt_boxes_xyxy
    perfect = perfect_predictions(gt)
    split = SplitPredictions(perfect, gt, np.arange(len(gt)), None, None)
    table, scores = metric_table({"perfect": split}, CFG, 0.5)
    row = table.loc["perfect"]
    assert row["images"] == 6 and row["positive"] == sum(len(b) > 0 for b in gt)
    assert row["RSNA metric"] == 1.0 and row["95% interval"] == "1.00 to 1.00"
    assert scores["perfect"].recall == 1.0


def test_split_images_are_predict_splits_images_without_a_model(records):
    recs, _ = records
    full = predict_split(build_retinanet(CFG), recs, CFG, batch_size=4, keep_images=True)
    images, gt = split_images(recs, CFG, batch_size=5)
    np.testing.assert_array_equal(images, full.images)
    assert len(gt) == len(full.gt_boxes_xyxy)
    for mine, theirs in zip(gt, full.gt_boxes_xyxy, strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_detections_of_are_the_scored_detections(records):
    recs, _ = records
    gt = predict_split(build_retinanet(CFG), recs, CFG).gt_boxes_xyxy
    predictions = perfect_predictions(gt)
    found = detections_of(predictions, CFG.with_score_threshold(0.5))
    assert len(found) == len(gt)
    for (boxes, scores), truth in zip(found, gt, strict=True):
        assert len(boxes) == len(truth) and np.all(scores > 0.99)  # one box per opacity
        if len(truth):
            order = np.lexsort(truth.T[::-1])
            np.testing.assert_allclose(boxes[np.lexsort(boxes.T[::-1])], truth[order], atol=0.5)
    silent = detections_of(predictions, CFG.with_score_threshold(0.9999999))
    assert all(len(boxes) == 0 for boxes, _ in silent)
