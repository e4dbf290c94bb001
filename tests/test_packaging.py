"""What `pip install` (Colab's route: `retinanet-lib @ git+...`) puts on a reader's machine."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_carries_the_study_results_and_the_pretrained_backbone(tmp_path):
    source = tmp_path / "source"  # a copy: building leaves build/ and *.egg-info behind
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "retinanet_lib",
        source / "retinanet_lib",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        + ["-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("retinanet_lib-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    committed = {
        f"retinanet_lib/results/{p.name}"
        for p in (ROOT / "retinanet_lib" / "results").glob("*.csv")
    }
    assert committed and committed <= names
    assert "retinanet_lib/weights/small_resnet_opacity.weights.h5" in names
    assert "retinanet_lib/weights/small_resnet_opacity.json" in names
    assert not any(name.startswith(("tests/", "data_scripts/", "chapters/")) for name in names)
