"""Does a busy machine change a training run? The same run alone and beside busy processes.

    python data_scripts/check_repeatability_under_load.py            # 4 epochs, 2 busy
    python data_scripts/check_repeatability_under_load.py --epochs 6 --busy 4

Trains the CPU default (synthetic data, the real input pipeline, deterministic ops, oneDNN
off: the book's setting) for a few epochs in a fresh process, first on an otherwise idle
machine and then while `--busy` processes spin on the CPU (by default one per core), and
prints whether the two runs logged the same losses at every epoch, bit for bit. A result
that depended on how the operating system schedules threads would differ here.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_determinism import run_setting  # noqa: E402


def _spin() -> None:
    while True:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="busy processes")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    alone = run_setting(deterministic=True, onednn="0", epochs=args.epochs)
    alone_seconds = time.perf_counter() - start
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for spinner in spinners:
        spinner.start()
    try:
        start = time.perf_counter()
        loaded = run_setting(deterministic=True, onednn="0", epochs=args.epochs)
        loaded_seconds = time.perf_counter() - start
    finally:
        for spinner in spinners:
            spinner.terminate()
    for name, run, seconds in (("alone", alone, alone_seconds), ("busy", loaded, loaded_seconds)):
        losses = ", ".join(f"{v:.5f}" for v in run["history"]["val_loss"])
        print(f"{name} ({seconds:.0f} s), validation loss: {losses}")
    same = alone["history"] == loaded["history"]
    print(
        f"{args.busy} busy processes: every logged loss (to all digits) "
        + ("identical, bit for bit" if same else "DIFFERS")
    )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
