import inspect

import pytest

from retinanet_lib import boxes, layers, losses
from retinanet_lib.notebook import show_source


def test_show_source_is_the_library_code_without_its_docstring():
    shown = show_source(boxes.pairwise_iou)
    lines, first = inspect.getsourcelines(boxes.pairwise_iou)
    assert shown.first_line == first and shown.file == "retinanet_lib/boxes.py"
    assert shown.qualified_name == "retinanet_lib.boxes.pairwise_iou"
    assert shown.code.startswith("def pairwise_iou(")
    assert "Intersection over union for every pair" not in shown.code  # docstring dropped
    body = [line for line in "".join(lines).splitlines() if "tf.math.divide_no_nan" in line]
    assert body and body[0] in shown.code
    assert "Intersection over union" in show_source(boxes.pairwise_iou, docstring=True).code


def test_methods_are_dedented_and_rendered_as_wrapping_html():
    shown = show_source(losses.RetinaNetLoss.components)
    assert shown.code.startswith("def components(self")
    html = shown._repr_html_()
    assert "white-space:pre-wrap" in html and "retinanet_lib/losses.py" in html
    assert "RetinaNetLoss.components" in html
    assert repr(shown).startswith("# retinanet_lib/losses.py, line")
    assert "(docstring omitted)" in html
    assert show_source(layers.FeaturePyramid).code.startswith("@keras.saving")


def test_only_library_code_is_shown():
    with pytest.raises(ValueError, match="not defined in retinanet_lib"):
        show_source(inspect.getsource)


@pytest.mark.parametrize(
    ("mode", "smoke", "says_so"),
    [("full", "1", True), ("full", "0", False), ("cpu", "1", False)],
)
def test_setup_says_when_full_mode_runs_the_smoke_setting(
    monkeypatch, capsys, mode, smoke, says_so
):
    from retinanet_lib.config import RUN_MODE_ENV, SMOKE_ENV
    from retinanet_lib.notebook import setup_notebook

    monkeypatch.setenv(RUN_MODE_ENV, mode)
    monkeypatch.setenv(SMOKE_ENV, smoke)
    setup_notebook()
    printed = capsys.readouterr().out
    assert ("ResNet50 from random weights, not ImageNet" in printed) is says_so
    assert "Keras" in printed  # the versions, always
