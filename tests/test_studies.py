import dataclasses

import keras
import numpy as np
import pandas as pd
import pytest

from retinanet_lib.config import config_for_mode
from retinanet_lib.studies import (
    FirstStepsLoss,
    append_row,
    done_runs,
    load_result,
    summarize,
    with_seed,
)


def test_first_steps_loss_recovers_each_batch_loss_from_the_running_mean():
    """A model whose loss is exactly the batch's target value: the recorded losses must be
    the targets themselves, not Keras' running means."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(optimizer="sgd", loss=lambda y, p: y + 0.0 * p)
    targets = np.array([[5.0], [1.0], [3.0], [2.0], [7.0], [4.0]], np.float32)
    recorder = FirstStepsLoss(num_steps=5)
    model.fit(
        np.zeros((6, 1)),
        targets,
        batch_size=1,
        epochs=2,
        verbose=0,
        shuffle=False,
        callbacks=[recorder],
    )
    np.testing.assert_allclose(recorder.losses, [5, 1, 3, 2, 7], rtol=1e-5)


def test_results_csv_resumes_and_summarizes(tmp_path):
    path = tmp_path / "study.csv"
    assert done_runs(path) == set()
    for arm, seed, value in (("a", 0, 0.5), ("a", 1, 0.7), ("b", 0, 0.2), ("b", 1, 0.4)):
        append_row(path, {"arm": arm, "seed": seed, "rsna_metric": value, "ap50": 2 * value})
    assert done_runs(path) == {("a", 0), ("a", 1), ("b", 0), ("b", 1)}
    table = summarize(pd.read_csv(path), columns=("rsna_metric",), order=["b", "a"])
    assert list(table.index) == ["b", "a"]
    assert table.loc["a", ("rsna_metric", "mean")] == pytest.approx(0.6)
    assert table.loc["a", ("rsna_metric", "std")] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert table.loc["b", ("rsna_metric", "min")] == 0.2 and table.loc["b", ("seeds", "")] == 2


def test_with_seed_changes_only_the_training_seed():
    cfg = config_for_mode("cpu")
    seeded = with_seed(cfg, 7)
    assert seeded.train.seed == 7 and seeded.data == cfg.data
    assert dataclasses.replace(seeded, train=cfg.train) == cfg


def test_missing_result_says_where_results_come_from():
    with pytest.raises(FileNotFoundError, match="data_scripts"):
        load_result("no_such_study")


def test_anchor_counts_match_the_encoder_image_by_image(tmp_path):
    from retinanet_lib.boxes import scale_boxes, xywh_to_xyxy
    from retinanet_lib.config import SyntheticConfig
    from retinanet_lib.encoding import LabelEncoder
    from retinanet_lib.splits import load_splits
    from retinanet_lib.studies import anchor_counts
    from retinanet_lib.synthetic import write_synthetic_rsna

    write_synthetic_rsna(tmp_path, SyntheticConfig(num_train=10, num_test=1, seed=2), False)
    cfg = dataclasses.replace(config_for_mode("cpu"), image_size=128)
    records = load_splits("cpu", cfg, data_root=tmp_path).train
    table = anchor_counts(records, cfg, batch_size=3)
    assert len(table) == len(records) and (table.sum(axis=1) > 0).all()
    assert (table[["positive", "ignored", "background"]].sum(axis=1) == 3069).all()
    encoder = LabelEncoder(cfg)
    for row, boxes_xywh in zip(table.itertuples(), records.boxes_xywh, strict=True):
        boxes = scale_boxes(xywh_to_xyxy(boxes_xywh), 128 / 1024, 128 / 1024)
        _, stats = encoder.encode_sample_with_stats(boxes, np.zeros(len(boxes), int))
        assert (row.positive, row.ignored) == (stats["num_positive"], stats["num_ignored"])
        assert row.gt_boxes == len(boxes_xywh)


def test_summary_text_reads_mean_spread_and_range():
    from retinanet_lib.studies import summary_text

    table = pd.DataFrame({"arm": ["a", "a", "b"], "seed": [0, 1, 0], "ap50": [0.5, 0.7, 0.25]})
    text = summary_text(table, columns=("ap50",))
    assert text.loc["a", "ap50"] == "0.60 ± 0.14 (0.50 to 0.70)"  # sd of 0.5, 0.7 = 0.141
    assert text.loc["b", "ap50"] == "0.25 ± 0.00 (0.25 to 0.25)"
    assert text["seeds"].tolist() == [2, 1]


def test_positive_anchors_per_level_match_an_iou_count_level_by_level(tmp_path):
    from retinanet_lib.anchors import anchor_level_ids, generate_anchors
    from retinanet_lib.boxes import pairwise_iou, scale_boxes, xywh_to_xyxy
    from retinanet_lib.config import SyntheticConfig
    from retinanet_lib.splits import load_splits
    from retinanet_lib.studies import anchor_counts
    from retinanet_lib.synthetic import write_synthetic_rsna

    write_synthetic_rsna(tmp_path, SyntheticConfig(num_train=10, num_test=1, seed=3), False)
    cfg = dataclasses.replace(config_for_mode("cpu"), image_size=128)
    assert not cfg.encoder.match_low_quality  # the plain IoU rule below
    records = load_splits("cpu", cfg, data_root=tmp_path).train
    table = anchor_counts(records, cfg, batch_size=4, by_level=True)
    level_columns = [f"positive_P{level}" for level in cfg.anchors.levels]
    assert (table[level_columns].sum(axis=1) == table["positive"]).all()
    anchors_xyxy = generate_anchors(128, 128, cfg.anchors)
    level_ids = anchor_level_ids(128, 128, cfg.anchors)
    for row, boxes_xywh in zip(table.itertuples(), records.boxes_xywh, strict=True):
        if not len(boxes_xywh):
            assert row.positive == 0
            continue
        boxes = scale_boxes(xywh_to_xyxy(boxes_xywh), 128 / 1024, 128 / 1024)
        best = pairwise_iou(anchors_xyxy, boxes).numpy().max(axis=1)
        for level in cfg.anchors.levels:
            expected = int(((best >= cfg.encoder.match_iou) & (level_ids == level)).sum())
            assert getattr(row, f"positive_P{level}") == expected


def test_paired_difference_aligns_seeds_and_images_whatever_the_row_order():
    from retinanet_lib.studies import paired_difference

    rng = np.random.default_rng(0)
    images = [f"img{i}" for i in range(12)]
    rows = []
    for seed in (0, 1, 2):
        base = rng.uniform(0, 1, len(images))
        for arm, shift in (("A", 0.0), ("B", 0.05 * (seed + 1))):
            for image, value in zip(images, base + shift, strict=True):
                rows.append({"arm": arm, "seed": seed, "image": image, "rsna_score": value})
    table = pd.DataFrame(rows)
    result = paired_difference(table.sample(frac=1.0, random_state=3), "A", "B")
    assert result.difference == pytest.approx(np.mean([0.05, 0.10, 0.15]))
    assert (result.num_seeds, result.num_images) == (3, 12)
    assert 0.05 <= result.low <= result.high <= 0.15 and result.verdict() == "better"
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference(table[~((table["arm"] == "B") & (table["seed"] == 2))], "A", "B")
    with pytest.raises(ValueError, match="No per-image rows"):
        paired_difference(table, "A", "C")


def test_paired_table_has_one_row_per_pair_with_the_difference_of_each():
    from retinanet_lib.studies import paired_table

    rng = np.random.default_rng(5)
    rows = []
    for seed in range(3):
        base = rng.uniform(0, 1, 10)
        for arm, shift in (("A", 0.0), ("B", 0.2), ("C", 0.0)):
            noise = rng.normal(0, 0.01, 10) if arm == "C" else 0.0
            for index, value in enumerate(base + shift + noise):
                rows.append({"arm": arm, "seed": seed, "image": f"i{index}", "rsna_score": value})
    table = paired_table(pd.DataFrame(rows), [("A", "B"), ("B", "A"), ("A", "C")])
    assert list(table.index) == ["B - A", "A - B", "C - A"]
    assert table.loc["B - A", "difference"] == pytest.approx(0.2, abs=1e-3)
    assert table.loc["A - B", "difference"] == pytest.approx(-0.2, abs=1e-3)
    assert table.loc["B - A", "verdict"] == "better" and table.loc["A - B", "verdict"] == "worse"
    assert table.loc["C - A", "95% low"] < 0 < table.loc["C - A", "95% high"]
    assert table.loc["C - A", "verdict"] == "no difference found with 3 seeds"
    assert (table["seeds"] == 3).all() and (table["images"] == 10).all()


def _iou_by_hand(a, b):
    """IoU of two xyxy boxes, the slow obvious way."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(width, 0.0) * max(height, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def test_anchor_coverage_against_a_loop_and_the_encoder(tmp_path):
    from retinanet_lib.anchors import generate_anchors
    from retinanet_lib.config import SyntheticConfig
    from retinanet_lib.splits import load_splits
    from retinanet_lib.studies import anchor_counts, anchor_coverage
    from retinanet_lib.synthetic import write_synthetic_rsna

    synthetic = SyntheticConfig(num_train=8, num_test=1, seed=4, image_size=512)
    write_synthetic_rsna(tmp_path, synthetic, False)
    cfg = dataclasses.replace(config_for_mode("cpu"), image_size=128)
    records = load_splits("cpu", cfg, data_root=tmp_path).train
    coverage = anchor_coverage(records, cfg)
    num_boxes = sum(len(b) for b in records.boxes_xywh)
    assert len(coverage) == num_boxes > 0
    anchors_xyxy = generate_anchors(128, 128, cfg.anchors).numpy()
    scale = 128 / 512  # the pipeline's resize factor for these 512 px files
    for row in coverage.itertuples():
        box_index = row.Index - int(
            sum(len(b) for b in records.boxes_xywh[: row.image])
        )  # rows are box by box, image by image
        x, y, w, h = records.boxes_xywh[row.image][box_index] * scale
        ious = [_iou_by_hand((x, y, x + w, y + h), anchor) for anchor in anchors_xyxy]
        assert row.best_iou == pytest.approx(max(ious), abs=1e-5)
        assert row.anchors_at_match_iou == sum(iou >= cfg.encoder.match_iou for iou in ious)
    # Synthetic boxes never overlap, so the count is also the encoder's positive anchors.
    per_image = coverage.groupby("image")["anchors_at_match_iou"].sum()
    positives = anchor_counts(records, cfg)["positive"]
    assert per_image.to_dict() == {i: positives[i] for i in per_image.index}
    # Halving the input without halving the anchors leaves small boxes without any anchor.
    small = dataclasses.replace(cfg, image_size=64)
    assert (anchor_coverage(records, small)["best_iou"] < 0.5).sum() >= (
        coverage["best_iou"] < 0.5
    ).sum()


def test_study_rows_name_their_commit_and_flag_a_changed_work_tree(tmp_path):
    """`run_studies._commit`: the short commit, with "+changes" for a changed tracked file or
    a new Python file, but not for logs or the studies' own CSVs."""
    import importlib.util
    import shutil
    import subprocess
    from pathlib import Path

    source = Path(__file__).resolve().parent.parent / "data_scripts" / "run_studies.py"
    (tmp_path / "data_scripts").mkdir()
    script = tmp_path / "data_scripts" / "run_studies.py"
    shutil.copy(source, script)
    (tmp_path / "retinanet_lib" / "results").mkdir(parents=True)
    (tmp_path / "retinanet_lib" / "module.py").write_text("x = 1\n")

    def git(*args):
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "start")
    spec = importlib.util.spec_from_file_location("run_studies_copy", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    head = git("rev-parse", "--short", "HEAD")
    assert module._commit() == head
    (tmp_path / "study.log").write_text("log\n")
    (tmp_path / "retinanet_lib" / "results" / "loss.csv").write_text("a,b\n")
    assert module._commit() == head  # output is not a change of the code
    (tmp_path / "retinanet_lib" / "new_module.py").write_text("y = 2\n")
    assert module._commit() == head + "+changes"
    (tmp_path / "retinanet_lib" / "new_module.py").unlink()
    (tmp_path / "retinanet_lib" / "module.py").write_text("x = 2\n")
    assert module._commit() == head + "+changes"


def test_recipe_flip_tta_row_has_its_own_config_and_per_image_scores(tmp_path, monkeypatch):
    """The recipe's "flip TTA" row scores the baseline's run again: it carries the
    configuration with flips on (not the baseline's `config_id`, which would claim the same
    result) and per-image scores for paired intervals. A missing "flip TTA" row is made again
    from the baseline's run, without a second baseline row, and comes back the same."""
    from retinanet_lib.config import SyntheticConfig, replace_section
    from retinanet_lib.studies import config_id
    from retinanet_lib.synthetic import write_synthetic_rsna

    from .helpers import run_studies_on, tiny_study_cfg

    data = tmp_path / "data"
    write_synthetic_rsna(
        data, SyntheticConfig(num_train=16, num_test=4, image_size=128, seed=3), False
    )
    tiny = tiny_study_cfg()
    results = tmp_path / "results"
    results.mkdir()
    run_studies = run_studies_on(monkeypatch, data, results, tiny, ["recipe"])
    run_studies.run_study("recipe", (0,), ["baseline"], commit="abc1234")

    rows = pd.read_csv(results / "recipe.csv").set_index("arm")
    per_image = pd.read_csv(results / "recipe_per_image.csv")
    assert sorted(rows.index) == ["baseline", "flip TTA"]
    flipped_cfg = replace_section(tiny, "decode", flip_tta=True)
    assert rows.loc["flip TTA", "config_id"] == config_id(flipped_cfg)
    assert rows.loc["baseline", "config_id"] == config_id(tiny) != config_id(flipped_cfg)
    for arm in rows.index:
        scores = per_image.loc[per_image["arm"] == arm, "rsna_score"]
        assert len(scores) == rows.loc[arm, "val_images"]
        # The row's metric is the mean over the images the metric counts.
        assert scores.mean() == pytest.approx(rows.loc[arm, "rsna_metric"], abs=2e-4)

    first = pd.read_csv(results / "recipe.csv")
    first[first["arm"] == "baseline"].to_csv(results / "recipe.csv", index=False)
    per_image[per_image["arm"] == "baseline"].to_csv(results / "recipe_per_image.csv", index=False)
    run_studies.run_study("recipe", (0,), ["baseline"], commit="abc1234")
    again = pd.read_csv(results / "recipe.csv")
    timeless = [c for c in first.columns if c != "train_seconds"]
    pd.testing.assert_frame_equal(again[timeless], first[timeless])
    pd.testing.assert_frame_equal(pd.read_csv(results / "recipe_per_image.csv"), per_image)
