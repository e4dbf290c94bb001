"""Every chapter runs in full mode: the full architecture on RSNA-layout data, cell by cell.

The data is synthetic, written like the Kaggle download (1024 px, no test labels, so the test
split is held out of the training labels); the setting is full mode's smoke setting
(`config.SmokeConfig`: ResNet50 from random weights, since ImageNet weights cannot be
downloaded here, one epoch, a handful of images). Nothing is compared with stored outputs:
each cell must run without error, and the chapter must say it ran the smoke setting.

Chapters 6 and 7 are not run again here: they run the CPU default in every mode (their first
cells say why), so their nbval runs under the CPU default are also their full-mode runs.
"""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from retinanet_lib.config import RUN_MODE_ENV, SMOKE_ENV, SyntheticConfig
from retinanet_lib.rsna import DATA_DIR_ENV, TEST_LABELS_FILE
from retinanet_lib.synthetic import MANIFEST_NAME, ensure_synthetic_rsna, write_synthetic_rsna

ROOT = Path(__file__).resolve().parent.parent
#: Enough images that the smoke setting's splits hold images with and without an opacity.
KAGGLE_LIKE = SyntheticConfig(num_train=80, num_test=10)
SAME_IN_EVERY_MODE = ("06_transfer_and_explanations.ipynb", "07_what_won_rsna.ipynb")
NOTEBOOKS = [
    path
    for path in sorted((ROOT / "chapters").glob("*.ipynb"))
    + sorted((ROOT / "book").glob("*.ipynb"))
    if path.name not in SAME_IN_EVERY_MODE
]
CELL_TIMEOUT_S = 900
SMOKE_NOTICE = "full mode's smoke setting"


@pytest.fixture(scope="module")
def kaggle_layout(tmp_path_factory) -> Path:
    """Synthetic data laid out like the Kaggle download: no test labels, no manifest."""
    root = tmp_path_factory.mktemp("full-mode-data")
    write_synthetic_rsna(root, KAGGLE_LIKE, progress=False)
    (root / TEST_LABELS_FILE).unlink()
    (root / MANIFEST_NAME).unlink()
    # Chapter 4's live first steps run the CPU default in every mode and read the synthetic
    # set from `$RETINANET_DATA_DIR/synthetic`: the one the chapters' nbval run uses, made
    # here if it is not there yet, so it is generated once, not twice.
    cpu_set = ensure_synthetic_rsna(ROOT / "chapters" / "data" / "synthetic", progress=False)
    (root / "synthetic").symlink_to(cpu_set.resolve(), target_is_directory=True)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_cell_runs_in_full_mode(path, kaggle_layout, monkeypatch):
    monkeypatch.setenv(RUN_MODE_ENV, "full")
    monkeypatch.setenv(SMOKE_ENV, "1")
    monkeypatch.setenv(DATA_DIR_ENV, str(kaggle_layout))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    printed = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    if "setup_notebook()" in "".join(c.source for c in notebook.cells):
        assert SMOKE_NOTICE in printed, "the page must say it ran the smoke setting"
