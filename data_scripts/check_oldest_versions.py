"""Does the library work with the oldest TensorFlow and Keras it declares? A scratch install.

    python data_scripts/check_oldest_versions.py                 # unit tests + Chapter 2
    python data_scripts/check_oldest_versions.py --venv /tmp/old --keep
    python data_scripts/check_oldest_versions.py --notebook chapters/03_dataset.ipynb

Colab ships its own TensorFlow and Keras and the book never reinstalls them, so the library
must run on whatever Colab has. `pyproject.toml`'s `tf` extra declares the oldest versions it
supports (`tensorflow>=X`, `keras>=Y`). This script reads those two minimums, makes a fresh
virtual environment, installs `requirements.txt` with TensorFlow (the CPU build) and Keras
pinned to exactly those minimums, and runs there:

* the unit tests (`tests/`, without the real-browser checks and the book build, which test
  the book's tooling, not the library);
* one chapter under nbval (default Chapter 2: it builds the model and prints its parameter
  counts and untrained outputs, so a Keras that builds or initialises differently shows).

It prints the installed versions, each step's result and time, and exits non-zero when a
step fails. It needs the package index (about 3 minutes to install) and, on 2 CPU cores,
about 15 minutes for the tests.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Tests of the book's tooling rather than of the library (they build the whole book).
SKIPPED_TESTS = ("tests/test_browser.py", "tests/test_book.py")
DEFAULT_NOTEBOOK = "chapters/02_model.ipynb"


def declared_minimums(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """The `tf` extra's lower bounds, e.g. `{"tensorflow": "2.19", "keras": "3.10"}`."""
    extra = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]["tf"]
    found = {}
    for requirement in extra:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)\s*", requirement)
        if match is None:
            raise ValueError(f"tf extra: expected 'name>=version', got {requirement!r}.")
        found[match.group(1).lower()] = match.group(2)
    missing = {"tensorflow", "keras"} - set(found)
    if missing:
        raise ValueError(f"tf extra has no lower bound for {sorted(missing)}.")
    return found


def pinned_requirements(minimums: dict[str, str], target: Path) -> Path:
    """`requirements.txt` with TensorFlow and Keras replaced by the exact minimums."""
    lines = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        name = re.split(r"[<>=!~\[ ;]", line.strip(), maxsplit=1)[0].lower()
        if name in ("tensorflow", "tensorflow-cpu", "keras"):
            continue
        lines.append("-e " + str(ROOT) if line.strip() == "-e ." else line)
    lines += [f"tensorflow-cpu=={minimums['tensorflow']}.*", f"keras=={minimums['keras']}.*"]
    target.write_text("\n".join(lines) + "\n")
    return target


def _step(name: str, command: list[str]) -> bool:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
    status = "passed" if result.returncode == 0 else f"FAILED (exit {result.returncode})"
    print(f"{name}: {status} in {seconds:.0f} s")
    for line in tail:
        print(f"    {line}")
    return result.returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=None, help="where to make the venv")
    parser.add_argument("--keep", action="store_true", help="keep the venv afterwards")
    parser.add_argument("--notebook", default=DEFAULT_NOTEBOOK, help="chapter to run")
    args = parser.parse_args(argv)
    minimums = declared_minimums()
    print(f"declared minimums: TensorFlow {minimums['tensorflow']}, Keras {minimums['keras']}")
    venv = args.venv or Path(tempfile.mkdtemp(prefix="oldest-tf-"))
    python = venv / "bin" / "python"
    try:
        ok = _step("venv", [sys.executable, "-m", "venv", "--clear", str(venv)])
        requirements = pinned_requirements(minimums, venv / "requirements-oldest.txt")
        install = [str(python), "-m", "pip", "install", "-q", "-r", str(requirements)]
        ok = ok and _step("install", install)
        data_files = [str(python), "-m", "pip", "install", "-q", "--no-deps", "-r"]
        ok = ok and _step("real labels", [*data_files, str(ROOT / "requirements-data.txt")])
        if not ok:
            return 1
        versions = subprocess.run(
            [
                str(python),
                "-c",
                "import tensorflow as t, keras as k; print(t.__version__, k.__version__)",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        ).stdout.split()
        print(f"installed: TensorFlow {versions[0]}, Keras {versions[1]}")
        ignored = [f"--ignore={path}" for path in SKIPPED_TESTS]
        unit = _step("unit tests", [str(python), "-m", "pytest", "-q", "tests", *ignored])
        chapter = _step(args.notebook, [str(python), "-m", "pytest", "-q", args.notebook])
        return 0 if unit and chapter else 1
    finally:
        if not args.keep:
            shutil.rmtree(venv, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
