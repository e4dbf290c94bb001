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
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from retinanet_lib.anchors import anchor_shapes_per_level, feature_map_sizes
from retinanet_lib.config import AnchorConfig

__all__ = [
    "DENSITY_CMAP",
    "plot_box_centres",
    "plot_label_sets",
    "plot_shares",
    "plot_image_probabilities",
    "plot_variant_scores",
    "draw_architecture",
    "HeatmapWriter",
    "RCNN_STAGES",
    "RCNN_TRAINING",
    "draw_detector_pipelines",
    "draw_boxes",
    "label_boxes",
    "plot_anchor_centers",
    "plot_arm_curves",
    "plot_explanations",
    "plot_nms_before_after",
    "plot_history",
    "show_heatmap",
    "show_image",
]

TensorLike = Any
#: Font size of the architecture diagram's labels (readable at the book's column width).
_DIAGRAM_FONT = 11
#: Opacity of a heatmap over its X-ray, and of a signed (diverging, pale near 0) one.
_HEATMAP_ALPHA = 0.45
_SIGNED_ALPHA = 0.7
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


def label_boxes(
    ax: Axes, boxes_xyxy: TensorLike, texts: list[str], color: str = "yellow", size: float = 8
) -> Axes:
    """Writes one text at the top-left corner of each box, on a dark background.

    Args:
        ax: Target axes (image coordinates).
        boxes_xyxy: `(N, 4)` boxes in `"xyxy"` pixels.
        texts: `N` labels, e.g. scores.
        color: Text colour.
        size: Font size in points.

    Returns:
        `ax`.
    """
    boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
    if len(texts) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(texts)} labels.")
    for (x0, y0, _, _), text in zip(boxes, texts, strict=True):
        ax.text(
            x0,
            y0,
            text,
            color=color,
            fontsize=size,
            va="bottom",
            bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0},
        )
    return ax


def plot_nms_before_after(
    image: TensorLike,
    candidates_xyxy: TensorLike,
    kept_xyxy: TensorLike,
    kept_scores: TensorLike,
    gt_boxes_xyxy: TensorLike,
    figsize: tuple[float, float] = (11.0, 5.6),
) -> Figure:
    """Two panels: the highest-scoring candidate boxes before NMS, and the boxes NMS keeps,
    each labelled with its score; ground truth in red on both.

    Args:
        image: `(H, W)` image.
        candidates_xyxy: `(N, 4)` boxes before NMS (e.g. the 60 best).
        kept_xyxy: `(K, 4)` boxes after the score threshold and NMS.
        kept_scores: `(K,)` their scores.
        gt_boxes_xyxy: `(G, 4)` ground-truth boxes.
        figsize: Figure size in inches.

    Returns:
        The figure.
    """
    candidates = np.asarray(candidates_xyxy).reshape(-1, 4)
    kept = np.asarray(kept_xyxy).reshape(-1, 4)
    fig, axes = plt.subplots(1, 2, figsize=figsize)
    show_image(axes[0], image, title=f"{len(candidates)} highest-scoring boxes, no NMS")
    draw_boxes(axes[0], candidates, color="yellow", linewidth=0.7)
    show_image(axes[1], image, title=f"after the score threshold and NMS: {len(kept)} boxes")
    draw_boxes(axes[1], kept, color="yellow", linewidth=1.5)
    label_boxes(axes[1], kept, [f"{score:.2f}" for score in np.asarray(kept_scores)])
    for ax in axes:
        draw_boxes(ax, gt_boxes_xyxy, color="red", linewidth=2)
    fig.tight_layout()
    return fig


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
        ticks = np.arange(0, image_width + 1, max(stride, image_width // 4))
        ax.set_xticks(ticks)  # cell borders (multiples of the stride): centres sit between
        ax.set_yticks(ticks)
        ax.tick_params(labelsize=7)
        ax.grid(True, linewidth=0.3, alpha=0.5)
    return axes


#: Perceptually uniform, colour-blind safe: the map of every density panel.
DENSITY_CMAP = "cividis"


def plot_shares(
    ax: Axes,
    samples: dict[str, TensorLike],
    bins: TensorLike,
    xlabel: str,
    title: str | None = None,
) -> Axes:
    """Step histograms of several samples, each as the share of its values per bin.

    Args:
        ax: Where to draw.
        samples: Legend label -> `(N_k,)` values; samples of very different sizes compare
            because each is normalised to shares.
        bins: Bin edges.
        xlabel: What the values are, in words.
        title: Panel title.

    Returns:
        `ax`.
    """
    for label, values in samples.items():
        values = np.asarray(values, np.float64)
        weights = np.full(len(values), 1.0 / max(len(values), 1))
        ax.hist(
            values,
            bins=bins,
            weights=weights,
            histtype="step",
            linewidth=1.6,
            label=f"{label} (n = {len(values):,})",
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share per bin")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return ax


def plot_box_centres(
    ax: Axes,
    centre_x: TensorLike,
    centre_y: TensorLike,
    bins: int = 16,
    vmax: float | None = None,
    title: str | None = None,
):
    """Where boxes sit: the share of box centres in each cell of the image, as a map.

    Args:
        ax: Where to draw.
        centre_x: `(N,)` centres across the image, fractions of its width (0 = left edge).
        centre_y: `(N,)` centres down the image, fractions of its height (0 = top).
        bins: Cells per side.
        vmax: Top of the colour scale (give two maps the same one to compare them).
        title: Panel title.

    Returns:
        The image artist, for a colour bar.
    """
    counts, _, _ = np.histogram2d(
        np.asarray(centre_y), np.asarray(centre_x), bins=bins, range=[[0, 1], [0, 1]]
    )
    shares = counts / max(counts.sum(), 1.0)
    artist = ax.imshow(shares, extent=(0, 1, 1, 0), cmap=DENSITY_CMAP, vmin=0, vmax=vmax)
    ax.set_xlabel("across the image (0 = left edge)")
    ax.set_ylabel("down the image (0 = top)")
    if title:
        ax.set_title(title)
    return artist


#: Panels of `plot_label_sets`: column of `label_statistics.box_table`, words, bin edges.
_BOX_PANELS = (
    ("width", "box width (px of a 1024 px image)", np.linspace(0, 600, 16)),
    ("height", "box height (px of a 1024 px image)", np.linspace(0, 1000, 21)),
    ("aspect", "aspect: height / width", np.linspace(0, 5, 21)),
    ("area_fraction", "box area / image area", np.linspace(0, 0.4, 21)),
    ("midline_distance", "centre to midline (of width)", np.linspace(0, 0.5, 21)),
    ("centre_y", "centre down (0 = top)", np.linspace(0, 1, 21)),
)


def plot_label_sets(
    box_tables: dict,
    boxes_per_image: dict[str, TensorLike],
    centre_bins: int = 16,
) -> Figure:
    """Box geometry of label sets side by side: counts, sizes, shapes and where boxes sit.

    Args:
        box_tables: Set name -> `label_statistics.box_table` frame (a 1024 px frame).
        boxes_per_image: Set name -> `(P,)` boxes of each positive image.
        centre_bins: Cells per side of the centre maps.

    Returns:
        A figure, three panels a row: boxes per image, the distributions of `_BOX_PANELS`,
        then one map of box centres per set, on a shared colour scale.
    """
    num_maps = len(box_tables)
    num_panels = 1 + len(_BOX_PANELS) + num_maps
    rows = -(-num_panels // 3)  # three panels a row: readable in a book's column
    fig, grid = plt.subplots(rows, 3, figsize=(9.5, 3.0 * rows), layout="constrained")
    axes = grid.ravel()
    counts = {name: np.minimum(np.asarray(c), 3) for name, c in boxes_per_image.items()}
    plot_shares(axes[0], counts, np.arange(0.5, 4.0), "boxes on an image with any")
    axes[0].set_xticks([1, 2, 3], ["1", "2", "3+"])
    for ax, (column, words, bins) in zip(axes[1:], _BOX_PANELS, strict=False):
        plot_shares(ax, {n: t[column] for n, t in box_tables.items()}, bins, words)
    shares = [
        np.histogram2d(t["centre_y"], t["centre_x"], bins=centre_bins, range=[[0, 1], [0, 1]])[0]
        / max(len(t), 1)
        for t in box_tables.values()
    ]
    vmax = max(float(s.max()) for s in shares)
    map_axes = axes[1 + len(_BOX_PANELS) : num_panels]
    for ax, (name, table) in zip(map_axes, box_tables.items(), strict=True):
        artist = plot_box_centres(
            ax, table["centre_x"], table["centre_y"], centre_bins, vmax, f"{name}: centres"
        )
    fig.colorbar(artist, ax=list(map_axes), label="share of boxes per cell", shrink=0.8)
    for ax in axes[num_panels:]:
        ax.set_visible(False)
    return fig


#: What the blog's heatmap holds: the mean score of the boxes covering a pixel.
HEATMAP_LABEL = "mean box score"


def show_heatmap(
    ax: Axes,
    image: TensorLike,
    heatmap: TensorLike,
    gt_boxes_xyxy: TensorLike | None = None,
    pred_boxes_xyxy: TensorLike | None = None,
    alpha: float = _HEATMAP_ALPHA,
    colorbar: bool = True,
    title: str | None = None,
    vmax: float | None = 1.0,
    label: str = HEATMAP_LABEL,
    vmin: float = 0.0,
    cmap: str = "jet",
) -> Axes:
    """The blog's figure: a map of box scores over the X-ray (red high, blue low).

    The blog calls the map a probability of pneumonia. It is a mean of detector scores: each
    score is a sigmoid output trained by the focal loss, which is not calibrated (a box
    scoring 0.3 is not right 30 % of the time), and a mean over overlapping boxes is not a
    probability of anything. So the colour bar says "score".

    Args:
        ax: Target axes.
        image: `(H, W)` grayscale X-ray.
        heatmap: `(H, W)` box scores in [0, 1] (same pixel grid as `image`).
        gt_boxes_xyxy: Ground-truth boxes, drawn in red; skipped when `None`.
        pred_boxes_xyxy: Detections after NMS, drawn dashed white on a black edge; skipped
            when `None`.
        alpha: Opacity of the heatmap.
        colorbar: Add a colour bar labelled `label` (it shows the real values whatever the
            range).
        title: Axes title.
        vmax: Top of the colour range: 1.0 (absolute), a number, or `None` for this map's own
            maximum (the blog's mean map rarely exceeds a few percent, invisible on 0..1).
        label: Colour-bar label: what the map's values are.
        vmin: Bottom of the colour range (below 0 for a signed map, e.g. occlusion).
        cmap: Matplotlib colour map (a diverging one for a signed map).

    Returns:
        `ax`.
    """
    heatmap = np.asarray(heatmap)
    if vmax is None:
        vmax = max(float(heatmap.max()), _MIN_COLOR_RANGE)
    show_image(ax, image, title=title)
    overlay = ax.imshow(heatmap, cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax)
    if colorbar:
        ax.figure.colorbar(overlay, ax=ax, fraction=0.046, pad=0.02, label=label)
    if gt_boxes_xyxy is not None:
        draw_boxes(ax, gt_boxes_xyxy, color="red", linewidth=2.0)
    if pred_boxes_xyxy is not None:  # a black edge keeps white visible on every colour
        draw_boxes(ax, pred_boxes_xyxy, color="black", linewidth=3.0, alpha=0.7)
        draw_boxes(ax, pred_boxes_xyxy, color="white", linewidth=1.5, linestyle="--")
    _clamp_to_image(ax, heatmap.shape)
    return ax


def _clamp_to_image(ax: Axes, shape: tuple[int, ...]) -> None:
    """Axes limits exactly on the image (boxes beyond the border must not widen them)."""
    ax.set_xlim(-0.5, shape[1] - 0.5)
    ax.set_ylim(shape[0] - 0.5, -0.5)


class HeatmapWriter:
    """Saves one heatmap PNG per prediction, reusing a single figure (fast in long loops).

    Each PNG shows the model-input X-ray as it is, with the detections dashed, and beside it
    the same X-ray under the mean box-score map on its own colour range (the colour bar gives
    the values).

    Args:
        dpi: Resolution of the PNGs.
        figsize: Figure size in inches.
    """

    def __init__(self, dpi: int = 80, figsize: tuple[float, float] = (8.6, 4.2)) -> None:
        self.dpi = dpi
        self.figure = plt.figure(figsize=figsize)

    def save(self, prediction: Any, path: Any) -> None:
        """Draws `prediction` (a `predict.ImagePrediction` with a heatmap) and writes `path`."""
        self.figure.clear()
        plain, overlay = self.figure.subplots(1, 2)
        show_image(plain, prediction.image, title=f"{prediction.patient_id[:13]}: X-ray")
        draw_boxes(
            plain, prediction.boxes_xyxy_input, color="yellow", linewidth=1.5, linestyle="--"
        )
        _clamp_to_image(plain, np.asarray(prediction.image).shape)
        show_heatmap(
            overlay,
            prediction.image,
            prediction.heatmap,
            pred_boxes_xyxy=prediction.boxes_xyxy_input,
            title=HEATMAP_LABEL,
            vmax=None,
        )
        self.figure.savefig(path, dpi=self.dpi, bbox_inches="tight")

    def close(self) -> None:
        plt.close(self.figure)


def _integer_epochs(ax: Axes, num_epochs: int) -> None:
    """Epoch axis from 1 to `num_epochs` with whole-number ticks only."""
    ax.set_xlim(0.5, num_epochs + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


def plot_history(
    ax: Axes, history: dict[str, list[float]], keys: tuple[str, ...] = ("loss", "val_loss")
) -> Axes:
    """Training curves (one line per key) against epochs 1, 2, ..., with integer ticks."""
    num_epochs = 1
    for key in keys:
        values = history.get(key)
        if values:
            ax.plot(np.arange(1, len(values) + 1), values, marker=".", label=key)
            num_epochs = max(num_epochs, len(values))
    _integer_epochs(ax, num_epochs)
    ax.legend()
    return ax


def plot_arm_curves(
    ax: Axes,
    history: Any,
    arms: list[str],
    key: str = "val_loss",
    colors: dict[str, Any] | None = None,
) -> Axes:
    """A loss curve per arm of a study: each seed as a thin line, their median as a thick one
    (a median, so that one seed's spike does not drag the arm's line off the chart).

    Args:
        ax: Target axes.
        history: A table with columns `arm`, `seed`, `epoch` and `key` (a study's
            `<study>_history.csv`).
        arms: The arms to draw, in legend order.
        key: The column to draw (`"val_loss"` or `"loss"`).
        colors: Arm -> colour (default: matplotlib's cycle, in `arms` order).

    Returns:
        `ax`, with a log-scale y-axis (one spike must not flatten the other curves).
    """
    missing = sorted(set(arms) - set(history["arm"]))
    if missing:
        raise ValueError(f"No curves for the arms {missing}.")
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    num_epochs = 1
    for number, arm in enumerate(arms):
        color = colors[arm] if colors is not None else cycle[number % len(cycle)]
        rows = history[history["arm"] == arm]
        curves = rows.pivot(index="epoch", columns="seed", values=key)  # (epochs, seeds)
        ax.plot(curves.index, curves.to_numpy(), color=color, linewidth=0.7, alpha=0.45)
        ax.plot(curves.index, curves.median(axis=1), color=color, linewidth=2.2, label=arm)
        num_epochs = max(num_epochs, int(curves.index.max()))
    ax.set_yscale("log")
    _integer_epochs(ax, num_epochs)
    ax.legend(fontsize=8)
    return ax


def plot_variant_scores(
    ax: Axes, variants: Any, arms: list[str], order: list[str], metric: str = "test_rsna_metric"
) -> Axes:
    """One row per variant (single model, gated, ensemble, ...): each arm's single-model
    seeds as small dots and their mean as a tick, an ensemble's one value as a diamond.

    Args:
        ax: Target axes.
        variants: The winners study's `winners_variants.csv` (`arm`, `variant`, `seeds`,
            `metric`).
        arms: Arms to draw, in legend order (one colour each, offset vertically).
        order: Variants, top to bottom.
        metric: The column drawn on the x-axis.

    Returns:
        `ax`.
    """
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    offsets = np.linspace(-0.25, 0.25, len(arms)) if len(arms) > 1 else np.zeros(1)
    for number, arm in enumerate(arms):
        color = cycle[number % len(cycle)]
        for row, variant in enumerate(order):
            values = variants.loc[
                (variants["arm"] == arm) & (variants["variant"] == variant), metric
            ].to_numpy(float)
            if not len(values):
                continue
            y = row + offsets[number]
            label = arm if row == 0 else None
            if len(values) == 1:  # an ensemble: one model made of the seeds
                ax.plot(values, [y], "D", color=color, markersize=8, label=label)
            else:
                ax.plot(values, np.full(len(values), y), "o", color=color, alpha=0.5, ms=6)
                ax.plot([values.mean()], [y], "|", color=color, ms=18, mew=3, label=label)
    ax.set_yticks(range(len(order)), order)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=len(arms), frameon=False)
    return ax


def plot_image_probabilities(
    ax: Axes, probabilities: TensorLike, has_opacity: TensorLike, gate: float | None = None
) -> Axes:
    """Histograms of images' "any opacity" probabilities, with and without an opacity, on a
    shared set of bins and a log count axis, and the gate (images left of it keep no box) as
    a dashed line."""
    probabilities = np.asarray(probabilities, np.float64)
    has_opacity = np.asarray(has_opacity, bool)
    bins = np.linspace(0.0, 1.0, 21)
    for mask, label, color in (
        (~has_opacity, "no opacity", "tab:blue"),
        (has_opacity, "opacity", "tab:red"),
    ):  # outlines, so that a bar of one image is not hidden behind the other group's
        ax.hist(
            probabilities[mask],
            bins=bins,
            histtype="step",
            linewidth=2,
            color=color,
            label=f"{label} ({mask.sum()})",
        )
    if gate is not None:
        ax.axvline(gate, color="black", linestyle="--", linewidth=1.2, label=f"gate {gate:.2f}")
    ax.set_yscale("log")  # a few images in the middle next to hundreds at the ends
    ax.set_ylim(bottom=0.7)  # a bin of one image stays visible
    ax.set_xlabel("image-level probability")
    ax.set_ylabel("images (log scale)")
    ax.legend()
    return ax


def plot_learning_rates(ax: Axes, rates_per_epoch: TensorLike, title: str | None = None) -> Axes:
    """The learning rate of each epoch as steps (log scale), epochs 1..N with integer ticks."""
    rates = np.asarray(rates_per_epoch, np.float64)
    epochs = np.arange(1, len(rates) + 1)
    ax.step(epochs, rates, where="mid", marker=".")
    ax.set_yscale("log")
    ax.set_ylabel("learning rate")
    _integer_epochs(ax, len(rates))
    if title:
        ax.set_title(title)
    return ax


def plot_anchor_shapes(ax: Axes, cfg: AnchorConfig, level_index: int = 0) -> Axes:
    """The anchor shapes of one pyramid level, drawn around a shared centre.

    Colour gives the aspect ratio, line style the scale. Every other level holds the same
    shapes scaled by its base size (x2 per level in the paper's setup).
    """
    shapes_wh = anchor_shapes_per_level(cfg)[level_index]  # (A, 2)
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(cfg.aspect_ratios)))
    styles = ("-", "--", ":", "-.")
    num_scales = len(cfg.scales)
    for index, (width, height) in enumerate(shapes_wh):
        ratio, scale = divmod(index, num_scales)
        box = np.array([[-width / 2, -height / 2, width / 2, height / 2]])
        label = None
        if scale == 0:
            label = f"ratio {cfg.aspect_ratios[ratio]:g}"
        draw_boxes(
            ax,
            box,
            color=colors[ratio],
            linewidth=1.6,
            linestyle=styles[scale % len(styles)],
            label=label,
        )
    for scale_index, scale in enumerate(cfg.scales):  # legend entries for the line styles
        ax.plot(
            [],
            [],
            color="gray",
            linestyle=styles[scale_index % len(styles)],
            label=f"scale {scale:.2f}",
        )
    ax.plot(0, 0, "k.")
    limit = float(shapes_wh.max()) * 0.6
    ax.set_xlim(-limit, limit)
    ax.set_ylim(limit, -limit)
    ax.set_aspect("equal")
    ax.set_xlabel("pixels")
    ax.legend(loc="upper right", fontsize=8)
    level = cfg.levels[level_index]
    ax.set_title(f"P{level}: base size {cfg.base_sizes[level_index]:g} px")
    return ax


def plot_level_probabilities(
    axes: np.ndarray,
    image: TensorLike,
    maps: list[TensorLike],
    levels: tuple[int, ...],
    gt_boxes_xyxy: TensorLike | None = None,
) -> Any:
    """The input, then each pyramid level's anchor-score map drawn over the image's extent.

    All level panels share one colour range, 0 to 1, so a level that fires stands out from one
    that does not; the ground-truth boxes are drawn on every panel.

    Args:
        axes: `1 + len(levels)` axes.
        image: `(S, S)` model-input image.
        maps: Per level, an `(H_l, W_l)` map of anchor scores (`level_probability_maps`: the
            sigmoid outputs, which are scores, not calibrated probabilities).
        levels: The level numbers (3..7).
        gt_boxes_xyxy: `(G, 4)` ground-truth boxes in model-input pixels, or `None`.

    Returns:
        The image of the last level panel (for a colour bar).
    """
    axes = np.asarray(axes).ravel()
    size = np.asarray(image).shape[0]
    show_image(axes[0], image, title=f"input {size} px")
    extent = (-0.5, size - 0.5, size - 0.5, -0.5)  # the image's own pixel edges
    shown = None
    for ax, level, values in zip(axes[1:], levels, maps, strict=True):
        values = np.asarray(values)
        shown = ax.imshow(values, cmap="magma", vmin=0.0, vmax=1.0, extent=extent)
        ax.set_title(f"P{level}: {values.shape[0]}x{values.shape[1]} cells")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes:
        if gt_boxes_xyxy is not None:
            draw_boxes(ax, gt_boxes_xyxy, color="cyan", linewidth=1.2)
        _clamp_to_image(ax, (size, size))
    return shown


def _show_plain(ax: Axes, image: TensorLike, gt_boxes_xyxy: TensorLike | None) -> None:
    """A gallery's plain X-ray: the image, its ground truth in red, the axes on the image."""
    show_image(ax, image)
    if gt_boxes_xyxy is not None:
        draw_boxes(ax, gt_boxes_xyxy, color="red", linewidth=2.0)
    _clamp_to_image(ax, np.asarray(image).shape)


def plot_heatmap_gallery(
    images: list[TensorLike],
    rows: dict[str, list[TensorLike]],
    titles: list[str],
    gt_boxes_xyxy: list[TensorLike] | None = None,
    pred_boxes_xyxy: list[TensorLike] | None = None,
    panel_size: float = 2.6,
    plain_row: bool = True,
    label: str | dict[str, str] = HEATMAP_LABEL,
) -> Any:
    """A grid of heatmaps: one column per image, one row per kind of map, under a row of the
    plain X-rays (an overlay hides the image it explains).

    Each map row has one colour range, from 0 to the largest value in that row, and one colour
    bar: the images of a row can be compared with each other, and a faint map (the blog's mean
    rarely exceeds a few percent) is still visible.

    Args:
        images: `N` grayscale images.
        rows: Row label -> `N` heatmaps (same pixel grid as the images).
        titles: `N` column titles.
        gt_boxes_xyxy: Optional `N` ground-truth box arrays, drawn red (on the plain row too).
        pred_boxes_xyxy: Optional `N` detection arrays, drawn dashed white on a black edge.
        panel_size: Side of one panel in inches.
        plain_row: Start with a row of the X-rays without any overlay.
        label: Colour-bar label: what the maps' values are; a dict gives each row its own
            (e.g. box scores, Grad-CAM weights and occlusion drops side by side).

    Returns:
        The figure.
    """
    num_images = len(images)
    num_rows = len(rows) + int(plain_row)
    figure, axes = plt.subplots(
        num_rows,
        num_images,
        figsize=(panel_size * num_images + 0.8, panel_size * num_rows),
        squeeze=False,
        layout="constrained",
    )
    if plain_row:
        for column, ax in enumerate(axes[0]):
            truth = None if gt_boxes_xyxy is None else gt_boxes_xyxy[column]
            _show_plain(ax, images[column], truth)
        axes[0][0].set_ylabel("X-ray")
    for row_axes, (row_label, heatmaps) in zip(axes[int(plain_row) :], rows.items(), strict=True):
        vmax = max(max(float(np.max(h)) for h in heatmaps), _MIN_COLOR_RANGE)
        for column, ax in enumerate(row_axes):
            show_heatmap(
                ax,
                images[column],
                heatmaps[column],
                gt_boxes_xyxy=None if gt_boxes_xyxy is None else gt_boxes_xyxy[column],
                pred_boxes_xyxy=None if pred_boxes_xyxy is None else pred_boxes_xyxy[column],
                colorbar=False,
                vmax=vmax,
            )
        row_axes[0].set_ylabel(row_label)
        mappable = row_axes[-1].images[-1]
        bar_label = label.get(row_label, HEATMAP_LABEL) if isinstance(label, dict) else label
        figure.colorbar(mappable, ax=list(row_axes), fraction=0.02, pad=0.01, label=bar_label)
    for ax, title in zip(axes[0], titles, strict=True):
        ax.set_title(title, fontsize=9)
    return figure


def plot_explanations(
    images: list[TensorLike],
    maps: list[dict[str, TensorLike]],
    row_titles: list[str],
    gt_boxes_xyxy: list[TensorLike],
    explained_boxes_xyxy: list[TensorLike],
    labels: dict[str, str],
    panel_size: float = 2.6,
    signed: tuple[str, ...] = (),
) -> Figure:
    """One row per image: the X-ray, then its maps side by side (e.g. the blog's box-score
    map, Grad-CAM, occlusion).

    Each column (one kind of map) has one colour range and one colour bar labelled with what
    its values are, so the rows can be compared with each other: from 0 to the column's
    largest value, or, for the maps named in `signed` (an occlusion map, where covering a
    patch can also *raise* the score), symmetric around 0 on a diverging red-blue scale.

    Args:
        images: `N` grayscale images.
        maps: `N` dicts, map name -> `(H, W)` map; the same names, in the same order, for all.
        row_titles: `N` titles (what the image is, the score explained).
        gt_boxes_xyxy: `N` ground-truth arrays, drawn red.
        explained_boxes_xyxy: `N` arrays of the boxes whose score the maps explain, dashed
            white on a black edge.
        labels: Map name -> colour-bar label.
        panel_size: Side of one panel in inches.
        signed: Names of the maps whose negative values mean something.

    Returns:
        The figure.
    """
    names = list(maps[0])
    if any(list(m) != names for m in maps):
        raise ValueError("Every image needs the same maps, in the same order.")
    figure, axes = plt.subplots(
        len(images),
        len(names) + 1,
        figsize=(panel_size * (len(names) + 1) + 1.2 * len(names), panel_size * len(images)),
        squeeze=False,
        layout="constrained",
    )
    for row, ax in enumerate(axes[:, 0]):
        _show_plain(ax, images[row], gt_boxes_xyxy[row])
        ax.set_ylabel(row_titles[row], fontsize=9)
    for column, name in enumerate(names, start=1):
        if name in signed:  # stronger overlay: the diverging scale is pale near 0
            vmax = max(max(float(np.abs(m[name]).max()) for m in maps), _MIN_COLOR_RANGE)
            vmin, cmap, alpha = -vmax, "RdBu_r", _SIGNED_ALPHA
        else:
            vmax = max(max(float(np.max(m[name])) for m in maps), _MIN_COLOR_RANGE)
            vmin, cmap, alpha = 0.0, "jet", _HEATMAP_ALPHA
        for row, ax in enumerate(axes[:, column]):
            show_heatmap(
                ax,
                images[row],
                np.asarray(maps[row][name]),
                gt_boxes_xyxy=gt_boxes_xyxy[row],
                pred_boxes_xyxy=explained_boxes_xyxy[row],
                colorbar=False,
                vmax=vmax,
                vmin=vmin,
                cmap=cmap,
                alpha=alpha,
            )
        axes[0, column].set_title(name, fontsize=10)
        mappable = axes[-1, column].images[-1]
        figure.colorbar(
            mappable, ax=list(axes[:, column]), fraction=0.05, pad=0.02, label=labels[name]
        )
    axes[0, 0].set_title("X-ray", fontsize=10)
    return figure


def plot_precision_recall(
    ax: Axes, curves: dict[str, tuple[TensorLike, TensorLike]], title: str | None = None
) -> Axes:
    """Precision against recall, one line per curve (e.g. one per loss function)."""
    for label, (recall, precision) in curves.items():
        ax.plot(np.asarray(recall), np.asarray(precision), label=label, drawstyle="steps-post")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
    ax.legend(fontsize=8, loc="lower left")
    if title:
        ax.set_title(title)
    return ax


def plot_seeds(
    ax: Axes,
    table: Any,
    metric: str,
    order: list[str] | None = None,
    by: str = "arm",
    xlim: tuple[float, float] | None = None,
    colors: dict[str, Any] | None = None,
    reference: str | None = None,
) -> Axes:
    """One row per arm: each seed as a dot on the line of its range, the mean as a tick, and
    the mean and range written at the right.

    Args:
        ax: Target axes.
        table: A study table with columns `by`, `seed` and `metric`.
        metric: The column to show.
        order: Arms top to bottom (default: order of first appearance).
        by: The column naming the arm.
        xlim: Axis range; by default the data's range with a margin, so that differences of a
            few hundredths stay visible.
        colors: Arm -> colour (default: one colour for all).
        reference: An arm (e.g. the baseline) whose mean is drawn as a dashed vertical line
            across all rows, so that every other arm is read against it.

    Returns:
        `ax`.
    """
    arms = list(order) if order is not None else list(dict.fromkeys(table[by]))
    if reference is not None:
        if reference not in arms:
            raise ValueError(f"reference arm {reference!r} is not among {arms}.")
        baseline = float(table.loc[table[by] == reference, metric].mean())
        ax.axvline(baseline, color="gray", linestyle="--", linewidth=1, zorder=0)
        ax.text(
            baseline,
            1.0,
            f" {reference}",
            color="gray",
            fontsize=9,
            va="bottom",
            transform=ax.get_xaxis_transform(),
        )
    positions = np.arange(len(arms))[::-1]
    for position, arm in zip(positions, arms, strict=True):
        values = table.loc[table[by] == arm, metric].to_numpy(np.float64)
        mean = float(np.mean(values))
        color = (colors or {}).get(arm, "tab:blue")
        ax.plot([values.min(), values.max()], [position, position], color=color, alpha=0.4)
        ax.plot(values, np.full(len(values), position), "o", color=color, markersize=6)
        ax.plot([mean, mean], [position - 0.3, position + 0.3], color=color, linewidth=2.5)
        spread = f" ({values.min():.2f} to {values.max():.2f})" if len(values) > 1 else ""
        ax.text(
            1.02,
            position,
            f"{mean:.2f}{spread}",
            va="center",
            fontsize=9,
            transform=ax.get_yaxis_transform(),
        )
    if xlim is None:
        low, high = float(table[metric].min()), float(table[metric].max())
        margin = max(0.02, 0.08 * (high - low))
        xlim = (max(0.0, low - margin), min(1.0, high + margin))
    ax.set_yticks(positions, arms)
    ax.set_ylim(-0.6, len(arms) - 0.4)
    ax.set_xlim(*xlim)
    ax.grid(axis="x", linewidth=0.3, alpha=0.6)
    ax.set_xlabel(metric)
    return ax


def _label(
    ax: Axes, x: float, y: float, text: str, color: str, fontsize: int = _DIAGRAM_FONT
) -> None:
    """A rounded, filled text box centred at `(x, y)`."""
    style = {"boxstyle": "round,pad=0.25", "linewidth": 1.2, "facecolor": color}
    ax.text(x, y, text, ha="center", va="center", bbox=style, fontsize=fontsize)


def _arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float], **style) -> None:
    ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "->", **style})


def draw_architecture(
    ax: Axes,
    image_size: int,
    fpn_channels: int,
    num_classes: int = 1,
    backbone_channels: tuple[int, int, int] | None = None,
) -> Axes:
    """Schematic of RetinaNet: backbone C3..C5 -> FPN P3..P7 -> shared class and box heads.

    Each block is labelled with its feature-map size (height x width x channels) for a square
    `image_size` input.

    Args:
        ax: Target axes (about 11 x 6.5 inches reads well in the book).
        image_size: Side of the square input.
        fpn_channels: Channels of P3..P7.
        num_classes: Classes predicted per anchor.
        backbone_channels: Channels of C3, C4, C5 (`model.backbone_channels`); omitted, the
            C blocks show only their size.

    Returns:
        `ax`.
    """
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 6.9)
    ax.axis("off")
    row_height = 1.15
    rows = {level: 0.6 + index * row_height for index, level in enumerate((3, 4, 5, 6, 7))}
    sizes = {level: -(-image_size // 2**level) for level in rows}
    class_head_y, box_head_y = 3.9, 2.1
    for index, (level, y) in enumerate(rows.items()):
        side = sizes[level]
        if level <= 5:
            depth = f"x{backbone_channels[index]}" if backbone_channels else ""
            _label(ax, 1.3, y, f"C{level}\n{side}x{side}{depth}", "#cfe2f3")
            _arrow(ax, (2.05, y), (3.75, y))  # lateral 1x1 convolution
        _label(ax, 4.6, y, f"P{level}\n{side}x{side}x{fpn_channels}", "#d9ead3")
        for head_y in (class_head_y, box_head_y):
            _arrow(ax, (5.5, y), (6.6, head_y), color="gray", alpha=0.6)
    _arrow(ax, (1.3, rows[5] + 0.35), (3.85, rows[6] - 0.1), linestyle="--")  # P6 from C5
    _arrow(ax, (4.6, rows[6] + 0.35), (4.6, rows[7] - 0.35), linestyle="--")  # P7 from P6
    ax.text(
        1.3,
        rows[6] + 0.55,
        "P6, P7 (dashed):\n3x3 conv, stride 2",
        ha="center",
        va="center",
        fontsize=_DIAGRAM_FONT - 1,
    )
    for upper in (4, 5):  # top-down path: P5 -> P4 -> P3 (upsample x2 and add)
        _arrow(ax, (3.55, rows[upper] - 0.25), (3.55, rows[upper - 1] + 0.25), color="tab:green")
    ax.text(
        3.4,
        (rows[3] + rows[4]) / 2,
        "x2 up\n+ add",
        ha="right",
        va="center",
        fontsize=_DIAGRAM_FONT - 1,
        color="tab:green",
    )
    ax.text(2.9, rows[3] - 0.42, "1x1 conv", ha="center", fontsize=_DIAGRAM_FONT - 1)
    _label(
        ax, 7.9, class_head_y, f"class head (shared)\n9 x {num_classes} logits / cell", "#fce5cd"
    )
    _label(ax, 7.9, box_head_y, "box head (shared)\n9 x 4 deltas / cell", "#fce5cd")
    for x, title in ((1.3, "backbone"), (4.6, "feature pyramid"), (7.9, "heads")):
        ax.text(x, 6.55, title, ha="center", fontsize=_DIAGRAM_FONT + 1, weight="bold")
    return ax


#: R-CNN's inference pipeline as the notes describe it (Girshick et al. 2014): one stage per box.
RCNN_STAGES = (
    "image",
    "selective\nsearch:\n~2,000\nproposals",
    "warp each\nto 227\nx 227",
    "AlexNet,\nfine-tuned:\n2,000 passes",
    "SVM per\nclass,\nbox\nregressor",
    "NMS",
)


#: What each pipeline's classifier is trained on, written under its row.
RCNN_TRAINING = (
    "training: batches of 128 regions, 32 positive : 96 background; "
    "SVMs retrained on their hard negatives"
)


def draw_detector_pipelines(
    ax: Axes, num_anchors: int, image_size: int, background_per_positive: float | None = None
) -> Axes:
    """R-CNN's two-stage pipeline above RetinaNet's one-stage pipeline, stage by stage (what
    runs at inference), each with a line on what its classifier is trained on.

    Args:
        ax: Target axes (about 11 x 4.2 inches).
        num_anchors: RetinaNet's anchors at `image_size` (`anchors.num_anchors`).
        image_size: Side of RetinaNet's square input.
        background_per_positive: Measured background anchors per positive one, written on
            RetinaNet's training line when given.

    Returns:
        `ax`.
    """
    retinanet_stages = (
        "image",
        f"resize to\n{image_size}\nx {image_size}",
        "backbone\n+ FPN:\n1 pass",
        f"heads on\nall {num_anchors:,}\nanchors",
        "decode,\nthreshold",
        "NMS",
    )
    retinanet_training = f"training: every one of the {num_anchors:,} anchors is scored"
    if background_per_positive is not None:
        retinanet_training += f", about {background_per_positive:,.0f} background : 1 positive"
    ax.set_xlim(0, 12)
    ax.set_ylim(-0.6, 5.2)
    ax.axis("off")
    rows = (
        (
            3.7,
            "R-CNN (two stages): propose, then classify each region",
            RCNN_STAGES,
            RCNN_TRAINING,
            "#f4cccc",
        ),
        (
            0.6,
            "RetinaNet (one stage): score every anchor at once",
            retinanet_stages,
            retinanet_training,
            "#d9ead3",
        ),
    )
    for y, title, stages, training, color in rows:
        ax.text(0.1, y + 1.15, title, fontsize=_DIAGRAM_FONT + 1, weight="bold", va="center")
        xs = np.linspace(0.7, 11.3, len(stages))
        for index, (x, text) in enumerate(zip(xs, stages, strict=True)):
            _label(ax, x, y, text, color, fontsize=_DIAGRAM_FONT - 1)
            if index:
                _arrow(ax, (xs[index - 1] + 0.8, y), (x - 0.8, y))
        ax.text(0.1, y - 0.95, training, fontsize=_DIAGRAM_FONT - 1, style="italic", va="center")
    return ax
