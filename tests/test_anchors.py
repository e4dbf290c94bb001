import math

import numpy as np
import pytest

from retinanet_lib.anchors import (
    anchor_level_ids,
    anchor_shapes_per_level,
    feature_map_sizes,
    generate_anchors,
    num_anchors,
)
from retinanet_lib.boxes import box_area, xyxy_to_center_xywh
from retinanet_lib.config import AnchorConfig


@pytest.mark.parametrize(
    ("size", "expected"), [(128, 3069), (256, 12276), (512, 49104), (1024, 196416)]
)
def test_anchor_counts_for_square_inputs(size, expected):
    cfg = AnchorConfig()
    assert num_anchors(size, size, cfg) == expected
    anchors = generate_anchors(size, size, cfg)
    assert anchors.shape == (expected, 4)
    assert anchors.dtype.name == "float32"


def test_counts_per_level_512():
    # 64^2 + 32^2 + 16^2 + 8^2 + 4^2 = 5,456 locations (blog part 1).
    sizes = feature_map_sizes(512, 512, AnchorConfig())
    assert sizes == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]
    assert sum(h * w for h, w in sizes) == 5456


def test_non_square_and_non_multiple_sizes():
    cfg = AnchorConfig()
    sizes = feature_map_sizes(100, 300, cfg)
    assert sizes == [(13, 38), (7, 19), (4, 10), (2, 5), (1, 3)]
    expected = sum(h * w for h, w in sizes) * 9
    assert generate_anchors(100, 300, cfg).shape == (expected, 4)


def test_shapes_follow_area_and_ratio_formula():
    cfg = AnchorConfig()
    shapes = anchor_shapes_per_level(cfg)  # (5, 9, 2)
    assert shapes.shape == (5, 9, 2)
    for level_index, base in enumerate(cfg.base_sizes):
        k = 0
        for ratio in cfg.aspect_ratios:
            for scale in cfg.scales:
                width, height = shapes[level_index, k]
                assert width * height == pytest.approx((base * scale) ** 2, rel=1e-5)
                assert width / height == pytest.approx(ratio, rel=1e-5)
                k += 1


def test_exact_anchors_of_a_one_level_toy_config():
    cfg = AnchorConfig(levels=(4,), base_sizes=(16.0,), aspect_ratios=(1.0, 4.0), scales=(1.0,))
    anchors = generate_anchors(32, 16, cfg).numpy()  # grid 2 rows x 1 column, 2 shapes
    expected = [
        [0, 0, 16, 16],  # row 0, square, centre (8, 8)
        [-8, 4, 24, 12],  # row 0, ratio 4: width 32, height 8
        [0, 16, 16, 32],  # row 1, square, centre (8, 24)
        [-8, 20, 24, 28],
    ]
    np.testing.assert_allclose(anchors, expected, atol=1e-5)


def test_centres_and_order_against_loop_reference():
    cfg = AnchorConfig()
    size = 128
    anchors = generate_anchors(size, size, cfg).numpy()
    shapes = anchor_shapes_per_level(cfg)
    reference = []
    for level_index, stride in enumerate(cfg.strides):
        cells = math.ceil(size / stride)
        for i in range(cells):
            for j in range(cells):
                for width, height in shapes[level_index]:
                    cx, cy = (j + 0.5) * stride, (i + 0.5) * stride
                    reference.append(
                        [cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2]
                    )
    np.testing.assert_allclose(anchors, np.array(reference), rtol=1e-6, atol=1e-3)


def test_level_ids_align_with_anchors():
    cfg = AnchorConfig()
    ids = anchor_level_ids(256, 256, cfg)
    anchors = generate_anchors(256, 256, cfg)
    assert ids.shape == (12276,)
    areas = box_area(anchors).numpy()
    for level, base in zip(cfg.levels, cfg.base_sizes, strict=True):
        level_areas = areas[ids == level]
        assert level_areas.min() == pytest.approx(base**2, rel=1e-4)
        assert level_areas.max() == pytest.approx((base * 2 ** (2 / 3)) ** 2, rel=1e-4)
    centres = xyxy_to_center_xywh(anchors).numpy()[ids == 3, :2]
    assert centres.min() == 4.0 and centres.max() == 252.0  # (0 + 0.5) * 8 .. (31 + 0.5) * 8


@pytest.mark.parametrize(("height", "width"), [(0, 10), (10, -1), (10.5, 10)])
def test_bad_image_size_raises(height, width):
    with pytest.raises(ValueError, match="Image size"):
        generate_anchors(height, width, AnchorConfig())


def test_fitted_aspect_ratios_are_quantiles_of_width_over_height():
    from retinanet_lib.anchors import fit_aspect_ratios

    # Widths / heights 0.25, 0.5, ..., 1.5 (6 boxes). Linear interpolation puts the 1/6
    # quantile at position 5 * 1/6 = 0.833 between 0.25 and 0.5: 0.25 + 0.833 * 0.25 = 0.458;
    # the median at 0.875; the 5/6 quantile at position 4.167: 1.25 + 0.167 * 0.25 = 1.292.
    ratios = np.array([0.25, 0.5, 0.75, 1.0, 1.25, 1.5])
    boxes = np.column_stack([np.zeros(6), np.zeros(6), ratios * 100, np.full(6, 100.0)])
    assert fit_aspect_ratios(boxes) == (0.46, 0.88, 1.29)
    assert fit_aspect_ratios(boxes, num_ratios=1) == (0.88,)
    with pytest.raises(ValueError):
        fit_aspect_ratios(np.zeros((0, 4)))
    with pytest.raises(ValueError):
        fit_aspect_ratios([[0, 0, 10, 0]])
