"""Sphinx extension: the book's formulas as MathML, made at build time.

Sphinx's default math renderer loads MathJax from a CDN, so a reader
offline, or in a closed network, would see raw LaTeX. This renderer
converts each `$...$` and `$$...$$` formula with `latex2mathml` while the
book is built; browsers draw MathML natively (Chromium since version 109,
Firefox, Safari), with no script and no network. JupyterLab and Colab
render the same `$...$` in the notebooks with their own MathJax.

Enabled in `_config.yml`: `sphinx.local_extensions` and
`html_math_renderer: mathml`.
"""

from __future__ import annotations

from docutils import nodes
from latex2mathml.converter import convert
from sphinx.application import Sphinx
from sphinx.errors import ExtensionError


def _mathml(latex: str, display: str) -> str:
    try:
        return convert(latex, display=display)
    except Exception as error:  # latex2mathml raises several types
        message = f"Cannot convert the formula {latex!r} to MathML: {error}"
        raise ExtensionError(message) from error


def visit_inline_math(translator, node: nodes.math) -> None:
    mathml = _mathml(node.astext(), "inline")
    translator.body.append(f'<span class="math">{mathml}</span>')
    raise nodes.SkipNode


def visit_display_math(translator, node: nodes.math_block) -> None:
    number = ""
    if node.get("number"):
        number = f'<span class="eqno">({node["number"]})</span>'
    mathml = _mathml(node.astext(), "block")
    translator.body.append(
        f'<div class="math math-display">{number}{mathml}</div>'
    )
    raise nodes.SkipNode


def setup(app: Sphinx) -> dict:
    app.add_html_math_renderer(
        "mathml", (visit_inline_math, None), (visit_display_math, None)
    )
    return {"parallel_read_safe": True, "parallel_write_safe": True}
