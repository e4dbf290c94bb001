"""What repeatable training costs: the CPU default's epoch time with and without determinism.

    python data_scripts/benchmark_determinism.py              # 4 epochs per setting
    python data_scripts/benchmark_determinism.py --epochs 6

The studies and the chapters train with `train.set_seed`, which seeds every generator and
turns on `tf.config.experimental.enable_op_determinism()` (kernels that always add in the same
order), and with oneDNN's custom CPU kernels off (`TF_ENABLE_ONEDNN_OPTS=0`, set before
TensorFlow is imported). This script trains the CPU default (synthetic data, the real input
pipeline) for a few epochs in a fresh process per setting:

* seeded only (`keras.utils.set_random_seed`), oneDNN on: TensorFlow's defaults;
* seeded only, oneDNN off;
* deterministic ops, oneDNN off: what the book runs.

It prints the median epoch time after the first epoch (which includes tracing and filling the
image cache) and the final training loss of each setting. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

SETTINGS = {  # name -> (deterministic ops, oneDNN)
    "seeded, oneDNN on (TF defaults)": (False, "1"),
    "seeded, oneDNN off": (False, "0"),
    "deterministic ops, oneDNN off (the book)": (True, "0"),
}

_ONE_RUN = """
import dataclasses, json, sys, time
import keras
import numpy as np
import tensorflow as tf
from retinanet_lib.config import config_for_mode
from retinanet_lib.splits import load_splits
from retinanet_lib.studies import with_seed
from retinanet_lib.train import train_retinanet

deterministic, epochs, workdir = sys.argv[1] == "1", int(sys.argv[2]), sys.argv[3]
keras.utils.set_random_seed(0)
if deterministic:
    tf.config.experimental.enable_op_determinism()
cfg = with_seed(config_for_mode("cpu"), 0)
cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs))
splits = load_splits("cpu", cfg)
times = []

class Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        times.append(time.perf_counter() - self.start)

result = train_retinanet(cfg, splits.train, splits.validation, workdir, verbose=0,
                         tensorboard=False, extra_callbacks=[Timer()])
print(json.dumps({"epoch_seconds": times, "loss": result.history["loss"][-1],
                  "history": result.history}))
"""


def run_setting(deterministic: bool, onednn: str, epochs: int) -> dict:
    """One fresh process: `epochs` epochs of the CPU default; its epoch times and last loss."""
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with tempfile.TemporaryDirectory() as workdir:
        completed = subprocess.run(
            [sys.executable, "-c", _ONE_RUN, str(int(deterministic)), str(epochs), workdir],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per setting (>= 2)")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is not timed)")
    rows = []
    for name, (deterministic, onednn) in SETTINGS.items():
        result = run_setting(deterministic, onednn, args.epochs)
        steady = sorted(result["epoch_seconds"][1:])
        median = steady[len(steady) // 2]
        rows.append((name, median, result["loss"]))
        print(f"{name}: {median:.1f} s per epoch, final loss {result['loss']:.4f}", flush=True)
    reference = rows[0][1]
    for name, median, _ in rows:
        print(f"{name:42s} {median / reference:5.2f} x the TF defaults' epoch time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
