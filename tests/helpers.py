"""Small helpers shared by tests (not fixtures)."""

import numpy as np


def random_boxes_xyxy(rng: np.random.Generator, n: int, extent: float = 100.0) -> np.ndarray:
    """`(n, 4)` valid xyxy boxes inside `[0, extent]^2`."""
    top_left = rng.uniform(0, extent * 0.8, size=(n, 2))
    size = rng.uniform(1.0, extent * 0.5, size=(n, 2))
    return np.concatenate([top_left, top_left + size], axis=1).astype(np.float32)


def bright_squares(cfg, num_images: int = 8, seed: int = 0, size: int = 64):
    """`(N, size, size, 3)` images holding one bright square each on a dark background, and
    their `(N, A, 5)` targets from the real encoder (`cfg.image_size` must be `size`)."""
    from retinanet_lib.encoding import LabelEncoder

    rng = np.random.default_rng(seed)
    encoder = LabelEncoder(cfg)
    images = np.full((num_images, size, size, 3), -1.0, np.float32)
    targets = []
    for index in range(num_images):
        x0, y0 = rng.integers(4, 30, 2)
        side = rng.integers(18, 30)
        images[index, y0 : y0 + side, x0 : x0 + side] = 1.0
        box = np.array([[x0, y0, x0 + side, y0 + side]], np.float32)
        targets.append(encoder.encode_sample(box, [0]).numpy())
    return images, np.stack(targets)


def interrupt_after_epoch(epoch: int):
    """A Keras callback that stops training with `KeyboardInterrupt` at the end of `epoch`
    (0-based), after the callbacks before it (the run folder's backup) have run."""
    import keras

    class InterruptAfterEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, finished, logs=None):
            if finished == epoch:
                raise KeyboardInterrupt

    return InterruptAfterEpoch()


def tiny_study_cfg():
    """The CPU default made small for end-to-end study runs: 128 px, 1 epoch of batch 4."""
    import dataclasses

    from retinanet_lib.config import config_for_mode, replace_section

    cpu = replace_section(config_for_mode("cpu"), "train", epochs=1, batch_size=4)
    return dataclasses.replace(cpu, image_size=128)


def run_studies_on(monkeypatch, data_root, results, base, studies):
    """Points `data_scripts.run_studies` at a small data folder, a results folder and the
    base configuration `base` for `studies`; returns the module."""
    from data_scripts import run_studies
    from retinanet_lib.splits import load_splits

    monkeypatch.setattr(run_studies, "RESULTS", results)
    monkeypatch.setattr(
        run_studies, "load_splits", lambda mode, cfg: load_splits(mode, cfg, data_root)
    )
    for study in studies:
        arms, seeds, _ = run_studies.STUDIES[study]
        monkeypatch.setitem(run_studies.STUDIES, study, (arms, seeds, lambda: base))
    return run_studies
