"""Which machine settings change TensorFlow's float32 results? Fingerprints of two kernels.

    python data_scripts/check_kernel_bits.py              # this process, as it is
    python data_scripts/check_kernel_bits.py --compare    # each setting in a fresh process
    python data_scripts/check_kernel_bits.py --compare --steps 60 --busy 2
    python data_scripts/check_kernel_bits.py --qemu EPYC Skylake-Server

Computes two float32 results that training repeats millions of times, with the book's
settings (oneDNN's custom operations off, deterministic ops on): a matrix product
(256 x 2048 times 2048 x 64) and the weight gradient of a 3 x 3 convolution (8 images of
64 x 64 x 32). It prints a fingerprint of each (the first hex digits of a SHA-1 of the
result's bytes: equal fingerprints, equal bits) and, run alone, the matrix product's largest
error against float64 (each setting is about as accurate: they round differently, none wrongly).

`--compare` runs the same computation in fresh processes: on the machine as it is, with
oneDNN's kernels limited to AVX2 or to SSE4.1 (`ONEDNN_MAX_CPU_ISA`: TensorFlow's CPU matrix
products call oneDNN's sgemm even with its custom operations off, and it picks its kernel by
instruction set), and with one intra-op thread (`TF_NUM_INTRAOP_THREADS=1`: the blocks a
product is split into depend on the thread count). `--steps N` also trains Chapter 4's live
run (plain cross-entropy, seed 0, synthetic data) for N steps in each of these processes and
prints its first and last loss; `--busy K` adds a run of the machine as it is beside K
processes that keep the cores busy. `--qemu MODEL ...` adds runs under
`qemu-x86_64 -cpu MODEL` (Debian's `qemu-user`), which emulates another processor: its
instruction set (AVX2 at most) and the cache sizes it reports, from which Eigen sizes the
blocks of every product (no training there: emulation is far too slow for it).

A fingerprint that differs between two settings means the same seed trains to other last
bits there, and over many steps to another run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

#: The book's TensorFlow settings (the chapters set them before importing TensorFlow).
BOOK_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}
#: Settings `--compare` runs, as changes to the environment.
SETTINGS = {
    "this machine": {},
    "ONEDNN_MAX_CPU_ISA=AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "ONEDNN_MAX_CPU_ISA=SSE41": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "TF_NUM_INTRAOP_THREADS=1": {"TF_NUM_INTRAOP_THREADS": "1"},
}
FINGERPRINT_DIGITS = 8
SEED = 0
KEYS = ("matrix product", "conv weight gradient")


def fingerprints() -> dict[str, str]:
    """The two results' fingerprints in this process (TensorFlow imported here)."""
    os.environ.update({k: v for k, v in BOOK_ENV.items() if k not in os.environ})
    import numpy as np
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(SEED)
    a = rng.normal(size=(256, 2048)).astype(np.float32)
    b = rng.normal(size=(2048, 64)).astype(np.float32)
    product = tf.matmul(a, b).numpy()
    images = tf.constant(rng.normal(size=(8, 64, 64, 32)).astype(np.float32))
    kernel = tf.Variable(rng.normal(size=(3, 3, 32, 32)).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.nn.conv2d(images, kernel, 1, "SAME") ** 2)
    gradient = tape.gradient(loss, kernel).numpy()
    error = np.abs(product - a.astype(np.float64) @ b.astype(np.float64)).max()

    def digest(values: np.ndarray) -> str:
        return hashlib.sha1(values.tobytes()).hexdigest()[:FINGERPRINT_DIGITS]

    return {KEYS[0]: digest(product), KEYS[1]: digest(gradient), "error": f"{error:.2e}"}


def first_steps_loss(steps: int) -> tuple[float, float]:
    """The losses at steps 1 and `steps` of Chapter 4's live run (plain CE, prior, seed 0)."""
    import dataclasses

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from retinanet_lib import config, studies
    from retinanet_lib.splits import load_splits

    cfg = config.config_for_mode("cpu")
    ce = dataclasses.replace(cfg, loss=config.LossConfig(alpha=None, gamma=0.0))
    losses = studies.first_steps_losses(ce, load_splits("cpu", cfg), SEED, steps)
    return losses[0], losses[-1]


def _run(env_changes: dict[str, str], prefix: list[str], steps: int) -> dict[str, str]:
    env = {**os.environ, **BOOK_ENV, **env_changes}
    command = [*prefix, sys.executable, __file__, "--one", "--steps", str(steps)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _spin() -> None:
    while True:
        pass


def _busy_run(processes: int, steps: int) -> dict[str, str]:
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(processes)]
    for spinner in spinners:
        spinner.start()
    try:
        return _run({}, [], steps)
    finally:
        for spinner in spinners:
            spinner.terminate()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", action="store_true", help="each setting, fresh process")
    parser.add_argument("--steps", type=int, default=0, help="also train N steps (Chapter 4)")
    parser.add_argument("--busy", type=int, default=0, help="a run beside K busy processes")
    parser.add_argument("--qemu", nargs="*", default=[], metavar="MODEL", help="emulated CPUs")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        found = fingerprints()
        if args.steps:
            first_loss, last_loss = first_steps_loss(args.steps)
            found["loss"] = f"{first_loss:.5f} {last_loss:.5f}"
        print(json.dumps(found))
        return 0
    if not (args.compare or args.qemu or args.busy):
        for name, value in fingerprints().items():
            print(f"{name:22s} {value}")
        return 0
    runs = {name: ([], env, args.steps) for name, env in SETTINGS.items()} if args.compare else {}
    if args.qemu:
        emulator = shutil.which("qemu-x86_64")
        if emulator is None:
            parser.error("--qemu needs qemu-x86_64 (Debian: apt-get install qemu-user).")
        for model in args.qemu:
            runs[f"qemu {model}"] = ([emulator, "-cpu", model], {}, 0)
    results = {name: _run(env, prefix, steps) for name, (prefix, env, steps) in runs.items()}
    if args.busy:
        results[f"this machine, {args.busy} busy processes"] = _busy_run(args.busy, args.steps)
    first = next(iter(results.values()))
    loss_header = f"  loss: step 1, {args.steps}" if args.steps else ""
    print(f"{'setting':40s} {'product':>9s} {'conv grad':>9s}{loss_header}")
    for name, found in results.items():
        marks = [found[key] + (" " if found[key] == first[key] else "*") for key in KEYS]
        loss = f"  {found['loss']}" if "loss" in found else ""
        print(f"{name:40s} {marks[0]:>9s} {marks[1]:>9s}{loss}")
    print("* other bits than the first row's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
