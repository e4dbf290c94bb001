"""The CPU default's loss history and optimizer step count, epoch by epoch, as JSON.

    python data_scripts/log_cpu_default_history.py --stop-after 10     # seed 0, epochs 1-10

Trains the CPU default (synthetic data, the 30-epoch schedule, `train.set_seed`: the
chapters' and studies' setting) in this process and stops after `--stop-after` epochs, so the
first epochs of the full run can be compared with a stored history (e.g. the transfer study's
"from scratch" rows, `retinanet_lib/results/transfer_history.csv`) under whatever else the
machine is doing. The results page's "One configuration, one number" compares such runs made
beside other training processes (`retinanet_lib/results/chapter5_contention.csv`).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def main(argv: list[str] | None = None) -> int:
    import keras

    from retinanet_lib.config import config_for_mode
    from retinanet_lib.splits import load_splits
    from retinanet_lib.studies import with_seed
    from retinanet_lib.train import set_seed, train_retinanet

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stop-after", type=int, default=10, help="epochs to train (>= 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.stop_after < 1:
        parser.error("--stop-after must be at least 1")
    set_seed(args.seed)
    cfg = with_seed(config_for_mode("cpu"), args.seed)
    splits = load_splits("cpu", cfg)
    steps: list[int] = []

    class StopAfter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            steps.append(int(self.model.optimizer.iterations.numpy()))
            if epoch + 1 >= args.stop_after:
                self.model.stop_training = True

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        result = train_retinanet(
            cfg,
            splits.train,
            splits.validation,
            workdir,
            verbose=0,
            tensorboard=False,
            extra_callbacks=[StopAfter()],
        )
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "optimizer_steps": steps, "history": result.history}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
