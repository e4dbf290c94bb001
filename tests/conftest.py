"""Shared test setup: quiet TensorFlow before anything imports it, small configs, seeds."""

import os

# Must happen before TensorFlow is imported (also by the notebook kernels nbval starts).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from retinanet_lib.config import RetinaNetConfig  # noqa: E402


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
