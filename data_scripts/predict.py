"""Run a trained RetinaNet on DICOM files or folders: heatmap PNGs, detections, submission.

    python data_scripts/predict.py runs/cpu data/synthetic/stage_2_test_images out/
    python data_scripts/predict.py runs/full one.dcm two.dcm out/ --score-threshold 0.4
    python data_scripts/predict.py runs/full $RETINANET_DATA_DIR/stage_2_test_images out/ \\
        --no-heatmaps
    python data_scripts/predict.py runs/seed0 runs/seed1 runs/seed2 images/ out/   # ensemble

Streams through the files with a progress bar on a terminal (redirected to a file, a plain
line every `--log-every` files instead): each image's heatmap PNG (heatmap over the
X-ray, detections dashed) and its rows of `detections.csv` (patientId, confidence, x, y, width,
height in original pixels, one row per box) are written as soon as it is done. At the end,
`submission.csv` (Kaggle format) has one row for every input file. A file that cannot be read
gets an empty submission row and a line in `rejects.csv`; the run still exits 0, and fails only
if no file at all could be read. The score threshold is the run's own
(`score_threshold.json`, chosen by train.py) unless `--score-threshold` says otherwise; a run
trained with an image head also gates by its image-level probability (`--gate-threshold`
overrides the saved gate, `--no-gate` turns it off). `--flip-tta` averages each image's
prediction with its mirror image's.

Several run folders before the inputs (each a folder with `config.json`) are ensembled: the
models, trained with the same configuration (different seeds, say), are averaged anchor by
anchor before NMS (`inference.ensemble_predictions`, Chapter 7). Their thresholds were chosen
for each model alone, so the ensemble uses their median unless `--score-threshold` (and
`--gate-threshold`) give the ensemble's own, chosen on validation data.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

matplotlib.use("Agg")
from tqdm import tqdm  # noqa: E402

from retinanet_lib.config import RetinaNetConfig  # noqa: E402
from retinanet_lib.predict import iter_predictions, submission_table  # noqa: E402
from retinanet_lib.rejects import RejectLog  # noqa: E402
from retinanet_lib.train import CONFIG_FILE, THRESHOLD_FILE, load_trained_model  # noqa: E402
from retinanet_lib.viz import HeatmapWriter  # noqa: E402

DETECTION_COLUMNS = ["patientId", "confidence", "x", "y", "width", "height"]


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


class FileProgress:
    """A tqdm bar on a terminal; redirected to a file (a scheduler, CI, nohup), one plain line
    every `every` files and at the end, with no carriage return or escape code."""

    def __init__(self, total: int, every: int) -> None:
        self.total, self.every, self.count = total, max(1, every), 0
        self.bar = tqdm(total=total, unit="image") if sys.stderr.isatty() else None

    def update(self, count: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(count)
            return
        before, self.count = self.count, self.count + count
        if count and (self.count // self.every > before // self.every or self.count == self.total):
            print(f"{self.count} of {self.total} files done", flush=True)

    def __enter__(self) -> FileProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.bar is not None:
            self.bar.close()


def split_runs(items: list[str]) -> tuple[list[str], list[str]]:
    """The leading run folders (folders holding a `config.json`) and the rest."""
    count = 0
    while count < len(items) and (Path(items[count]) / CONFIG_FILE).is_file():
        count += 1
    return items[:count], items[count:]


def load_ensemble(workdirs: list[str]) -> tuple[list, RetinaNetConfig, str]:
    """The runs' models, their shared config (decode settings: the median of theirs) and a
    sentence saying where the thresholds came from.

    Raises:
        ValueError: If the runs were trained with configurations that differ in more than
            the seed (their anchors or heads would not line up).
    """
    loaded = [load_trained_model(workdir) for workdir in workdirs]
    models, configs = [m for m, _ in loaded], [c for _, c in loaded]
    if len(models) == 1:
        return models, configs[0], ""

    def shape(cfg: RetinaNetConfig) -> dict:
        values = cfg.to_dict()
        values.pop("decode")
        values["train"].pop("seed")
        return values

    for workdir, cfg in zip(workdirs[1:], configs[1:], strict=True):
        if shape(cfg) != shape(configs[0]):
            raise ValueError(
                f"{workdir} was trained with another configuration than {workdirs[0]}; "
                "an ensemble needs the same model, input size and anchors."
            )
    scores = [cfg.decode.score_threshold for cfg in configs]
    gates = [cfg.decode.gate_threshold for cfg in configs]
    gate = float(np.median(gates)) if None not in gates else None
    decode = dataclasses.replace(
        configs[0].decode, score_threshold=float(np.median(scores)), gate_threshold=gate
    )
    note = f"the median of the {len(models)} runs' own"
    return models, dataclasses.replace(configs[0], decode=decode), note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "items",
        nargs="+",
        metavar="RUN... INPUT... OUTPUT",
        help="one or more training folders (config.json + best.weights.h5; several are "
        "ensembled), DICOM files or folders, then the output folder",
    )
    parser.add_argument("--score-threshold", type=float, default=None)
    parser.add_argument(
        "--gate-threshold",
        type=float,
        default=None,
        help="image-level gate: images below it keep no box (default: the run's saved gate)",
    )
    parser.add_argument("--no-gate", action="store_true", help="no image-level gating")
    parser.add_argument(
        "--flip-tta",
        action="store_true",
        help="also predict on each mirrored image and average (flip test-time augmentation)",
    )
    parser.add_argument("--no-heatmaps", action="store_true", help="skip the heatmap PNGs")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dpi", type=int, default=80)
    parser.add_argument(
        "--log-every",
        type=int,
        default=100,
        help="without a terminal: a plain progress line every N files (default 100)",
    )
    args = parser.parse_args(argv)
    workdirs, rest = split_runs(args.items)
    if not workdirs:
        print(f"error: {args.items[0]} is no training folder (no {CONFIG_FILE})", file=sys.stderr)
        return 1
    *inputs, output = rest
    if not inputs:
        parser.error("give at least one input and an output folder")
    try:
        paths = collect_dicoms(inputs)
        model, cfg, ensemble_note = load_ensemble(workdirs)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    decode_cfg = cfg.decode
    has_thresholds = all((Path(w) / THRESHOLD_FILE).is_file() for w in workdirs)
    owner = ensemble_note or "the run's"
    source = f"{owner} {THRESHOLD_FILE}"
    if args.score_threshold is not None:
        decode_cfg = dataclasses.replace(decode_cfg, score_threshold=args.score_threshold)
        source = "--score-threshold"
    elif not has_thresholds:
        source = "the default; the run has no chosen threshold"
    if args.no_gate or args.gate_threshold is not None:
        decode_cfg = dataclasses.replace(decode_cfg, gate_threshold=args.gate_threshold)
    if args.flip_tta:
        decode_cfg = dataclasses.replace(decode_cfg, flip_tta=True)
    if len(model) > 1:
        print(f"ensemble of {len(model)} runs: {', '.join(workdirs)}")
    gate = decode_cfg.gate_threshold
    gated = "" if gate is None else f", image-level gate {gate:.2f}"
    flips = ", flip TTA" if decode_cfg.flip_tta else ""
    print(f"score threshold {decode_cfg.score_threshold:.2f}{gated}{flips} ({source})")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    rejects = RejectLog()
    writer = None if args.no_heatmaps else HeatmapWriter(dpi=args.dpi)
    predictions = iter_predictions(
        model,
        cfg,
        paths,
        decode_cfg,
        batch_size=args.batch_size,
        heatmap_reduce=None if args.no_heatmaps else "mean",
        rejects=rejects,
    )
    done, num_boxes = [], 0
    with (
        open(out / "detections.csv", "w", newline="") as handle,
        FileProgress(len(paths), args.log_every) as progress,
    ):
        detections = csv.writer(handle)
        detections.writerow(DETECTION_COLUMNS)
        for prediction in predictions:
            progress.update(1)
            if writer is not None:
                writer.save(prediction, out / f"{prediction.patient_id}.png")
            for box, score in zip(prediction.boxes_xyxy, prediction.scores, strict=True):
                width, height = box[2:] - box[:2]
                detections.writerow(
                    [
                        prediction.patient_id,
                        f"{score:.4f}",
                        *(f"{v:.1f}" for v in box[:2]),
                        f"{width:.1f}",
                        f"{height:.1f}",
                    ]
                )
            num_boxes += len(prediction.scores)
            done.append(dataclasses.replace(prediction, image=None, heatmap=None))
        progress.update(len(rejects))  # the skipped files count as handled
    submission = submission_table(done, [p.stem for p in paths])
    submission.to_csv(out / "submission.csv", index=False)
    print(
        f"{len(done)} of {len(paths)} images predicted, {num_boxes} detections -> {out}; "
        + rejects.report(out)
    )
    return 0 if done else 1


if __name__ == "__main__":
    raise SystemExit(main())
