"""The book builds with warnings as errors, and the build really fails on broken input.

The real build (README's first command) executes every chapter; here the chapters' stored
outputs are rendered instead (execution off), because nbval already executes every chapter in
the same test run.
"""

from pathlib import Path

import nbformat
import yaml

from .conftest import build_book

ROOT = Path(__file__).resolve().parent.parent


def test_every_toc_page_is_rendered(built_book):
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]
    for name in files:
        assert (built_book / f"{name}.html").is_file(), name


def test_chapters_show_their_stored_figures_and_launch_button(built_book):
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo = config["repository"]["url"].removeprefix("https://github.com/")
    for path in sorted((ROOT / "chapters").glob("*.ipynb")):
        html = (built_book / "chapters" / f"{path.stem}.html").read_text()
        notebook = nbformat.read(path, as_version=4)
        num_figures = sum(
            "image/png" in output.get("data", {})
            for cell in notebook.cells
            if cell.cell_type == "code"
            for output in cell.outputs
        )
        assert num_figures > 0, f"{path.name} stores no figure"
        assert html.count("<img") >= num_figures, path.name
        colab = f"colab.research.google.com/github/{repo}/blob/main/chapters/{path.name}"
        assert colab in html, "missing Colab launch button"


def _tiny_book(root: Path, cells: list) -> None:
    root.mkdir()
    (root / "intro.md").write_text("# Intro\n\nText.\n")
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(notebook, root / "chapter.ipynb")
    (root / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n- file: chapter\n")


def _tiny_config(execute: str) -> dict:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = execute
    config.pop("bibtex_bibfiles", None)
    return config


def test_build_fails_on_a_notebook_without_title(tmp_path):
    _tiny_book(tmp_path / "book", [nbformat.v4.new_markdown_cell("No heading here.")])
    result = build_book(tmp_path / "book", _tiny_config("off"), tmp_path / "out")
    assert result.returncode != 0
    assert "title" in (result.stdout + result.stderr)


def test_build_fails_on_a_notebook_that_raises(tmp_path):
    cells = [
        nbformat.v4.new_markdown_cell("# Broken"),
        nbformat.v4.new_code_cell("raise RuntimeError('boom')"),
    ]
    _tiny_book(tmp_path / "book", cells)
    result = build_book(tmp_path / "book", _tiny_config("cache"), tmp_path / "out")
    assert result.returncode != 0
    assert "boom" in (result.stdout + result.stderr)
