import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retinanet_lib.config import SyntheticConfig, TrainConfig, config_for_mode
from retinanet_lib.predict import predict_dicoms, prediction_string, submission_table
from retinanet_lib.synthetic import write_synthetic_rsna
from retinanet_lib.train import load_trained_model

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "data_scripts"))

import predict as predict_cli  # noqa: E402
import train as train_cli  # noqa: E402


def test_prediction_string_hand_values():
    boxes = np.array([[10, 20, 110, 220], [500, 400, 600, 450]], np.float32)
    text = prediction_string(boxes, np.array([0.3, 0.91]))
    assert text == "0.9100 500.0 400.0 100.0 50.0 0.3000 10.0 20.0 100.0 200.0"
    assert prediction_string(np.zeros((0, 4)), np.zeros(0)) == ""
    with pytest.raises(ValueError):
        prediction_string(boxes, np.zeros(1))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-epoch model on a tiny synthetic set, trained through the CLI."""
    base = tmp_path_factory.mktemp("cli")
    data = base / "data"
    write_synthetic_rsna(
        data / "synthetic", SyntheticConfig(num_train=10, num_test=3, seed=1), progress=False
    )
    return base, data


def test_train_and_predict_clis_end_to_end(trained, monkeypatch):
    base, data = trained
    monkeypatch.setenv("RETINANET_DATA_DIR", str(data))
    monkeypatch.setenv("RETINANET_MODE", "cpu")
    arguments = [str(base / "run"), "--epochs", "1", "--batch-size", "4"]
    assert train_cli.main([*arguments, "--data-root", str(data / "synthetic")]) == 0
    out = base / "out"
    test_dir = data / "synthetic" / "stage_2_test_images"
    assert (
        predict_cli.main([str(base / "run"), str(test_dir), str(out), "--score-threshold", "0.0"])
        == 0
    )
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 3
    submission = pd.read_csv(out / "submission.csv", keep_default_na=False)
    assert list(submission.columns) == ["patientId", "PredictionString"]
    assert sorted(submission["patientId"]) == sorted(p.stem for p in test_dir.glob("*.dcm"))
    detections = pd.read_csv(out / "detections.csv")
    assert list(detections.columns) == ["patientId", "confidence", "x", "y", "width", "height"]
    assert (detections[["x", "y"]].to_numpy() >= 0).all()
    assert (detections["x"] + detections["width"] <= 1024 + 1e-3).all()
    assert predict_cli.main([str(base / "missing-run"), str(test_dir), str(out)]) == 1


def test_predict_dicoms_maps_boxes_to_the_original_image(trained, monkeypatch):
    base, data = trained
    monkeypatch.setenv("RETINANET_DATA_DIR", str(data))
    if not (base / "run" / "best.weights.h5").exists():
        pytest.skip("needs the CLI test's model")
    model, cfg = load_trained_model(base / "run")
    paths = sorted((data / "synthetic" / "stage_2_test_images").glob("*.dcm"))
    loose = dataclasses.replace(cfg.decode, score_threshold=0.0, max_detections=5)
    predictions = predict_dicoms(model, cfg, paths, loose, batch_size=2)
    assert [p.patient_id for p in predictions] == [p.stem for p in paths]
    first = predictions[0]
    assert first.image.shape == (256, 256) and first.heatmap.shape == (256, 256)
    assert first.input_to_original_scale == (4.0, 4.0)
    assert len(first.boxes_xyxy) == 5 and (np.diff(first.scores) <= 0).all()
    assert first.boxes_xyxy.max() <= 1024 + 1e-3 and first.boxes_xyxy.min() >= 0
    table = submission_table(predictions)
    assert len(table) == 3 and all(len(s.split()) == 25 for s in table["PredictionString"])


def test_cpu_config_trains_the_small_model():
    cfg = config_for_mode("cpu")
    assert cfg.model.backbone == "small_resnet" and cfg.train == TrainConfig(
        epochs=20, batch_size=8, optimizer="adam", learning_rates=(1e-3, 1e-4), epochs_per_drop=14
    )
