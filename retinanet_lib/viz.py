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

__all__ = [
    "draw_architecture",
    "HeatmapWriter",
    "draw_boxes",
    "plot_anchor_centers",
    "plot_history",
    "show_heatmap",
    "show_image",
]

TensorLike = Any
#: Smallest top of a per-image colour range (an all-zero map would otherwise have none).
_MIN_COLOR_RANGE = 1e-3


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


def show_heatmap(
    ax: Axes,
    image: TensorLike,
    heatmap: TensorLike,
    gt_boxes_xyxy: TensorLike | None = None,
    pred_boxes_xyxy: TensorLike | None = None,
    alpha: float = 0.45,
    colorbar: bool = True,
    title: str | None = None,
    vmax: float | None = 1.0,
) -> Axes:
    """The blog's figure: a probability map over the X-ray (red likely, blue unlikely).

    Args:
        ax: Target axes.
        image: `(H, W)` grayscale X-ray.
        heatmap: `(H, W)` probabilities in [0, 1] (same pixel grid as `image`).
        gt_boxes_xyxy: Ground-truth boxes, drawn in red; skipped when `None`.
        pred_boxes_xyxy: Detections after NMS, drawn dashed white; skipped when `None`.
        alpha: Opacity of the heatmap.
        colorbar: Add a colour bar labelled "probability" (it shows the real values whatever
            the range).
        title: Axes title.
        vmax: Top of the colour range: 1.0 (absolute), a number, or `None` for this map's own
            maximum (the blog's mean map rarely exceeds a few percent, invisible on 0..1).

    Returns:
        `ax`.
    """
    heatmap = np.asarray(heatmap)
    if vmax is None:
        vmax = max(float(heatmap.max()), _MIN_COLOR_RANGE)
    show_image(ax, image, title=title)
    overlay = ax.imshow(heatmap, cmap="jet", alpha=alpha, vmin=0.0, vmax=vmax)
    if colorbar:
        ax.figure.colorbar(overlay, ax=ax, fraction=0.046, pad=0.02, label="probability")
    if gt_boxes_xyxy is not None:
        draw_boxes(ax, gt_boxes_xyxy, color="red", linewidth=2.0)
    if pred_boxes_xyxy is not None:
        draw_boxes(ax, pred_boxes_xyxy, color="white", linewidth=1.5, linestyle="--")
    _clamp_to_image(ax, heatmap.shape)
    return ax


def _clamp_to_image(ax: Axes, shape: tuple[int, ...]) -> None:
    """Axes limits exactly on the image (boxes beyond the border must not widen them)."""
    ax.set_xlim(-0.5, shape[1] - 0.5)
    ax.set_ylim(shape[0] - 0.5, -0.5)


class HeatmapWriter:
    """Saves one heatmap PNG per prediction, reusing a single figure (fast in long loops).

    Each PNG shows the model-input X-ray, the heatmap on its own colour range (the colour bar
    gives the values) and the detections dashed.

    Args:
        dpi: Resolution of the PNGs.
        figsize: Figure size in inches.
    """

    def __init__(self, dpi: int = 80, figsize: tuple[float, float] = (5.0, 4.2)) -> None:
        self.dpi = dpi
        self.figure, self.ax = plt.subplots(figsize=figsize)

    def save(self, prediction: Any, path: Any) -> None:
        """Draws `prediction` (a `predict.ImagePrediction` with a heatmap) and writes `path`."""
        self.figure.clear()
        self.ax = self.figure.add_subplot()
        show_heatmap(
            self.ax,
            prediction.image,
            prediction.heatmap,
            pred_boxes_xyxy=prediction.boxes_xyxy_input,
            title=prediction.patient_id[:13],
            vmax=None,
        )
        self.figure.savefig(path, dpi=self.dpi, bbox_inches="tight")

    def close(self) -> None:
        plt.close(self.figure)


def plot_history(
    ax: Axes, history: dict[str, list[float]], keys: tuple[str, ...] = ("loss", "val_loss")
) -> Axes:
    """Training curves (one line per key) against epochs, starting at 1."""
    for key in keys:
        values = history.get(key)
        if values:
            ax.plot(np.arange(1, len(values) + 1), values, marker=".", label=key)
    ax.set_xlabel("epoch")
    ax.legend()
    return ax


def _label(ax: Axes, x: float, y: float, text: str, color: str) -> None:
    """A rounded, filled text box centred at `(x, y)`."""
    style = {"boxstyle": "round,pad=0.25", "linewidth": 1.2, "facecolor": color}
    ax.text(x, y, text, ha="center", va="center", bbox=style, fontsize=9)


def _arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float], **style) -> None:
    ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "->", **style})


def draw_architecture(ax: Axes, image_size: int, fpn_channels: int, num_classes: int = 1) -> Axes:
    """Schematic of RetinaNet: backbone C3..C5 -> FPN P3..P7 -> shared class and box heads.

    Each block is labelled with its feature-map size for a square `image_size` input.
    """
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 6.4)
    ax.axis("off")
    row_height = 1.15
    rows = {level: 0.6 + index * row_height for index, level in enumerate((3, 4, 5, 6, 7))}
    sizes = {level: -(-image_size // 2**level) for level in rows}
    class_head_y, box_head_y = 3.9, 2.1
    for level, y in rows.items():
        side = sizes[level]
        if level <= 5:
            _label(ax, 1.3, y, f"C{level}\n{side}x{side}", "#cfe2f3")
            _arrow(ax, (1.85, y), (3.85, y))  # lateral 1x1 convolution
        _label(ax, 4.6, y, f"P{level}\n{side}x{side}x{fpn_channels}", "#d9ead3")
        for head_y in (class_head_y, box_head_y):
            _arrow(ax, (5.45, y), (6.6, head_y), color="gray", alpha=0.6)
    _arrow(ax, (1.85, rows[5] + 0.3), (4.6, rows[6] - 0.3), linestyle="--")  # P6 from C5
    _arrow(ax, (4.6, rows[6] + 0.3), (4.6, rows[7] - 0.3), linestyle="--")  # P7 from ReLU(P6)
    for upper in (4, 5):  # top-down path: P5 -> P4 -> P3 (upsample x2 and add)
        _arrow(ax, (3.55, rows[upper] - 0.25), (3.55, rows[upper - 1] + 0.25), color="tab:green")
    ax.text(3.35, 1.75, "x2 up\n+ add", ha="right", va="center", fontsize=8, color="tab:green")
    _label(
        ax, 7.9, class_head_y, f"class head (shared)\n9 x {num_classes} logits / cell", "#fce5cd"
    )
    _label(ax, 7.9, box_head_y, "box head (shared)\n9 x 4 deltas / cell", "#fce5cd")
    for x, title in ((1.3, "backbone"), (4.6, "feature pyramid"), (7.9, "heads")):
        ax.text(x, 6.3, title, ha="center", fontsize=10, weight="bold")
    return ax
