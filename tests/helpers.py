"""Small helpers shared by tests (not fixtures)."""

import numpy as np


def random_boxes_xyxy(rng: np.random.Generator, n: int, extent: float = 100.0) -> np.ndarray:
    """`(n, 4)` valid xyxy boxes inside `[0, extent]^2`."""
    top_left = rng.uniform(0, extent * 0.8, size=(n, 2))
    size = rng.uniform(1.0, extent * 0.5, size=(n, 2))
    return np.concatenate([top_left, top_left + size], axis=1).astype(np.float32)
