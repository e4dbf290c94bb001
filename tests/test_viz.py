import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from retinanet_lib import viz  # noqa: E402
from retinanet_lib.config import AnchorConfig  # noqa: E402


def test_gallery_rows_share_one_colour_range_from_zero_to_their_maximum():
    images = [np.zeros((16, 16), np.uint8)] * 3
    faint = [np.full((16, 16), v) for v in (0.01, 0.04, 0.02)]
    strong = [np.full((16, 16), v) for v in (0.9, 0.1, 0.0)]
    boxes = [np.array([[2.0, 2.0, 8.0, 8.0]])] * 3
    figure = viz.plot_heatmap_gallery(
        images, {"mean": faint, "weighted": strong}, ["a", "b", "c"], gt_boxes_xyxy=boxes
    )
    axes = np.array(figure.axes[:9]).reshape(3, 3)
    plain = axes[0]  # the X-rays as they are, above the overlays
    assert all(len(ax.images) == 1 and len(ax.collections) == 1 for ax in plain)
    assert plain[0].get_ylabel() == "X-ray"
    limits = [[ax.images[-1].get_clim() for ax in row] for row in axes[1:]]
    assert all(len(ax.images) == 2 for row in axes[1:] for ax in row)  # image + overlay
    assert all(clim == (0.0, 0.04) for clim in limits[0])  # the faint row is still visible
    assert all(clim == (0.0, 0.9) for clim in limits[1])
    assert [ax.get_title() for ax in axes[0]] == ["a", "b", "c"]
    bars = figure.axes[9:]
    assert len(bars) == 2  # nine panels and one colour bar per map row
    assert {bar.get_ylabel() for bar in bars} == {viz.HEATMAP_LABEL} == {"mean box score"}
    plt.close(figure)
    without = viz.plot_heatmap_gallery(images, {"mean": faint}, ["a", "b", "c"], plain_row=False)
    assert len(without.axes) == 4
    plt.close(without)


def test_heatmap_writer_puts_the_plain_x_ray_beside_the_overlay(tmp_path):
    from types import SimpleNamespace

    prediction = SimpleNamespace(
        image=np.zeros((32, 32), np.uint8),
        heatmap=np.full((32, 32), 0.2),
        boxes_xyxy_input=np.array([[4.0, 4.0, 20.0, 20.0]]),
        patient_id="patient-0000000000",
    )
    writer = viz.HeatmapWriter(dpi=40)
    writer.save(prediction, tmp_path / "a.png")
    plain, overlay, bar = writer.figure.axes
    assert len(plain.images) == 1 and len(overlay.images) == 2
    assert bar.get_ylabel() == "mean box score"
    writer.save(prediction, tmp_path / "b.png")  # the figure is reused, not stacked
    assert len(writer.figure.axes) == 3
    writer.close()
    assert (tmp_path / "a.png").stat().st_size > 1000


def test_heatmap_axes_stay_on_the_image_and_auto_range_uses_the_maximum():
    figure, ax = plt.subplots()
    boxes = np.array([[-5, -5, 40, 40]])  # reaches past the 32 px image
    viz.show_heatmap(ax, np.zeros((32, 32)), np.full((32, 32), 0.03), boxes, vmax=None)
    assert ax.get_xlim() == (-0.5, 31.5) and ax.get_ylim() == (31.5, -0.5)
    assert ax.images[-1].get_clim() == (0.0, 0.03)
    plt.close(figure)


def test_history_and_learning_rates_have_integer_epoch_ticks():
    figure, (left, right) = plt.subplots(1, 2)
    viz.plot_history(left, {"loss": [3.0, 2.0, 1.5], "val_loss": [3.5, 2.5, 2.0]})
    assert left.get_xlim() == (0.5, 3.5)
    ticks = [t for t in left.get_xticks() if 0.5 <= t <= 3.5]
    assert ticks == [1, 2, 3]
    viz.plot_learning_rates(right, [1e-3] * 4 + [1e-4] * 2)
    assert right.get_xlim() == (0.5, 6.5) and right.get_yscale() == "log"
    plt.close(figure)


def test_anchor_shapes_panel_draws_every_shape_once():
    figure, ax = plt.subplots()
    viz.plot_anchor_shapes(ax, AnchorConfig())
    assert len(ax.collections) == 9
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "ratio 0.5",
        "ratio 1",
        "ratio 2",
        "scale 1.00",
        "scale 1.26",
        "scale 1.59",
    ]
    plt.close(figure)


def test_seed_plot_shows_every_seed_its_range_and_the_mean():
    table = pd.DataFrame(
        {"arm": ["a", "a", "b"], "seed": [0, 1, 0], "rsna_metric": [0.2, 0.4, 0.5]}
    )
    figure, ax = plt.subplots()
    viz.plot_seeds(ax, table, "rsna_metric", order=["b", "a"])
    labels = {t.get_text(): t.get_position()[1] for t in ax.get_yticklabels()}
    assert labels["b"] > labels["a"]  # the first arm of `order` is drawn on top
    dots = [line for line in ax.lines if line.get_marker() == "o"]
    seeds = sorted(float(x) for line in dots for x in line.get_xdata())
    assert seeds == [0.2, 0.4, 0.5]
    texts = [t.get_text() for t in ax.texts]
    assert "0.30 (0.20 to 0.40)" in texts and "0.50" in texts
    low, high = ax.get_xlim()
    assert 0.15 <= low < 0.2 and 0.5 < high <= 0.55  # zoomed on the data, not 0 to 1
    plt.close(figure)


def test_level_probabilities_share_0_to_1_and_cover_the_image():
    figure, axes = plt.subplots(1, 3)
    maps = [np.full((4, 4), 0.2), np.full((2, 2), 0.9)]
    boxes = np.array([[8.0, 8.0, 20.0, 30.0]])
    shown = viz.plot_level_probabilities(axes, np.zeros((32, 32)), maps, (3, 4), boxes)
    assert [ax.images[-1].get_clim() for ax in axes[1:]] == [(0.0, 1.0)] * 2
    assert [ax.images[-1].get_extent() for ax in axes[1:]] == [[-0.5, 31.5, 31.5, -0.5]] * 2
    assert all(ax.get_xlim() == (-0.5, 31.5) for ax in axes)
    assert [ax.get_title() for ax in axes[1:]] == ["P3: 4x4 cells", "P4: 2x2 cells"]
    assert all(len(ax.collections) == 1 for ax in axes)  # the box on every panel
    assert shown is axes[2].images[-1]
    plt.close(figure)


def test_architecture_diagram_labels_sizes_and_channels():
    fig, ax = plt.subplots(figsize=(11, 6.5))
    viz.draw_architecture(ax, 256, 64, 1, backbone_channels=(32, 64, 128))
    texts = [t.get_text() for t in ax.texts]
    assert "C3\n32x32x32" in texts and "C5\n8x8x128" in texts
    assert "P7\n2x2x64" in texts and "P3\n32x32x64" in texts
    # Column headers stay inside the axes, clear of the top block (P7 at y 5.2).
    headers = [t for t in ax.texts if t.get_text() in ("backbone", "feature pyramid", "heads")]
    assert len(headers) == 3 and all(5.9 < t.get_position()[1] < ax.get_ylim()[1] for t in headers)
    plt.close(fig)


def test_plot_seeds_draws_the_reference_mean_across_the_rows():
    table = pd.DataFrame(
        {
            "arm": ["base"] * 3 + ["new"] * 3,
            "seed": [0, 1, 2] * 2,
            "m": [0.4, 0.5, 0.6, 0.7] * 1 + [0.8, 0.9],
        }
    )
    fig, ax = plt.subplots()
    viz.plot_seeds(ax, table, "m", reference="base")
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_xdata()[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="reference"):
        viz.plot_seeds(ax, table, "m", reference="missing")
    plt.close(fig)


def test_detector_pipelines_show_both_pipelines_stage_by_stage():
    figure, ax = plt.subplots(figsize=(11, 4.2))
    viz.draw_detector_pipelines(ax, num_anchors=49104, image_size=512, background_per_positive=990)
    texts = [t.get_text() for t in ax.texts]
    training = [t for t in texts if t.startswith("training:")]
    assert training == [
        viz.RCNN_TRAINING,
        "training: every one of the 49,104 anchors is scored, about 990 background : 1 positive",
    ]
    assert sum("R-CNN" in t for t in texts) == 1 and sum("RetinaNet" in t for t in texts) == 1
    boxed = [t for t in ax.texts if t.get_bbox_patch() is not None]
    assert len(boxed) == 2 * len(viz.RCNN_STAGES)  # one box per stage, both rows
    assert any("2,000" in t.get_text() for t in boxed)  # proposals and passes
    assert any("49,104" in t.get_text() for t in boxed)
    figure.canvas.draw()  # no two boxes of a row overlap at this size
    renderer = figure.canvas.get_renderer()
    extents = [t.get_bbox_patch().get_window_extent(renderer) for t in boxed]
    rows = {}
    for box in extents:  # two rows, told apart by their centre height
        rows.setdefault(round((box.y0 + box.y1) / 200), []).append(box)
    assert sorted(len(row) for row in rows.values()) == [6, 6]
    for row in rows.values():
        row.sort(key=lambda b: b.x0)
        assert all(left.x1 <= right.x0 for left, right in zip(row, row[1:], strict=False))
    plt.close(figure)


def test_gallery_rows_can_name_what_their_values_are():
    images = [np.zeros((16, 16), np.uint8)] * 2
    rows = {
        "box score": [np.full((16, 16), 0.2)] * 2,
        "Grad-CAM": [np.full((16, 16), 1.0)] * 2,
        "occlusion": [np.full((16, 16), 0.05)] * 2,
    }
    labels = {"Grad-CAM": "relative weight", "occlusion": "score drop"}
    figure = viz.plot_heatmap_gallery(images, rows, ["a", "b"], label=labels)
    bars = figure.axes[8:]
    assert [bar.get_ylabel() for bar in bars] == [
        "mean box score",
        "relative weight",
        "score drop",
    ]
    plt.close(figure)


def test_nms_figure_labels_every_kept_box_with_its_score():
    image = np.zeros((32, 32), np.uint8)
    candidates = np.array([[1, 1, 10, 10], [2, 2, 11, 11], [20, 20, 30, 30]], np.float32)
    kept, scores = candidates[[0, 2]], np.array([0.91, 0.234])
    gt = np.array([[1, 1, 9, 9]], np.float32)
    figure = viz.plot_nms_before_after(image, candidates, kept, scores, gt)
    before, after = figure.axes
    assert "3 highest-scoring" in before.get_title() and "2 boxes" in after.get_title()
    assert [t.get_text() for t in after.texts] == ["0.91", "0.23"]
    assert [t.get_position() for t in after.texts] == [(1.0, 1.0), (20.0, 20.0)]
    assert len(before.collections) == len(after.collections) == 2  # boxes + ground truth
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        viz.label_boxes(after, kept, ["x"])
    plt.close(figure)


def test_explanations_put_one_image_per_row_and_one_scale_per_map():
    images = [np.zeros((16, 16), np.uint8)] * 3
    maps = [
        {"box score": np.full((16, 16), 0.01 * (k + 1)), "occlusion": np.full((16, 16), -0.2)}
        for k in range(3)
    ]
    maps[1]["occlusion"] = np.linspace(-0.1, 0.4, 256).reshape(16, 16)
    boxes = [np.array([[2, 2, 8, 8]], np.float32)] * 3
    labels = {"box score": "mean box score", "occlusion": "score drop"}
    figure = viz.plot_explanations(images, maps, ["a", "b", "c"], boxes, boxes, labels)
    panels, bars = figure.axes[:9], figure.axes[9:]
    assert [bar.get_ylabel() for bar in bars] == ["mean box score", "score drop"]
    assert [panels[row * 3].get_ylabel() for row in range(3)] == ["a", "b", "c"]
    assert [ax.get_title() for ax in panels[:3]] == ["X-ray", "box score", "occlusion"]
    score_limits = [panels[row * 3 + 1].images[-1].get_clim() for row in range(3)]
    assert score_limits == [(0.0, pytest.approx(0.03))] * 3  # one range for the column
    assert panels[5].images[-1].get_clim() == (0.0, pytest.approx(0.4))  # unsigned: from 0
    plt.close(figure)
    figure = viz.plot_explanations(
        images, maps, ["a", "b", "c"], boxes, boxes, labels, signed=("occlusion",)
    )
    occlusion = figure.axes[5].images[-1]
    assert occlusion.get_clim() == (pytest.approx(-0.4), pytest.approx(0.4))  # symmetric
    assert occlusion.get_array().min() == pytest.approx(-0.1)  # a rise is kept, not clipped
    assert occlusion.get_cmap().name == "RdBu_r"
    assert figure.axes[4].images[-1].get_clim() == (0.0, pytest.approx(0.03))
    plt.close(figure)
    with pytest.raises(ValueError, match="same maps"):
        viz.plot_explanations(
            images[:2],
            [maps[0], {"occlusion": maps[0]["occlusion"]}],
            ["a", "b"],
            boxes[:2],
            boxes[:2],
            labels,
        )


def test_arm_curves_draw_every_seed_and_the_median_per_arm():
    import pandas as pd

    epochs = np.arange(1, 5)
    rows = [
        {"arm": arm, "seed": seed, "epoch": e, "val_loss": base + seed**3 + 1.0 / e}
        for arm, base in (("a", 1.0), ("b", 5.0))
        for seed in (0, 1, 2)
        for e in epochs
    ]
    figure, ax = plt.subplots()
    viz.plot_arm_curves(ax, pd.DataFrame(rows), ["b", "a"])
    lines = ax.get_lines()
    assert len(lines) == 8  # per arm: 3 seeds, then the mean
    median_b = lines[3].get_ydata()  # seeds add 0, 1 and 8: the median adds 1 (the mean 3)
    np.testing.assert_allclose(median_b, 5.0 + 1.0 + 1.0 / epochs)
    assert lines[0].get_color() == lines[3].get_color() != lines[7].get_color()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["b", "a"]
    assert ax.get_yscale() == "log" and ax.get_xlim() == (0.5, 4.5)
    with pytest.raises(ValueError, match="'c'"):
        viz.plot_arm_curves(ax, pd.DataFrame(rows), ["c"])
    plt.close(figure)
