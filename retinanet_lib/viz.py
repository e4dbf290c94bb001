"""Plotting helpers. The only module of the library that imports matplotlib.

Every function draws onto an `Axes` it is given and returns it, so chapters compose figures
freely. Boxes are drawn as one `PolyCollection` (no per-box Python loop).
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection

from retinanet_lib.anchors import feature_map_sizes
from retinanet_lib.config import AnchorConfig

__all__ = ["draw_boxes", "plot_anchor_centers", "show_image"]

TensorLike = Any


def _corners_polygons(boxes_xyxy: np.ndarray) -> np.ndarray:
    """`(N, 4)` xyxy -> `(N, 4, 2)` rectangle vertices."""
    x0, y0, x1, y1 = (boxes_xyxy[:, i] for i in range(4))
    return np.stack(
        [
            np.stack([x0, y0], -1),
            np.stack([x1, y0], -1),
            np.stack([x1, y1], -1),
            np.stack([x0, y1], -1),
        ],
        axis=1,
    )


def draw_boxes(
    ax: Axes,
    boxes_xyxy: TensorLike,
    color: str | Any = "red",
    linewidth: float = 1.5,
    linestyle: str = "-",
    alpha: float = 1.0,
    label: str | None = None,
) -> Axes:
    """Draws unfilled rectangles.

    Args:
        ax: Target axes (image coordinates: y grows downwards).
        boxes_xyxy: `(N, 4)` boxes in `"xyxy"` pixels; `N` may be 0.
        color: One colour, or `N` colours.
        linewidth: Line width in points.
        linestyle: Matplotlib line style.
        alpha: Opacity of the lines.
        label: Legend entry for the whole set.

    Returns:
        `ax`.
    """
    boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
    collection = PolyCollection(
        _corners_polygons(boxes),
        facecolors="none",
        edgecolors=color,
        linewidths=linewidth,
        linestyles=linestyle,
        alpha=alpha,
        label=label,
    )
    ax.add_collection(collection)
    return ax


def show_image(ax: Axes, image: TensorLike, title: str | None = None) -> Axes:
    """Shows a grayscale `(H, W)` / `(H, W, 1)` or RGB `(H, W, 3)` image without axes ticks."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return ax


def plot_anchor_centers(
    image_height: int,
    image_width: int,
    cfg: AnchorConfig,
    axes: np.ndarray | None = None,
    markersize: float = 2.0,
) -> np.ndarray:
    """One panel per pyramid level showing where that level's anchors are centred.

    Args:
        image_height: Model input height in pixels.
        image_width: Model input width in pixels.
        cfg: Anchor configuration.
        axes: `len(cfg.levels)` axes to draw on; created in one row if omitted.
        markersize: Size of the centre dots.

    Returns:
        The array of axes.
    """
    if axes is None:
        _, axes = plt.subplots(1, len(cfg.levels), figsize=(3 * len(cfg.levels), 3))
    axes = np.asarray(axes).ravel()
    sizes = feature_map_sizes(image_height, image_width, cfg)
    for ax, level, stride, (rows, cols) in zip(axes, cfg.levels, cfg.strides, sizes, strict=True):
        grid_x, grid_y = np.meshgrid(
            (np.arange(cols) + 0.5) * stride, (np.arange(rows) + 0.5) * stride
        )
        ax.plot(grid_x.ravel(), grid_y.ravel(), ".", markersize=markersize)
        ax.set_xlim(0, image_width)
        ax.set_ylim(image_height, 0)
        ax.set_aspect("equal")
        ax.set_title(f"P{level}: stride {stride}, {rows}x{cols}")
        ax.set_xticks([])
        ax.set_yticks([])
    return axes
