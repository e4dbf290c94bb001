"""Every chapter's Colab badge and install line agree with `_config.yml`, and the install runs
only inside Colab."""

import ast
import os
import re
import sys
import types
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO_URL = CONFIG["repository"]["url"].rstrip("/")
BRANCH = CONFIG["repository"]["branch"]


def test_there_are_chapters_and_a_launch_button():
    assert CHAPTERS, "no chapter notebooks found"
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert REPO_URL.startswith("https://github.com/")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_colab_badge_points_at_this_notebook(path):
    notebook = nbformat.read(path, as_version=4)
    first = notebook.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), "needs a # Title"
    repo = REPO_URL.removeprefix("https://github.com/")
    expected = f"https://colab.research.google.com/github/{repo}/blob/{BRANCH}/chapters/{path.name}"
    assert expected in first.source


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_install_line_is_guarded_and_points_at_this_repo(path):
    notebook = nbformat.read(path, as_version=4)
    code = [c.source for c in notebook.cells if c.cell_type == "code"]
    setup = next(s for s in code if "%pip install" in s)
    lines = setup.splitlines()
    pip_index = next(i for i, line in enumerate(lines) if "%pip install" in line)
    # The %pip line sits in the body of `if IN_COLAB:` and IN_COLAB tests sys.modules.
    assert lines[pip_index - 1].strip() == "if IN_COLAB:"
    assert lines[pip_index].startswith("    ")
    assert 'IN_COLAB = "google.colab" in sys.modules' in setup
    install = lines[pip_index]
    # The URL lives in REPO (the line would not fit the book's column) and IPython expands
    # {REPO} in the magic.
    assert f'REPO = "{REPO_URL}.git"' in setup
    assert "git+{REPO}@" + BRANCH in install
    assert not re.search(r"\btensorflow\b", install), "never reinstall TensorFlow on Colab"
    # Outside Colab the guarded block is skipped: the cell parses once the magic is removed,
    # and evaluating the guard here (no google.colab module) gives False.
    ast.parse(setup.replace(lines[pip_index], "    pass"))
    namespace: dict = {}
    exec("import sys\nIN_COLAB = 'google.colab' in sys.modules", namespace)
    assert namespace["IN_COLAB"] is False


def _install_cell(path):
    notebook = nbformat.read(path, as_version=4)
    return next(c.source for c in notebook.cells if "%pip install" in c.source)


def test_every_chapter_has_the_same_install_cell():
    """A reader sets FULL = True in each chapter; the cell must read the same in all."""
    cells = {path.name: _install_cell(path) for path in CHAPTERS}
    assert len(set(cells.values())) == 1, sorted(cells)


def test_the_full_data_block_does_nothing_unless_asked_in_colab(monkeypatch):
    source = _install_cell(CHAPTERS[0])
    install = next(line for line in source.splitlines() if "%pip install" in line)
    assert '"retinanet-lib[kaggle] @ git+' in install  # kagglehub, new enough for output_dir
    # The real RSNA labels' data files (Colab has PyTorch, so the package installs as it is).
    assert install.endswith(" {LABELS}")  # IPython expands it, as {REPO}
    assert 'LABELS = "torchxrayvision==1.5.7"' in source  # the version of the stored outputs
    runnable = source.replace(install, "    pass")
    for name in ("RETINANET_MODE", "RETINANET_DATA_DIR"):
        monkeypatch.setenv(name, "recorded")  # so that monkeypatch restores what was there
        monkeypatch.delenv(name)
    namespace: dict = {}
    exec(runnable, namespace)  # here: not Colab, FULL False
    assert namespace["FULL"] is False and namespace["IN_COLAB"] is False
    assert "RETINANET_MODE" not in os.environ and "RETINANET_DATA_DIR" not in os.environ
    # In Colab with FULL = True: Drive is mounted and both variables point at it.
    mounted = []
    google = types.ModuleType("google")
    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=mounted.append)
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    namespace = {}
    exec(runnable.replace("FULL = False", "FULL = True"), namespace)
    assert mounted == ["/content/drive"]
    assert os.environ["RETINANET_MODE"] == "full"
    assert os.environ["RETINANET_DATA_DIR"] == namespace["DRIVE_FOLDER"]
    assert namespace["DRIVE_FOLDER"].startswith("/content/drive/")
