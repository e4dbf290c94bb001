"""Run a trained RetinaNet on DICOM files or folders: heatmap PNGs, detections, submission.

    python data_scripts/predict.py runs/cpu data/synthetic/stage_2_test_images out/
    python data_scripts/predict.py runs/full one.dcm two.dcm out/ --score-threshold 0.4

Writes to the output folder: one PNG per image (heatmap over the X-ray, detections dashed),
detections.csv (patientId, confidence, x, y, width, height in original pixels, one row per box)
and submission.csv in the Kaggle format.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from retinanet_lib.predict import predict_dicoms, submission_table  # noqa: E402
from retinanet_lib.train import load_trained_model  # noqa: E402
from retinanet_lib.viz import show_heatmap  # noqa: E402


def collect_dicoms(inputs: list[str]) -> list[Path]:
    """Files as given, folders expanded to their *.dcm files (sorted)."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths.extend(sorted(item.glob("*.dcm")))
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(f"{item} is neither a DICOM file nor a folder.")
    if not paths:
        raise FileNotFoundError(f"No .dcm files in {inputs}.")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", help="training folder (config.json + best.weights.h5)")
    parser.add_argument("inputs", nargs="+", help="DICOM files or folders, then the output folder")
    parser.add_argument("--score-threshold", type=float, default=None)
    parser.add_argument("--dpi", type=int, default=80)
    args = parser.parse_args(argv)
    *inputs, output = args.inputs
    if not inputs:
        parser.error("give at least one input and an output folder")
    try:
        paths = collect_dicoms(inputs)
        model, cfg = load_trained_model(args.workdir)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    decode_cfg = cfg.decode
    if args.score_threshold is not None:
        decode_cfg = dataclasses.replace(decode_cfg, score_threshold=args.score_threshold)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    predictions = predict_dicoms(model, cfg, paths, decode_cfg)
    rows = []
    for prediction in predictions:
        scale_x, scale_y = prediction.input_to_original_scale
        to_input = [1 / scale_x, 1 / scale_y, 1 / scale_x, 1 / scale_y]
        fig, ax = plt.subplots(figsize=(5, 4.2))
        show_heatmap(
            ax,
            prediction.image,
            prediction.heatmap,
            pred_boxes_xyxy=prediction.boxes_xyxy * to_input,
            title=prediction.patient_id[:13],
        )
        fig.savefig(out / f"{prediction.patient_id}.png", dpi=args.dpi, bbox_inches="tight")
        plt.close(fig)
        for box, score in zip(prediction.boxes_xyxy, prediction.scores, strict=True):
            rows.append((prediction.patient_id, float(score), *box[:2], *(box[2:] - box[:2])))
    columns = ["patientId", "confidence", "x", "y", "width", "height"]
    pd.DataFrame(rows, columns=columns).to_csv(out / "detections.csv", index=False)
    submission_table(predictions).to_csv(out / "submission.csv", index=False)
    print(f"{len(predictions)} images, {len(rows)} detections -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
