import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retinanet_lib.config import SyntheticConfig
from retinanet_lib.export import SERVING_OUTPUTS, export_inference_model
from retinanet_lib.predict import (
    iter_predictions,
    predict_dicoms,
    prediction_string,
    submission_table,
)
from retinanet_lib.rejects import RejectLog
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
    """A 1-epoch model on a tiny synthetic set with one truncated training DICOM, trained
    through the CLI; and a test folder holding one garbage file."""
    base = tmp_path_factory.mktemp("cli")
    data = base / "data"
    write_synthetic_rsna(data, SyntheticConfig(num_train=12, num_test=4, seed=1), progress=False)
    truncated = sorted((data / "stage_2_train_images").glob("*.dcm"))[0]
    truncated.write_bytes(truncated.read_bytes()[:3000])
    garbage = sorted((data / "stage_2_test_images").glob("*.dcm"))[0]
    garbage.write_bytes(b"this is not a DICOM file")
    arguments = [str(base / "run"), "--epochs", "1", "--batch-size", "4"]
    arguments += ["--data-root", str(data), "--max-bad-fraction", "0.1"]
    assert train_cli.main(arguments) == 0
    return base, data, truncated, garbage


def test_training_skips_and_reports_a_truncated_dicom(trained):
    base, _, truncated, _ = trained
    rejects = pd.read_csv(base / "run" / "rejects.csv")
    assert rejects["file"].tolist() == [str(truncated)]
    assert (base / "run" / "score_threshold.json").is_file()
    assert (base / "run" / "run.json").is_file()


def test_training_refuses_to_start_with_too_many_bad_files(trained, capsys):
    base, data, _, _ = trained
    arguments = [str(base / "run2"), "--epochs", "1", "--data-root", str(data)]
    assert train_cli.main([*arguments, "--max-bad-fraction", "0.05"]) == 1  # 1 of 12 > 5 %
    assert "cannot be read" in capsys.readouterr().err
    assert not (base / "run2" / "best.weights.h5").exists()


def test_predict_cli_uses_the_runs_own_threshold_by_default(trained, capsys):
    import json

    base, data, _, _ = trained
    saved = json.loads((base / "run" / "score_threshold.json").read_text())["score_threshold"]
    out = base / "out-default-threshold"
    test_dir = data / "stage_2_test_images"
    assert predict_cli.main([str(base / "run"), str(test_dir), str(out), "--no-heatmaps"]) == 0
    printed = capsys.readouterr().out
    assert f"score threshold {saved:.2f} (the run's score_threshold.json)" in printed
    detections = pd.read_csv(out / "detections.csv")
    assert (detections["confidence"] >= saved - 1e-4).all()


def test_predict_cli_streams_and_names_the_bad_file(trained, monkeypatch):
    base, data, _, garbage = trained
    out = base / "out"
    test_dir = data / "stage_2_test_images"
    arguments = [str(base / "run"), str(test_dir), str(out), "--score-threshold", "0.0"]
    assert predict_cli.main(arguments) == 0
    assert len(sorted(out.glob("*.png"))) == 3  # the garbage file has none
    submission = pd.read_csv(out / "submission.csv", keep_default_na=False)
    assert list(submission.columns) == ["patientId", "PredictionString"]
    assert sorted(submission["patientId"]) == sorted(p.stem for p in test_dir.glob("*.dcm"))
    empty = submission.set_index("patientId").loc[garbage.stem, "PredictionString"]
    assert empty == ""
    rejects = pd.read_csv(out / "rejects.csv")
    assert rejects["file"].tolist() == [str(garbage)]
    detections = pd.read_csv(out / "detections.csv")
    assert list(detections.columns) == ["patientId", "confidence", "x", "y", "width", "height"]
    assert len(detections) == 3 * 20  # threshold 0: max_detections per readable image
    assert (detections[["x", "y"]].to_numpy() >= 0).all()
    assert (detections["x"] + detections["width"] <= 1024 + 0.1).all()
    no_heatmaps = base / "out-no-heatmaps"
    assert predict_cli.main([*arguments[:2], str(no_heatmaps), "--no-heatmaps"]) == 0
    assert not list(no_heatmaps.glob("*.png"))
    assert predict_cli.main([str(base / "run"), str(garbage), str(base / "all-bad")]) == 1
    assert predict_cli.main([str(base / "missing-run"), str(test_dir), str(out)]) == 1


def test_predictions_map_boxes_to_the_original_image(trained):
    base, data, _, garbage = trained
    model, cfg = load_trained_model(base / "run")
    paths = sorted((data / "stage_2_test_images").glob("*.dcm"))
    loose = dataclasses.replace(cfg.decode, score_threshold=0.0, max_detections=5)
    rejects = RejectLog()
    predictions = predict_dicoms(model, cfg, paths, loose, batch_size=2, rejects=rejects)
    assert [p.patient_id for p in predictions] == [p.stem for p in paths if p != garbage]
    assert str(garbage) in rejects
    first = predictions[0]
    assert first.image.shape == (256, 256) and first.heatmap.shape == (256, 256)
    assert first.input_to_original_scale == (4.0, 4.0)
    assert len(first.boxes_xyxy) == 5 and (np.diff(first.scores) <= 0).all()
    assert first.boxes_xyxy.max() <= 1024 + 1e-3 and first.boxes_xyxy.min() >= 0
    np.testing.assert_allclose(first.boxes_xyxy_input * 4, first.boxes_xyxy, rtol=1e-6)
    table = submission_table(predictions, [p.stem for p in paths])
    assert len(table) == 4 and table.set_index("patientId").loc[garbage.stem].item() == ""
    assert all(len(s.split()) == 25 for s in table["PredictionString"] if s)
    with pytest.raises(Exception, match="DICOM"):  # without a log, a bad file raises
        list(iter_predictions(model, cfg, [garbage]))


def test_exported_savedmodel_loads_without_the_library_and_matches(trained, tmp_path):
    base, data, _, garbage = trained
    model, cfg = load_trained_model(base / "run")
    cfg = dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, score_threshold=0.0))
    paths = [p for p in sorted((data / "stage_2_test_images").glob("*.dcm")) if p != garbage]
    predictions = predict_dicoms(model, cfg, paths)
    export_inference_model(model, cfg, tmp_path / "saved", with_heatmap=True)
    np.save(tmp_path / "images.npy", np.stack([p.image for p in predictions]))
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np

        class NoLibrary:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "retinanet_lib":
                    raise ImportError("retinanet_lib must not be needed")

        sys.meta_path.insert(0, NoLibrary())
        import tensorflow as tf

        detector = tf.saved_model.load({str(tmp_path / "saved")!r})
        outputs = detector.serve(np.load({str(tmp_path / "images.npy")!r}))
        np.savez({str(tmp_path / "outputs.npz")!r}, **{{k: v.numpy() for k, v in outputs.items()}})
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = np.load(tmp_path / "outputs.npz")
    assert sorted(outputs) == sorted([*SERVING_OUTPUTS, "heatmap"])
    for index, prediction in enumerate(predictions):
        count = int(outputs["num_detections"][index])
        assert count == len(prediction.scores) == 20
        np.testing.assert_allclose(
            outputs["boxes_xyxy"][index, :count], prediction.boxes_xyxy_input, atol=1e-3
        )
        np.testing.assert_allclose(outputs["scores"][index, :count], prediction.scores, atol=1e-5)
        np.testing.assert_allclose(outputs["heatmap"][index], prediction.heatmap, atol=1e-5)
    with pytest.raises(FileExistsError):
        export_inference_model(model, cfg, tmp_path / "saved")


def test_predict_cli_logs_plain_lines_when_not_on_a_terminal(trained, tmp_path):
    """Captured to a file, as a scheduler would: no progress bar, no carriage returns or
    colour codes; one line every --log-every files and one at the end."""
    base, data, _, _ = trained
    log = tmp_path / "predict.log"
    command = [sys.executable, str(ROOT / "data_scripts" / "predict.py"), str(base / "run")]
    command += [str(data / "stage_2_test_images"), str(tmp_path / "out"), "--no-heatmaps"]
    with log.open("w") as handle:
        result = subprocess.run([*command, "--log-every", "2"], stdout=handle, stderr=handle)
    text = log.read_text()
    assert result.returncode == 0, text[-3000:]
    assert "\r" not in text and "\x1b" not in text
    progress = [line for line in text.splitlines() if line.endswith("files done")]
    # Three readable files, then the garbage one counted as handled at the end.
    assert progress == ["2 of 4 files done", "4 of 4 files done"]


def test_file_progress_prints_every_n_files_and_the_last(capsys):
    progress = predict_cli.FileProgress(total=5, every=2)
    for _ in range(4):
        progress.update(1)
    progress.update(1)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["2 of 5 files done", "4 of 5 files done", "5 of 5 files done"]


@pytest.fixture(scope="module")
def more_runs(trained):
    """A second run of the same configuration (seed 1) and a run with an image head."""
    base, data, _, _ = trained
    common = ["--epochs", "1", "--batch-size", "4", "--data-root", str(data)]
    common += ["--max-bad-fraction", "0.1", "--skip-verify"]
    assert train_cli.main([str(base / "run-seed1"), "--seed", "1", *common]) == 0
    assert train_cli.main([str(base / "run-head"), "--image-head", *common]) == 0
    return base / "run-seed1", base / "run-head"


def test_predict_cli_ensembles_several_runs_into_one_submission(trained, more_runs, capsys):
    base, data, _, garbage = trained
    second, _ = more_runs
    test_dir = data / "stage_2_test_images"
    out = base / "out-ensemble"
    arguments = [str(base / "run"), str(second), str(test_dir), str(out), "--no-heatmaps"]
    assert predict_cli.main([*arguments, "--score-threshold", "0.0"]) == 0
    assert "ensemble of 2 runs" in capsys.readouterr().out
    submission = pd.read_csv(out / "submission.csv", keep_default_na=False)
    assert len(submission) == 4  # one row per input file, the unreadable one empty
    # The CLI's boxes are the library's ensemble of the two models, not either model's.
    models = [load_trained_model(path)[0] for path in (base / "run", second)]
    _, cfg = load_trained_model(base / "run")
    loose = dataclasses.replace(cfg.decode, score_threshold=0.0)
    paths = [p for p in sorted(test_dir.glob("*.dcm")) if p != garbage]
    expected = predict_dicoms(models, cfg, paths, loose, heatmap_reduce=None)
    single = predict_dicoms(models[0], cfg, paths, loose, heatmap_reduce=None)
    detections = pd.read_csv(out / "detections.csv")
    for prediction, alone in zip(expected, single, strict=True):
        rows = detections[detections["patientId"] == prediction.patient_id]
        np.testing.assert_allclose(rows["confidence"], prediction.scores, atol=1e-4)
        assert not np.allclose(alone.scores, prediction.scores, atol=1e-4)
    # --flip-tta: the same ensemble, each image averaged with its mirror image.
    flipped_out = base / "out-ensemble-flip"
    flip_arguments = [*arguments[:3], str(flipped_out), "--no-heatmaps", "--flip-tta"]
    assert predict_cli.main([*flip_arguments, "--score-threshold", "0.0"]) == 0
    assert "flip TTA" in capsys.readouterr().out
    flip_cfg = dataclasses.replace(cfg, decode=dataclasses.replace(loose, flip_tta=True))
    expected_flip = predict_dicoms(models, flip_cfg, paths, flip_cfg.decode, heatmap_reduce=None)
    flipped = pd.read_csv(flipped_out / "detections.csv")
    for prediction in expected_flip:
        rows = flipped[flipped["patientId"] == prediction.patient_id]
        np.testing.assert_allclose(rows["confidence"], prediction.scores, atol=1e-4)
    # Without --score-threshold: the median of the runs' own thresholds.
    assert predict_cli.main(arguments[:3] + [str(base / "out-ensemble-2"), "--no-heatmaps"]) == 0
    assert "median of the 2 runs' own" in capsys.readouterr().out


def test_predict_cli_refuses_to_ensemble_different_models_and_gates_a_head_run(
    trained, more_runs, capsys
):
    import json

    base, data, _, _ = trained
    _, head = more_runs
    test_dir = data / "stage_2_test_images"
    mixed = [str(base / "run"), str(head), str(test_dir), str(base / "out-mixed")]
    assert predict_cli.main(mixed) == 1
    assert "another configuration" in capsys.readouterr().err
    saved = json.loads((head / "score_threshold.json").read_text())
    assert "gate_threshold" in saved
    _, cfg = load_trained_model(head)
    assert cfg.model.image_head and cfg.decode.gate_threshold == saved["gate_threshold"]
    model, _ = load_trained_model(head)
    paths = sorted(test_dir.glob("*.dcm"))[1:]  # the readable ones
    loose = dataclasses.replace(cfg.decode, score_threshold=0.0, gate_threshold=None)
    open_ = predict_dicoms(model, cfg, paths, loose, heatmap_reduce=None)
    probabilities = sorted(p.image_probability for p in open_)
    assert len(set(probabilities)) == 3  # the head tells the images apart
    threshold = (probabilities[0] + probabilities[1]) / 2  # gates exactly one image
    out = base / "out-head"
    gate = ["--score-threshold", "0.0", "--gate-threshold", f"{threshold:.6f}", "--no-heatmaps"]
    assert predict_cli.main([str(head), str(test_dir), str(out), *gate]) == 0
    assert f"image-level gate {threshold:.2f}" in capsys.readouterr().out
    detections = pd.read_csv(out / "detections.csv")
    kept = sorted(p.patient_id for p in open_ if p.image_probability >= threshold)
    assert sorted(set(detections["patientId"])) == kept and len(kept) == 2
