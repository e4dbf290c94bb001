"""The code base is formatted and linted with ruff (library, scripts, tests and notebooks)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _ruff() -> list[str]:
    found = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if found is None:
        pytest.fail("ruff is not installed; `pip install -r requirements.txt` installs it.")
    return [found]


def test_ruff_lint_is_clean():
    result = subprocess.run([*_ruff(), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean():
    result = subprocess.run(
        [*_ruff(), "format", "--check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _library_imports() -> dict[str, set[str]]:
    """Module -> the library modules it imports, at the top or inside a function."""
    import ast

    modules = {path.stem: path for path in (ROOT / "retinanet_lib").glob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("retinanet_lib"):
                parts = node.module.split(".")
                imported |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                imported |= {a.name.split(".")[1] for a in node.names if "retinanet_lib." in a.name}
        graph[name] = imported & set(modules)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    finished, on_path = set(), []

    def visit(module):
        if module in on_path:
            return [*on_path[on_path.index(module) :], module]
        if module in finished:
            return None
        on_path.append(module)
        for dependency in sorted(graph[module]):
            cycle = visit(dependency)
            if cycle:
                return cycle
        on_path.pop()
        finished.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return None


def test_the_library_has_no_import_cycle():
    graph = _library_imports()
    assert {"config", "rsna", "synthetic", "splits"} <= set(graph)
    assert _find_cycle(graph) is None, " -> ".join(_find_cycle(graph))
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_model_and_loss_path_imports_no_tensorflow():
    """What a training step needs (`benchmark_training.py` on a machine without TensorFlow)."""
    graph = _library_imports()
    path, todo = set(), ["model", "losses", "optimizers"]
    while todo:
        module = todo.pop()
        if module not in path:
            path.add(module)
            todo.extend(graph[module])
    for module in sorted(path):
        source = (ROOT / "retinanet_lib" / f"{module}.py").read_text()
        assert "import tensorflow" not in source, f"{module}.py imports TensorFlow"
