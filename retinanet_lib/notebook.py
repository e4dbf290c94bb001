"""Helpers for the chapter notebooks: one setup call, and the library's own code on the page.

`show_source(obj)` displays the source of a library function, class or method, syntax
highlighted, read from the installed library at run time: the code a chapter walks through is
the code that the tests check, so the two cannot drift apart. It renders as HTML with inline
styles, which JupyterLab, Colab and Jupyter Book all display the same way; long lines wrap
instead of scrolling.

Example:
    >>> from retinanet_lib import boxes
    >>> show_source(boxes.pairwise_iou)  # doctest: +SKIP
"""

from __future__ import annotations

import ast
import html
import inspect
import textwrap
from dataclasses import dataclass
from typing import Any

from retinanet_lib.config import run_mode_from_env, smoke_from_env

__all__ = ["SourceCode", "library_versions", "setup_notebook", "show_source"]

#: Matplotlib settings of every chapter: modest dpi keeps the stored figures light.
FIGURE_DPI = 72
#: Decimals pandas shows in the chapters' tables.
TABLE_DECIMALS = 3
#: Widest table cell shown in full (pandas cuts longer text with "...", e.g. a schedule).
TABLE_MAX_COLWIDTH = 80
_LIBRARY = "retinanet_lib"
_FONT_SIZE = "0.8em"  # about 100 characters fit the book's column at a 1280 px window
_STYLE = "default"


@dataclass(frozen=True)
class SourceCode:
    """Highlighted source of one library object, shown by Jupyter's rich display.

    Attributes:
        qualified_name: E.g. `retinanet_lib.boxes.pairwise_iou`.
        file: The library file, relative to the package (e.g. `retinanet_lib/boxes.py`).
        first_line: Line number of the first shown line in that file.
        code: The shown source text.
        docstring_omitted: Whether the docstring was left out.
    """

    qualified_name: str
    file: str
    first_line: int
    code: str
    docstring_omitted: bool = False

    def _repr_html_(self) -> str:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer

        formatter = HtmlFormatter(noclasses=True, style=_STYLE, nowrap=True)
        body = highlight(self.code, PythonLexer(), formatter)
        header = html.escape(self._header())
        return (
            '<div class="retinanet-source" style="border-left:3px solid #4a86c5;'
            'padding:0.2em 0 0.2em 0.8em;margin:0.3em 0">'
            f'<div style="font-size:0.8em;color:#555;margin-bottom:0.3em">{header}</div>'
            f'<pre style="white-space:pre-wrap;overflow-wrap:anywhere;margin:0;'
            f'font-size:{_FONT_SIZE};line-height:1.35;background:transparent">{body}</pre>'
            "</div>"
        )

    def _header(self) -> str:
        note = " (docstring omitted)" if self.docstring_omitted else ""
        return f"{self.file}, line {self.first_line}: {self.qualified_name}{note}"

    def __repr__(self) -> str:
        return f"# {self._header()}\n{self.code}"


def _without_docstring(source: str) -> tuple[str, int]:
    """Drops the docstring of the (dedented) function or class in `source`.

    Returns:
        The source and how many lines were removed before the first remaining body line.
    """
    tree = ast.parse(source)
    node = tree.body[0]
    body = getattr(node, "body", [])
    if not (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        return source, 0
    lines = source.splitlines()
    start, end = body[0].lineno - 1, body[0].end_lineno  # 0-based, end exclusive
    return "\n".join(lines[:start] + lines[end:]), end - start


def show_source(obj: Any, docstring: bool = False) -> SourceCode:
    """The source of a `retinanet_lib` function, class or method, ready to display.

    Args:
        obj: A function, class or method defined in `retinanet_lib`.
        docstring: Keep the docstring (by default the chapter's prose replaces it).

    Returns:
        A `SourceCode`; as the last expression of a cell it displays highlighted.

    Raises:
        ValueError: If `obj` is not defined in `retinanet_lib` (chapters show only the
            library's own, tested code).
    """
    target = inspect.unwrap(obj)
    module = inspect.getmodule(target)
    if module is None or not module.__name__.startswith(_LIBRARY):
        raise ValueError(f"{obj!r} is not defined in {_LIBRARY}; show_source shows library code.")
    lines, first_line = inspect.getsourcelines(target)
    source = textwrap.dedent("".join(lines)).rstrip("\n")
    omitted = 0
    if not docstring:
        source, omitted = _without_docstring(source)
    qualified = f"{module.__name__}.{getattr(target, '__qualname__', target.__name__)}"
    return SourceCode(
        qualified_name=qualified,
        file=module.__name__.replace(".", "/") + ".py",
        first_line=first_line,
        code=source,
        docstring_omitted=omitted > 0,
    )


def library_versions() -> str:
    """`"TensorFlow 2.21.0 | Keras 3.15.1 | retinanet_lib 0.1.0"`."""
    import keras
    import tensorflow as tf

    from retinanet_lib import __version__

    return f"TensorFlow {tf.__version__} | Keras {keras.__version__} | retinanet_lib {__version__}"


def setup_notebook() -> None:
    """Common chapter set-up: modest figure resolution, tables with 3 decimals and text cells
    up to 80 characters, and the versions printed (and, in full mode's smoke setting, what
    that setting changes).

    Call it in a chapter's setup cell (TensorFlow's log settings must be made before
    TensorFlow is imported, so they stay in the cell above).
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    plt.rcParams.update({"figure.dpi": FIGURE_DPI, "savefig.dpi": FIGURE_DPI})
    pd.set_option("display.precision", TABLE_DECIMALS)
    pd.set_option("display.max_colwidth", TABLE_MAX_COLWIDTH)
    print(library_versions())
    smoke = smoke_from_env() if run_mode_from_env() == "full" else None
    if smoke is not None:
        print(smoke.describe())
