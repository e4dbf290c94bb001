"""One configuration and one seed give one result: in a fresh process, after another model in
the same process, and in every committed study CSV that holds that run."""

import dataclasses
import json
import subprocess
import sys
import textwrap
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retinanet_lib.config import SyntheticConfig, TrainConfig, config_for_mode
from retinanet_lib.studies import RESULTS_PACKAGE, config_id, with_seed

from .helpers import interrupt_after_epoch

#: The CPU default (augmentation, shuffling, Adam with its schedule) made small: 64 px, 2
#: epochs of 12 images.
SHORT = dataclasses.replace(
    config_for_mode("cpu"),
    image_size=64,
    train=dataclasses.replace(
        config_for_mode("cpu").train, epochs=2, epochs_per_drop=1, batch_size=4
    ),
)
#: Columns that a repeated run must reproduce exactly (`train_seconds` is wall time).
RUN_COLUMNS = ["rsna_metric", "precision", "recall", "ap50", "score_threshold", "best_epoch"]

_RUN_ONE = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    from retinanet_lib.config import RetinaNetConfig
    from retinanet_lib.splits import load_splits
    from retinanet_lib.studies import run_arm

    cfg = RetinaNetConfig.from_dict(json.loads(sys.argv[1]))
    splits = load_splits("cpu", cfg, data_root=sys.argv[2])
    result = run_arm("short", cfg, splits, seed=int(sys.argv[3]))
    print(json.dumps({"history": result.history, "row": result.row}))
    """
)


@pytest.fixture(scope="module")
def short_data(tmp_path_factory):
    from retinanet_lib.synthetic import write_synthetic_rsna

    root = tmp_path_factory.mktemp("short_data")
    write_synthetic_rsna(root, SyntheticConfig(num_train=16, num_test=1, image_size=128), False)
    return root


def _in_process(cfg, root, seed):
    from retinanet_lib.splits import load_splits
    from retinanet_lib.studies import run_arm

    result = run_arm("short", cfg, load_splits("cpu", cfg, data_root=root), seed=seed)
    return {"history": result.history, "row": result.row}


def _fresh_process(cfg, root, seed):
    completed = subprocess.run(
        [sys.executable, "-c", _RUN_ONE, json.dumps(cfg.to_dict()), str(root), str(seed)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_run_repeats_exactly_in_a_fresh_process_and_after_another_model(short_data):
    first = _in_process(SHORT, short_data, seed=3)
    other = dataclasses.replace(SHORT, image_size=128)  # another model first
    _in_process(other, short_data, seed=5)
    again = _in_process(SHORT, short_data, seed=3)
    fresh = _fresh_process(SHORT, short_data, seed=3)
    for run in (again, fresh):
        assert run["history"] == first["history"]  # every epoch's losses, bit for bit
        assert {k: run["row"][k] for k in RUN_COLUMNS} == {k: first["row"][k] for k in RUN_COLUMNS}
    different_seed = _in_process(SHORT, short_data, seed=4)
    assert different_seed["history"] != first["history"]  # the seed does reach training


@pytest.mark.slow
@pytest.mark.parametrize("positive_fraction", [None, 0.5], ids=["natural mix", "rebalanced"])
def test_an_interrupted_run_resumes_on_the_path_of_the_uninterrupted_one(
    short_data, tmp_path, positive_fraction
):
    """A run stopped after its first epoch and resumed by a new call (new datasets, as a new
    process would build) must continue exactly as the run trained without a stop: the same
    shuffle order and augmentation in every later epoch, so the same losses, bit for bit."""
    from retinanet_lib.splits import load_splits
    from retinanet_lib.train import set_seed, train_retinanet

    cfg = dataclasses.replace(
        SHORT,
        train=dataclasses.replace(SHORT.train, epochs=3),
        data=dataclasses.replace(SHORT.data, positive_image_fraction=positive_fraction),
    )
    splits = load_splits("cpu", cfg, data_root=short_data)

    def train(folder, **kwargs):
        set_seed(0)
        return train_retinanet(
            cfg, splits.train, splits.validation, folder, verbose=0, tensorboard=False, **kwargs
        )

    uninterrupted = train(tmp_path / "once")
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "twice", extra_callbacks=[interrupt_after_epoch(0)])
    resumed = train(tmp_path / "twice")
    assert len(resumed.history["loss"]) == 3
    assert resumed.history == uninterrupted.history


def test_a_study_run_refuses_to_skip_unreadable_files(short_data, tmp_path):
    """Training skips unreadable files; a study row made that way would come from fewer
    images than the same configuration and seed elsewhere, so a study run refuses."""
    import shutil

    from retinanet_lib.splits import load_splits
    from retinanet_lib.studies import IncompleteStudyDataError, run_arm

    root = tmp_path / "data"
    shutil.copytree(short_data, root)
    # Allow a bad file in training (a 1 % limit stops 1 file of 16 before the study could).
    cfg = dataclasses.replace(
        SHORT, train=dataclasses.replace(SHORT.train, max_bad_file_fraction=0.5)
    )
    splits = load_splits("cpu", cfg, data_root=root)
    broken = Path(splits.train.paths[1])
    broken.write_bytes(broken.read_bytes()[:300])  # a half-written file
    with pytest.raises(IncompleteStudyDataError, match=f"1 files could not be read.*{broken.name}"):
        run_arm("short", cfg, splits, seed=0)


def test_config_id_names_the_training_run_not_the_seed():
    cfg = config_for_mode("cpu")
    assert config_id(cfg) == config_id(with_seed(cfg, 9))
    assert len(config_id(cfg)) == 12 and int(config_id(cfg), 16) >= 0
    changed = [
        dataclasses.replace(cfg, image_size=128),
        dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, gamma=1.0)),
        dataclasses.replace(cfg, train=TrainConfig(epochs=cfg.train.epochs + 1)),
        dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, horizontal_flip=False)),
    ]
    ids = {config_id(c) for c in changed}
    assert len(ids) == len(changed) and config_id(cfg) not in ids
    rebuilt = type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert config_id(rebuilt) == config_id(cfg)  # stable through a run folder's JSON
    # Setting a field to its default value is no change at all.
    same = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, gamma=cfg.loss.gamma))
    assert config_id(same) == config_id(cfg)


def test_config_id_ignores_settings_left_at_their_defaults():
    """A setting added to the config later (with a default) must not change the fingerprint of
    the runs already in the CSVs: only changed settings are hashed."""
    from retinanet_lib.studies import _changed

    defaults = {"a": 1, "section": {"b": 2, "c": 3}}
    assert _changed({"a": 1, "section": {"b": 2, "c": 3}}, defaults) == {}
    assert _changed({"a": 1, "section": {"b": 5, "c": 3}}, defaults) == {"section": {"b": 5}}
    grown = {"a": 1, "section": {"b": 2, "c": 3, "new": None}}
    grown_defaults = {"a": 1, "section": {"b": 2, "c": 3, "new": None}}
    assert _changed(grown, grown_defaults) == _changed(defaults, defaults)


def _committed_tables():
    folder = resources.files(RESULTS_PACKAGE)
    tables = {}
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".csv") and "_" not in name.removesuffix(".csv"):
            with entry.open() as handle:
                tables[name.removesuffix(".csv")] = pd.read_csv(handle)
    return tables


def test_committed_studies_agree_wherever_they_hold_the_same_run():
    """Rows with the same configuration (`config_id`) and seed must carry the same numbers,
    whichever study and arm name they appear under, and name the commit they came from."""
    from data_scripts.run_studies import LEGACY_STUDIES, STUDIES

    tables = _committed_tables()
    assert set(tables) <= set(STUDIES)
    current = {name: t for name, t in tables.items() if name not in LEGACY_STUDIES}
    rows = []
    for name, table in current.items():
        assert {"config_id", "commit"} <= set(table.columns), f"{name}.csv lacks them"
        assert not table["commit"].astype(str).str.contains(r"\+changes").any(), name
        rows.append(table.assign(study=name)[["study", "arm", "seed", "config_id", *RUN_COLUMNS]])
    everything = pd.concat(rows, ignore_index=True)
    shared = everything.groupby(["config_id", "seed"]).filter(lambda g: len(g) > 1)
    assert shared["study"].nunique() >= 3, "the CPU default appears in several studies"
    for (_, seed), group in shared.groupby(["config_id", "seed"]):
        values = group[RUN_COLUMNS].drop_duplicates()
        assert len(values) == 1, f"seed {seed} differs between {group[['study', 'arm']]}"


def test_every_study_with_paired_claims_has_its_per_image_scores():
    """Every run of a study has one score per validation image, and its row's RSNA metric is
    the mean of those scores over the images the metric counts: the per-image files hold the
    same runs as the rows they pair."""
    from data_scripts.run_studies import LEGACY_STUDIES

    folder = resources.files(RESULTS_PACKAGE)
    for name, table in _committed_tables().items():
        if name in LEGACY_STUDIES:
            continue
        with (folder / f"{name}_per_image.csv").open() as handle:
            per_image = pd.read_csv(handle)
        runs = set(zip(table["arm"], table["seed"], strict=True))
        assert set(zip(per_image["arm"], per_image["seed"], strict=True)) == runs, name
        counts = per_image.groupby(["arm", "seed"]).size()
        assert (counts == table["val_images"].iloc[0]).all(), name
        scores = per_image["rsna_score"].dropna()
        assert ((scores >= 0) & (scores <= 1)).all() and np.isfinite(scores).all()
        means = per_image.groupby(["arm", "seed"])["rsna_score"].mean()
        rows = table.set_index(["arm", "seed"])["rsna_metric"]
        np.testing.assert_allclose(means.loc[rows.index], rows, atol=2e-4, err_msg=name)


def test_image_level_rows_agree_with_their_per_image_flags():
    """The imbalance study's image-level columns, recomputed from its per-image flags."""
    tables = _committed_tables()
    folder = resources.files(RESULTS_PACKAGE)
    with (folder / "imbalance_image_level_per_image.csv").open() as handle:
        flags = pd.read_csv(handle)
    study = tables["imbalance"].set_index(["arm", "seed"])
    for (arm, seed), run in flags.groupby(["arm", "seed"]):
        row = study.loc[(arm, seed)]
        positives = run[run["has_opacity"]]
        negatives = run[~run["has_opacity"]]
        assert positives["false_alarm"].isna().all() and negatives["found"].isna().all()
        assert len(positives) == row["positive_images"]
        assert positives["found"].mean() == pytest.approx(row["image_recall"], abs=1e-4)
        specificity = 1.0 - negatives["false_alarm"].mean()
        assert specificity == pytest.approx(row["image_specificity"], abs=1e-4)
        flagged = positives["found"].sum() + negatives["false_alarm"].sum()
        assert positives["found"].sum() / flagged == pytest.approx(row["image_precision"], abs=1e-4)
