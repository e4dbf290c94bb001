"""The winners study's pieces: ensembling, gating, variant scoring, and the study end to end."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from retinanet_lib.config import SyntheticConfig, config_for_mode, replace_section
from retinanet_lib.evaluate import choose_thresholds, score_at
from retinanet_lib.inference import ensemble_predictions, image_probabilities
from retinanet_lib.winners import ModelOutputs, score_variant, variant_predictions

TINY = dataclasses.replace(
    replace_section(config_for_mode("cpu"), "train", epochs=1, batch_size=4),
    image_size=128,
)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from retinanet_lib.synthetic import write_synthetic_rsna

    root = tmp_path_factory.mktemp("winners_data")
    write_synthetic_rsna(
        root, SyntheticConfig(num_train=16, num_test=8, image_size=128, seed=2), False
    )
    return root


def test_winners_study_end_to_end_writes_runs_variants_and_per_image_scores(
    tiny_data, tmp_path, monkeypatch
):
    from data_scripts import run_studies
    from retinanet_lib.splits import load_splits

    monkeypatch.setattr(run_studies, "RESULTS", tmp_path)
    monkeypatch.setattr(
        run_studies, "load_splits", lambda mode, cfg: load_splits(mode, cfg, tiny_data)
    )
    arms, seeds, _ = run_studies.STUDIES["winners"]
    monkeypatch.setitem(run_studies.STUDIES, "winners", (arms, seeds, lambda: TINY))
    run_studies.run_winners((0, 1), ["CPU default", "image head"], {}, "abc1234")
    runs = pd.read_csv(tmp_path / "winners.csv")
    variants = pd.read_csv(tmp_path / "winners_variants.csv", dtype={"seeds": str})
    per_image = pd.read_csv(tmp_path / "winners_test_per_image.csv", dtype={"seeds": str})
    assert len(runs) == 4 and set(runs["arm"]) == {"CPU default", "image head"}
    singles = sum(not ensemble for _, ensemble, _, _ in run_studies.WINNER_VARIANTS)
    ensembles = len(run_studies.WINNER_VARIANTS) - singles
    assert len(variants) == 2 * (2 * singles + ensembles)
    assert set(variants.loc[variants["variant"].str.startswith("ensemble"), "seeds"]) == {"0+1"}
    assert variants["test_rsna_metric"].between(0, 1).all()
    ungated = variants[~variants["variant"].str.contains("gated")]
    assert ungated["gate_threshold"].isna().all()
    test_images = variants["test_images"].iloc[0]
    assert (per_image.groupby(["arm", "variant", "seeds"]).size() == test_images).all()
    # The row's test metric is the mean of its per-image scores (the metric skips NaN).
    for (arm, variant, label), group in per_image.groupby(["arm", "variant", "seeds"]):
        row = variants[
            (variants["arm"] == arm) & (variants["variant"] == variant) & (variants["seeds"] == label)
        ].iloc[0]
        assert group["rsna_score"].mean() == pytest.approx(row["test_rsna_metric"], abs=2e-4)
    # Resuming finds everything done and trains nothing.
    run_studies.run_winners((0, 1), ["CPU default", "image head"], {}, "abc1234")
    assert len(pd.read_csv(tmp_path / "winners_variants.csv")) == len(variants)
