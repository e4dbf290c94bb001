"""The chapters read well where people run them: short code lines, short setup, no test
plumbing in view, solutions hidden everywhere, the library's own code on the page."""

import ast
import importlib
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
MAX_LINE = 79  # the rendered column at a 1280 px window
MAX_SETUP_STATEMENTS = 12
MAX_SETUP_NAMES = 18  # modules and a few functions, not 20-odd names
#: One thread per chapter: "about 40 cells"; engineering asides live on the Running at scale page.
MAX_CELLS = 45


def notebook(path):
    return nbformat.read(path, as_version=4)


def code_cells(path):
    return [c for c in notebook(path).cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_code_lines_fit_the_rendered_column(path):
    long = [
        (index, line)
        for index, cell in enumerate(code_cells(path))
        for line in cell.source.splitlines()
        if len(line) > MAX_LINE
    ]
    assert not long, f"{len(long)} code lines over {MAX_LINE} characters: {long[:3]}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_no_test_plumbing_in_view(path):
    for cell in code_cells(path):
        assert "NBVAL" not in cell.source, "use the nbval-ignore-output cell tag"
        tags = cell.metadata.get("tags", [])
        # nbval directives, Jupyter Book's hide/remove tags, and its layout tag for a wide
        # figure ("full-width": the figure also takes the right margin).
        allowed = ("nbval-", "hide-", "remove-", "full-width")
        assert all(tag.startswith(allowed) for tag in tags), tags


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_setup_is_short_and_the_install_cell_is_collapsed(path):
    cells = code_cells(path)
    install, setup = cells[0], cells[1]
    assert "%pip install" in install.source
    assert "hide-input" in install.metadata.get("tags", [])
    assert install.metadata.get("jupyter", {}).get("source_hidden") is True  # JupyterLab
    assert install.metadata.get("cellView") == "form"  # Colab
    assert "setup_notebook()" in setup.source
    statements = ast.parse(setup.source).body  # a wrapped import is one statement
    assert len(statements) <= MAX_SETUP_STATEMENTS, f"{len(statements)} statements"
    names = [
        alias.name
        for node in ast.parse(setup.source).body
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert len(names) <= MAX_SETUP_NAMES, f"import modules, not {len(names)} names"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_a_chapter_stays_one_readable_thread(path):
    cells = notebook(path).cells
    assert len(cells) <= MAX_CELLS, f"{len(cells)} cells: move asides to Running at scale"
    markdown = [c.source for c in cells if c.cell_type == "markdown"]
    assert "What you will learn" in markdown[0], "it opens with what it will build"
    assert any("## Summary" in m for m in markdown[-2:]), "and ends with what was learnt"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_solutions_are_hidden_and_references_readable_in_jupyter_too(path):
    markdown = "\n".join(c.source for c in notebook(path).cells if c.cell_type == "markdown")
    assert "{admonition}" not in markdown, "MyST dropdowns show as raw text in JupyterLab"
    assert re.search(r"\{(numref|cite[:a-z]*|ref)\}`", markdown) is None, "raw roles"
    exercises = markdown[markdown.index("## Exercises") :]
    assert exercises.count("<details>") == 1 and exercises.count("</details>") == 1
    assert "<summary>" in exercises
    answers = exercises[exercises.index("<details>") :]
    assert re.search(r"^1\. ", answers, re.M), "the solutions sit inside <details>"


def shown_names(path):
    """The expressions passed to show_source in a chapter."""
    names = []
    for cell in code_cells(path):
        source = "\n".join(  # IPython magics (the Colab install) become `pass`
            re.sub(r"^(\s*)%.*$", r"\1pass", line) for line in cell.source.splitlines()
        )
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "show_source":
                names.append(ast.unparse(node.args[0]))
    return names


def resolve(dotted):
    """`anchors.generate_anchors` -> the object in retinanet_lib.anchors."""
    module_name, *attributes = dotted.split(".")
    target = importlib.import_module(f"retinanet_lib.{module_name}")
    for attribute in attributes:
        target = getattr(target, attribute)
    return target


def test_chapters_walk_through_library_source():
    shown = {path.name: shown_names(path) for path in CHAPTERS}
    assert sum(bool(names) for names in shown.values()) >= 4, shown
    everything = {name for names in shown.values() for name in names}
    required = {
        "anchors.generate_anchors",
        "boxes.pairwise_iou",
        "encoding.match_anchors",
        "encoding.encode_box_deltas",
        "layers.FeaturePyramid.call",
        "layers.PredictionHead.__init__",
        "losses.sigmoid_focal_loss",
        "losses.RetinaNetLoss.components",
        "inference.decode_all",
        "inference.nms_tensors",
        "heatmap.score_heatmap",
    }
    assert required <= everything, required - everything
    for name in everything:
        target = resolve(name)  # an AttributeError here: not a library symbol
        module = getattr(target, "__module__", "")
        assert module.startswith("retinanet_lib"), f"{name} is not library code"


#: Markdown that only Jupyter Book (MyST) renders: Colab and JupyterLab show it as raw text.
MYST_ONLY = {
    "a role such as {glue:text}, {ref} or {cite}": re.compile(r"(?<!`)\{[a-z][\w:-]*\}`"),
    "a directive such as ```{note}": re.compile(r"^\s*(?:`{3,}|~{3,}|:{3,})\{", re.M),
    "a MyST target such as (label)=": re.compile(r"^\([\w.-]+\)=\s*$", re.M),
}
NOTEBOOKS = CHAPTERS + sorted((ROOT / "book").glob("*.ipynb"))


def myst_only_syntax(markdown: str) -> list[str]:
    """What in `markdown` only Jupyter Book renders, each as 'kind: text'."""
    return [
        f"{kind}: {match.group(0).strip()}"
        for kind, pattern in MYST_ONLY.items()
        for match in pattern.finditer(markdown)
    ]


def test_myst_only_syntax_is_found():
    found = myst_only_syntax(
        "In this run {glue:text}`val_rsna:.3f`, see {ref}`sec` and {cite:p}`lin2017`.\n"
        "```{note}\nA note.\n```\n:::{tip}\nA tip.\n:::\n(my-label)=\n# Title"
    )
    assert len(found) == 6, found
    plain = (
        'Inline code `{x}` and `f"{value:.2f}"`, a set {1, 2}, a formula $\\{x\\}$,\n'
        "```python\nprint({'a': 1})\n```\n[a link](../book/results.ipynb) and (a remark)."
    )
    assert myst_only_syntax(plain) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_markdown_renders_in_colab_and_jupyterlab(path):
    """A notebook's prose is read in the book, in JupyterLab and in Colab: no MyST-only
    roles or directives, which the last two show raw (a number that varies is printed by its
    cell, not glued into the text)."""
    found = [
        f"cell {index}: {item}"
        for index, cell in enumerate(notebook(path).cells)
        if cell.cell_type == "markdown"
        for item in myst_only_syntax(cell.source)
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_printed_lines_fit_the_rendered_column(path):
    """A printed line longer than the column scrolls sideways in the book at 1280 px."""
    long = [
        (index, line)
        for index, cell in enumerate(code_cells(path))
        for output in cell.get("outputs", [])
        if output.output_type == "stream"
        for line in output.text.splitlines()
        if len(line) > MAX_LINE
    ]
    assert not long, f"{len(long)} printed lines over {MAX_LINE} characters: {long[:3]}"
