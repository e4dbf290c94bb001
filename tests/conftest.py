"""Shared test setup: quiet TensorFlow before anything imports it, small configs, seeds."""

import os

# Must happen before TensorFlow is imported (also by the notebook kernels nbval starts).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from retinanet_lib.config import RetinaNetConfig  # noqa: E402


def pytest_configure(config):
    """nbval compares decimals with one stated tolerance (tests/nbval_tolerance.py)."""
    from .nbval_tolerance import install

    install()


def pytest_collectstart(collector):
    """nbval: TensorFlow may write harmless warnings to stderr; compare only stdout/results."""
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)


@pytest.fixture
def tiny_cfg() -> RetinaNetConfig:
    """128 px input: 3,069 anchors."""
    return RetinaNetConfig(image_size=128)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


ROOT = Path(__file__).resolve().parent.parent
# The flags of the README's build command: warnings are errors, nitpicky references.
BUILD_FLAGS = ["--all", "-W", "-n", "--keep-going"]


def _jupyter_book() -> str:
    found = shutil.which("jupyter-book", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("jupyter-book is not installed; `pip install -r requirements.txt`.")
    return found


def build_book(book_root: Path, config: dict, output: Path) -> subprocess.CompletedProcess:
    config_path = output / "_config_test.yml"
    output.mkdir(parents=True, exist_ok=True)
    # Jupyter Book resolves local extension folders against the config file's folder; the
    # configs here derive from the repository's _config.yml, so resolve them against its root.
    extensions = config.get("sphinx", {}).get("local_extensions") or {}
    for name, folder in extensions.items():
        extensions[name] = str((ROOT / folder).resolve())
    config_path.write_text(yaml.safe_dump(config))
    command = [
        _jupyter_book(),
        "build",
        str(book_root),
        "--path-output",
        str(output),
        "--config",
        str(config_path),
        *BUILD_FLAGS,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> Path:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    output = tmp_path_factory.mktemp("book")
    result = build_book(ROOT, config, output)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return output / "_build" / "html"
