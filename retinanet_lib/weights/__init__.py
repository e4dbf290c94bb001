"""Weights shipped with the library.

`SMALL_RESNET_OPACITY`: the CPU default's small backbone pre-trained on the synthetic
"does this X-ray have an opacity?" source task (`retinanet_lib.pretrain`); a JSON record next
to it says how it was made. Ask for it by name, `ModelConfig(backbone_weights="opacity")`,
so that a run's `config.json` does not depend on where the library is installed.
"""

from pathlib import Path

#: The name `ModelConfig.backbone_weights` accepts for the shipped small-backbone weights.
OPACITY_WEIGHTS_NAME = "opacity"
SMALL_RESNET_OPACITY = Path(__file__).parent / "small_resnet_opacity.weights.h5"
