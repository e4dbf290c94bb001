"""Pre-train the small backbone on the source task and write the weights Chapter 6 transfers.

    python data_scripts/pretrain_backbone.py                  # the shipped weights, again
    python data_scripts/pretrain_backbone.py --out runs/pretrained.weights.h5 --seed 1

The source task is "does this X-ray have an opacity?" on a synthetic set of its own
(`config.PretrainConfig`: 600 images from another generator seed, half of them with an
opacity, generated on first use in `<data>/synthetic_pretrain`). The classifier is the CPU
default's backbone with global pooling and one logit, trained at the CPU default's input size
(256 px) with its augmentation. Without `--out` the weights replace the ones shipped in
`retinanet_lib/weights/` (with a JSON record of how they were made: settings, commit, time and
the classifier's validation scores). About 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retinanet_lib.config import PretrainConfig, config_for_mode  # noqa: E402
from retinanet_lib.pretrain import (  # noqa: E402
    SHIPPED_BACKBONE_WEIGHTS,
    load_pretrain_source,
    pretrain_backbone,
    save_backbone_weights,
)


def _commit() -> str:
    root = Path(__file__).resolve().parent.parent
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
    )
    return head.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=SHIPPED_BACKBONE_WEIGHTS)
    parser.add_argument("--seed", type=int, default=PretrainConfig.seed)
    parser.add_argument("--epochs", type=int, default=PretrainConfig.epochs)
    args = parser.parse_args(argv)
    pretrain_cfg = PretrainConfig(seed=args.seed, epochs=args.epochs)
    cfg = config_for_mode("cpu")
    train, validation = load_pretrain_source(pretrain_cfg)
    print(f"source: {len(train)} training and {len(validation)} validation synthetic images")
    result = pretrain_backbone(cfg, pretrain_cfg, train, validation, verbose=2)
    provenance = {
        "source_task": "image classification: does the X-ray have an opacity?",
        "source_data": "synthetic (retinanet_lib.synthetic), not ImageNet",
        "pretrain_config": dataclasses.asdict(pretrain_cfg),
        "image_size": cfg.image_size,
        "backbone": cfg.model.backbone,
        "small_resnet_widths": list(cfg.model.small_resnet_widths),
        "commit": _commit(),
    }
    path = save_backbone_weights(result, args.out, provenance)
    print(f"validation ({len(validation)} synthetic images): {result.validation}")
    print(f"{result.seconds:.0f} s; weights in {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
