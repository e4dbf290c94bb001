"""The packed training-target layout, shared by the encoder that writes it and the loss that
reads it.

One image's targets are a `(num_anchors, 5)` float32 tensor: columns 0-3 the box deltas
`(dx, dy, dw, dh) / box_variance`, column 4 the class target (the class id of a positive
anchor, `BACKGROUND_CLASS` or `IGNORE_CLASS`). `encoding.LabelEncoder` writes it;
`losses.RetinaNetLoss` reads it through `split_targets`.

This module uses only `keras.ops`, so the model and the loss run on any Keras backend
(TensorFlow, JAX, PyTorch), for instance on a GPU machine that has JAX but no TensorFlow.
"""

from __future__ import annotations

from typing import Any

from keras import ops

__all__ = ["split_targets"]


def split_targets(targets: Any) -> tuple[Any, Any]:
    """Splits packed targets into box deltas and class targets.

    Args:
        targets: `(..., A, 5)` packed targets (any array or backend tensor).

    Returns:
        box_targets: `(..., A, 4)` float32 box deltas.
        class_targets: `(..., A)` float32 class codes.

    Raises:
        ValueError: If the last axis does not hold 5 values.
    """
    targets = ops.cast(ops.convert_to_tensor(targets), "float32")
    if len(targets.shape) == 0 or targets.shape[-1] != 5:
        raise ValueError(f"targets must have shape (..., A, 5), got {tuple(targets.shape)}.")
    return targets[..., :4], targets[..., 4]
