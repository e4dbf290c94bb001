"""Re-run the book's notebooks in place: their outputs are a real run's.

The one command that produces the outputs committed with the chapters and the
results page (CPU default mode, built-in synthetic data):

    python book/execute_chapters.py          # every chapter, then the results
    python book/execute_chapters.py 01 03    # notebooks named 01* or 03*

Each notebook runs top to bottom in a fresh kernel, in its own folder, the way
nbval and the book build run it. Execution counts are renumbered and per-cell
timestamps dropped, so a re-run changes only what the code printed or drew.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

BOOK = Path(__file__).resolve().parent
CHAPTERS = BOOK.parent / "chapters"
CELL_TIMEOUT_S = 1800
QUIET_TF = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}


def execute(path: Path) -> float:
    """Executes one notebook in place; returns the wall time in seconds."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    for cell in notebook.cells:
        cell.get("metadata", {}).pop("execution", None)
    nbformat.write(notebook, path)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "prefixes", nargs="*", help="chapter file-name prefixes (default: all)"
    )
    args = parser.parse_args(argv)
    os.environ.update(QUIET_TF)
    paths = sorted(CHAPTERS.glob("*.ipynb")) + sorted(BOOK.glob("*.ipynb"))
    if args.prefixes:
        paths = [
            p
            for p in paths
            if any(p.name.startswith(x) for x in args.prefixes)
        ]
    if not paths:
        print(
            f"No chapter matches {args.prefixes} in {CHAPTERS}",
            file=sys.stderr,
        )
        return 1
    for path in paths:
        print(f"{path.name}: {execute(path):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
