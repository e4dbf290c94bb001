import inspect

import numpy as np
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


def test_glue_writes_what_myst_nb_reads_back(monkeypatch):
    """`notebook.glue` must produce myst-nb's own output format (compared with myst-nb's
    `glue`), and myst-nb's reader must find the value under its name."""
    import IPython.display
    import myst_nb.ext.glue as myst_glue
    import nbformat

    from retinanet_lib.notebook import glue

    shown = []

    def capture(data, raw, metadata):
        shown.append({"data": data, "metadata": metadata})

    monkeypatch.setattr(IPython.display, "display", capture)
    monkeypatch.setattr(myst_glue, "ipy_display", capture)
    glue("val_metric", 0.685)
    myst_glue.glue("val_metric", 0.685, display=False)
    ours, theirs = shown
    assert ours == theirs
    output = nbformat.v4.new_output("display_data", ours["data"], metadata=ours["metadata"])
    cell = nbformat.v4.new_code_cell("", outputs=[output])
    ((name, stored),) = myst_glue.extract_glue_data_cell(cell)
    assert name == "val_metric" and stored["data"]["text/plain"] == "0.685"
    # A NumPy scalar is stored as the number, which the role's format spec can read.
    glue("epoch", np.int64(20))
    glue("loss", np.float32(0.5))
    assert [shown[-2]["data"], shown[-1]["data"]] == [
        {"application/papermill.record/text/plain": "20"},
        {"application/papermill.record/text/plain": "0.5"},
    ]
