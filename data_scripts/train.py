"""Train RetinaNet on the RSNA data (real or synthetic) with the chapters' settings.

    python data_scripts/train.py runs/cpu                       # CPU default, synthetic data
    python data_scripts/train.py runs/cpu-seed3 --seed 3        # another training seed
    RETINANET_MODE=full RETINANET_DATA_DIR=/data/rsna python data_scripts/train.py runs/full
    python data_scripts/train.py runs/cpu --epochs 30           # continue a finished run
    python data_scripts/train.py runs/cpu --overwrite           # start again from scratch
    python data_scripts/train.py runs/cpu --export runs/cpu/saved_model
    RETINANET_MODE=full python data_scripts/train.py runs/full-b64 --batch-size 64 \
        --scale-lr --warmup-epochs 1 --mixed-precision mixed_bfloat16      # a modern GPU

Before training, every image file is decoded once in parallel (`--skip-verify` skips this);
if more than `TrainConfig.max_bad_file_fraction` of them are unreadable, training does not
start, and fewer are skipped and listed in WORKDIR/rejects.csv. Re-running the same command
after an interruption resumes from the last finished epoch; on a finished run it says so and
stops, unless asked for more epochs or `--overwrite`. The best weights (lowest validation
loss) end up in WORKDIR/best.weights.h5, with config.json, history.csv, run.json and
TensorBoard logs (tensorboard --logdir WORKDIR/logs). After training, the score threshold
with the best RSNA metric on the validation split is saved in WORKDIR/score_threshold.json;
predict.py uses it. `--export DIR` also writes a SavedModel (see retinanet_lib/export.py).

On a GPU, a larger batch and mixed precision train the blog's setup many times faster than
its batch size 1 in float32 (book/performance.md). `--scale-lr` applies the linear scaling
rule: the configured rates, set for `TrainConfig.base_batch_size` images per step (1 in the
blog's setup, 8 in the CPU default), are multiplied by `batch size / base batch size`; pair it
with a short `--warmup-epochs`. `--positive-image-fraction 0.5` trains on balanced batches:
half of the images drawn have an opacity, whatever their share in the data (Chapter 4).
`--image-head` adds the image-level "any opacity?" output (multi-task, Chapter 7); such a run
saves an image-level gate with its score threshold, both chosen on the validation split, and
predict.py applies both.
`--mixed-precision` stops with a clear error where the hardware cannot train in that
precision (bfloat16 needs an Ampere or newer GPU).

On a terminal Keras shows a progress bar; with the output redirected to a file (a scheduler,
CI, nohup) it prints one plain line per epoch instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from retinanet_lib.config import (  # noqa: E402
    PRECISIONS,
    RetinaNetConfig,
    config_for_mode,
    run_mode_from_env,
)
from retinanet_lib.evaluate import (  # noqa: E402
    GATE_THRESHOLD_GRID,
    choose_thresholds,
    predict_split,
    score_at,
)
from retinanet_lib.export import export_inference_model  # noqa: E402
from retinanet_lib.rejects import TooManyBadFilesError, verify_dicoms  # noqa: E402
from retinanet_lib.splits import load_splits  # noqa: E402
from retinanet_lib.train import (  # noqa: E402
    EpochPrinter,
    PrecisionNotSupportedError,
    RunFinishedError,
    RunFolderBusyError,
    RunMismatchError,
    check_mixed_precision,
    load_trained_model,
    read_run,
    save_score_threshold,
    set_seed,
    train_retinanet,
)


def config_from_args(cfg: RetinaNetConfig, args: argparse.Namespace) -> RetinaNetConfig:
    """`cfg` with the command line's overrides (an option left out keeps the config's value)."""
    options = (
        ("epochs", args.epochs),
        ("batch_size", args.batch_size),
        ("warmup_epochs", args.warmup_epochs),
        ("mixed_precision", args.mixed_precision),
        ("scale_learning_rate", args.scale_lr or None),
        ("seed", args.seed),
        ("max_bad_file_fraction", args.max_bad_fraction),
    )
    overrides = {name: value for name, value in options if value is not None}
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **overrides))
    if args.positive_image_fraction is not None:
        data = dataclasses.replace(cfg.data, positive_image_fraction=args.positive_image_fraction)
        cfg = dataclasses.replace(cfg, data=data)
    if args.image_head:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, image_head=True))
    if args.image_loss_weight is not None:
        loss = dataclasses.replace(cfg.loss, image_loss_weight=args.image_loss_weight)
        cfg = dataclasses.replace(cfg, loss=loss)
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", help="folder for weights, config and logs")
    parser.add_argument("--epochs", type=int, default=None, help="override cfg.train.epochs")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument(
        "--scale-lr",
        action="store_true",
        help="linear scaling rule: rates x batch size / the config's base batch size",
    )
    parser.add_argument("--warmup-epochs", type=float, default=None, help="linear warm-up")
    parser.add_argument(
        "--mixed-precision",
        choices=PRECISIONS,
        default=None,
        help="training precision (default: the config's float32)",
    )
    parser.add_argument("--seed", type=int, default=None, help="training seed (default 0)")
    parser.add_argument(
        "--data-root", default=None, help="an RSNA-layout folder (default: by RETINANET_MODE)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a run in WORKDIR")
    parser.add_argument("--skip-verify", action="store_true", help="no pre-flight file check")
    parser.add_argument(
        "--max-bad-fraction",
        type=float,
        default=None,
        help="largest share of unreadable files to skip (default TrainConfig's 0.01)",
    )
    parser.add_argument("--export", default=None, metavar="DIR", help="also write a SavedModel")
    parser.add_argument(
        "--positive-image-fraction",
        type=float,
        default=None,
        metavar="F",
        help="balanced batches: draw images with an opacity with probability F (0.5: half)",
    )
    parser.add_argument(
        "--image-head",
        action="store_true",
        help='add the image-level "any opacity?" output (multi-task) and gate by it',
    )
    parser.add_argument(
        "--image-loss-weight",
        type=float,
        default=None,
        help="weight of the image head's cross-entropy (default LossConfig's 1.0)",
    )
    args = parser.parse_args(argv)
    mode = run_mode_from_env()
    try:
        cfg = config_from_args(config_for_mode(mode), args)
    except ValueError as error:  # a setting out of range: say which, no traceback
        parser.error(str(error))
    try:
        check_mixed_precision(cfg.train.mixed_precision)
    except PrecisionNotSupportedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    set_seed(cfg.train.seed)
    on_terminal = sys.stdout.isatty()  # progress bars there, plain lines in a file
    splits = load_splits(mode, cfg, args.data_root)
    print(f"mode {mode}, {splits.data_name} data: {splits.labels.summary()}")
    train = cfg.train
    rates = ", ".join(f"{rate:g}" for rate in train.effective_learning_rates)
    print(
        f"batch size {train.batch_size}, learning rates {rates} ({train.optimizer}, warm-up "
        f"{train.warmup_epochs:g} epochs), precision {train.mixed_precision}"
    )
    fraction = cfg.data.positive_image_fraction
    if fraction is not None:
        print(f"balanced batches: {fraction:.0%} of the training images drawn have an opacity")
    if cfg.model.image_head:
        print(f"image-level head, loss weight {cfg.loss.image_loss_weight:g}")
    finished = read_run(args.workdir)
    done = finished is not None and finished["epochs"] >= cfg.train.epochs
    if not args.skip_verify and (args.overwrite or not done):
        paths = splits.train.paths + splits.validation.paths
        bad = verify_dicoms(paths, progress=on_terminal)
        print(f"verify: {bad.report(args.workdir)}")
        try:
            bad.check_fraction(len(paths), cfg.train.max_bad_file_fraction)
        except TooManyBadFilesError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    try:
        result = train_retinanet(
            cfg,
            splits.train,
            splits.validation,
            args.workdir,
            overwrite=args.overwrite,
            verbose=1 if on_terminal else 0,
            extra_callbacks=None if on_terminal else [EpochPrinter(digits=4)],
        )
    except RunFinishedError as error:
        print(error)
        result = None
    except (RunMismatchError, RunFolderBusyError, TooManyBadFilesError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if result is not None:
        print(
            f"trained in {result.seconds:.0f} s; best validation loss "
            f"{min(result.history['val_loss']):.4f}; weights in {args.workdir}/best.weights.h5"
        )
        if len(result.rejects):
            print(f"skipped {len(result.rejects)} unreadable files (listed in rejects.csv)")
        validation = predict_split(result.model, splits.validation, cfg)
        gates = GATE_THRESHOLD_GRID if cfg.model.image_head else (None,)
        threshold, gate, table = choose_thresholds(
            validation.predictions, validation.gt_boxes_xyxy, cfg, gate_thresholds=gates
        )
        chosen_on = (
            f"best RSNA metric on the validation split ({len(validation)} {splits.data_name} "
            "images), grid 0.01..0.90" + (", gate 0.05..0.95 or none" if len(gates) > 1 else "")
        )
        save_score_threshold(args.workdir, threshold, chosen_on, table, gate)
        best = table["rsna_metric"].max()
        gated = f", image-level gate {gate:.2f}" if gate is not None else ""
        print(
            f"score threshold {threshold:.2f}{gated} saved (validation RSNA metric "
            f"{best:.3f}, {splits.data_name} data)"
        )
        images = score_at(
            validation.predictions, validation.gt_boxes_xyxy, cfg, threshold, gate
        ).image_level
        print(
            f"validation, per image (has it an opacity?): recall {images.recall:.3f}, "
            f"precision {images.precision:.3f}, F1 {images.f1:.3f} "
            f"({images.true_positives} found, {images.false_negatives} missed, "
            f"{images.false_positives} false alarms)"
        )
    if args.export:
        model, run_cfg = load_trained_model(args.workdir)
        export_inference_model(model, run_cfg, args.export)
        print(f"SavedModel written to {args.export}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
