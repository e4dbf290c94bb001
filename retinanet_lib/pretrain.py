"""Pre-training the small backbone on a source task, for transfer learning without ImageNet.

ImageNet weights cannot be downloaded on the machines this book is tested on, and the small
CPU backbone has none anyway. So the library pre-trains it here: an image classifier, "does
this X-ray have an opacity?", on a synthetic set of its own (`config.PretrainConfig`), whose
backbone then starts the detector. The weights this module trains with the default settings
ship with the package (`SHIPPED_BACKBONE_WEIGHTS`, about 1 MB, with a JSON file that records
how they were made); `data_scripts/pretrain_backbone.py` makes them again. They are **not**
ImageNet weights: their source is far closer to the detection task than ImageNet is.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from retinanet_lib.config import PretrainConfig, RetinaNetConfig, replace_section
from retinanet_lib.metrics import image_level_scores
from retinanet_lib.model import build_backbone
from retinanet_lib.pipeline import Records, make_dataset, make_records, positive_image_mask
from retinanet_lib.preprocess import to_model_input
from retinanet_lib.rsna import LABELS_FILE, data_root, load_rsna_labels, split_patients
from retinanet_lib.synthetic import ensure_synthetic_rsna
from retinanet_lib.weights import SMALL_RESNET_OPACITY

__all__ = [
    "SHIPPED_BACKBONE_WEIGHTS",
    "PretrainResult",
    "build_opacity_classifier",
    "classification_dataset",
    "load_pretrain_source",
    "precise_batchnorm",
    "pretrain_backbone",
    "read_provenance",
    "save_backbone_weights",
    "transfer_configs",
]

#: The small backbone pre-trained with `PretrainConfig()` at 256 px (the CPU default's size);
#: `ModelConfig(backbone_weights="opacity")` loads it.
SHIPPED_BACKBONE_WEIGHTS = SMALL_RESNET_OPACITY
#: Name of the classifier's output layer (one logit: "has an opacity").
LOGIT_LAYER = "opacity_logit"


def transfer_configs(cfg: RetinaNetConfig) -> dict[str, RetinaNetConfig]:
    """The transfer-learning levels of Chapter 6, as changes of `cfg` (the same epochs, rates
    and data for every one).

    Every arm but the first starts from the shipped pre-trained backbone
    (`backbone_weights="opacity"`) with its batch normalisation in inference mode throughout
    (`freeze_backbone_batchnorm`), as Keras's transfer-learning guide advises.

    Raises:
        ValueError: If `cfg` does not use the small backbone (the shipped weights are for it).

    Returns:
        Arm name -> configuration: "from scratch" (`cfg` itself); "frozen backbone (level 2)";
        "top stages unfrozen (level 3)" (stem, C2 and C3 frozen; C4 and C5 train);
        "fine-tuned, backbone at 1/10 rate (level 4)"; "blog: unfrozen from the start" (every
        weight at the full rate); "blog: unfrozen after 15 epochs" (the backbone's rate is 0
        for 15 epochs' worth of optimizer steps, then the full rate).
    """
    if cfg.model.backbone != "small_resnet":
        raise ValueError(
            "The transfer levels start from the shipped small-backbone weights (CPU default, "
            f"RETINANET_MODE=cpu); this configuration uses {cfg.model.backbone!r}."
        )
    start = {"backbone_weights": "opacity", "freeze_backbone_batchnorm": True}
    pretrained = replace_section(cfg, "model", **start)
    levels = {
        "frozen backbone (level 2)": ("model", {"freeze_backbone": True}),
        "top stages unfrozen (level 3)": (
            "model",
            {"frozen_backbone_stages": ("stem", "c2", "c3")},
        ),
        "fine-tuned, backbone at 1/10 rate (level 4)": (
            "train",
            {"backbone_learning_rate_factor": 0.1},
        ),
        "blog: unfrozen from the start": ("train", {}),
        "blog: unfrozen after 15 epochs": ("train", {"backbone_frozen_epochs": 15}),
    }
    arms = {"from scratch": cfg}
    for name, (section, changes) in levels.items():
        arms[name] = replace_section(pretrained, section, **changes)
    return arms


def load_pretrain_source(cfg: PretrainConfig, root: str | Path | None = None):
    """The source images, generated on first use in `data_root() / "synthetic_pretrain"`.

    Returns:
        `(train, validation)` records, split by patient.
    """
    folder = Path(root) if root is not None else data_root() / "synthetic_pretrain"
    folder = ensure_synthetic_rsna(folder, cfg.source, progress=False)
    labels = load_rsna_labels(folder / LABELS_FILE)
    train_ids, val_ids = split_patients(labels, cfg.validation_fraction, seed=cfg.seed)
    return make_records(folder, labels, train_ids), make_records(folder, labels, val_ids)


def build_opacity_classifier(cfg: RetinaNetConfig) -> keras.Model:
    """The detector's backbone (randomly initialised, trainable) with a classification head:
    global average pooling of C5, then one dense logit.

    Args:
        cfg: Image size and backbone settings (pre-trained weights and freezing are ignored).

    Returns:
        `keras.Model` named "opacity_classifier": `(B, S, S, 3)` -> `(B, 1)` logits, with the
        backbone as its sub-model `backbone_*`.
    """
    model_cfg = dataclasses.replace(
        cfg.model,
        backbone_weights=None,
        freeze_backbone=False,
        frozen_backbone_stages=(),
        freeze_backbone_batchnorm=False,
    )
    size = cfg.image_size
    inputs = keras.Input((size, size, 3), name="image")
    backbone = build_backbone(model_cfg, (size, size, 3))
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(inputs)[-1])
    logits = keras.layers.Dense(1, name=LOGIT_LAYER)(pooled)
    return keras.Model(inputs, logits, name="opacity_classifier")


def classification_dataset(
    records: Records, cfg: RetinaNetConfig, batch_size: int, training: bool
) -> tf.data.Dataset:
    """Batches of `(images (B, S, S, 3) float32, has_opacity (B, 1) float32)`, through the
    detector's own pipeline (decoding, CLAHE, resizing, augmentation with `cfg.data`)."""
    images = make_dataset(records, cfg, batch_size, training, encode=False)
    backbone = cfg.model.backbone

    def to_pair(image, boxes_xyxy):
        label = tf.cast(tf.shape(boxes_xyxy)[0] > 0, tf.float32)[None]
        return to_model_input(image, backbone), label

    pairs = images.map(to_pair, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return pairs.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)


@dataclass(frozen=True)
class PretrainResult:
    """A pre-trained classifier and how it did.

    Attributes:
        classifier: The classifier (its backbone is what transfers).
        history: Loss and accuracy per epoch, training and validation.
        validation: Image-level scores on the source validation images at probability 0.5
            (`accuracy`, `recall`, `precision`, `specificity`, `images`), after
            `precise_batchnorm`.
        seconds: Training time.
    """

    classifier: keras.Model
    history: pd.DataFrame
    validation: dict
    seconds: float


def pretrain_backbone(
    cfg: RetinaNetConfig,
    pretrain_cfg: PretrainConfig,
    train_records: Records,
    val_records: Records,
    verbose: int = 0,
) -> PretrainResult:
    """Trains `build_opacity_classifier` with binary cross-entropy and Adam (cosine decay of
    the rate to 0), then recomputes its batch-normalisation statistics (`precise_batchnorm`)
    over the training images, unaugmented, as inference sees them.

    Args:
        cfg: Image size, backbone and augmentation (`cfg.data`) of the detector.
        pretrain_cfg: Epochs, batch size, learning rate and seed.
        train_records: Source training images.
        val_records: Source validation images.
        verbose: Keras `fit` verbosity.

    Returns:
        The classifier, its history and its validation scores.
    """
    cfg = replace_section(cfg, "train", seed=pretrain_cfg.seed)
    keras.utils.set_random_seed(pretrain_cfg.seed)
    tf.config.experimental.enable_op_determinism()
    classifier = build_opacity_classifier(cfg)
    for layer in _batchnorm_layers(classifier):
        layer.momentum = pretrain_cfg.batchnorm_momentum
    steps = len(train_records) // pretrain_cfg.batch_size
    rate = keras.optimizers.schedules.CosineDecay(  # settles the weights (and the batch-norm
        pretrain_cfg.learning_rate,
        pretrain_cfg.epochs * steps,  # statistics) towards the end
    )
    classifier.compile(
        optimizer=keras.optimizers.Adam(rate),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")],
    )
    train = classification_dataset(train_records, cfg, pretrain_cfg.batch_size, True)
    val = classification_dataset(val_records, cfg, pretrain_cfg.batch_size, False)
    start = time.perf_counter()
    fit = classifier.fit(
        train, validation_data=val, epochs=pretrain_cfg.epochs, verbose=verbose, shuffle=False
    )
    plain_train = classification_dataset(train_records, cfg, pretrain_cfg.batch_size, False)
    precise_batchnorm(classifier, plain_train)
    seconds = time.perf_counter() - start
    logits = classifier.predict(val, verbose=0)[:, 0]
    truth = positive_image_mask(val_records)
    level = image_level_scores(truth, logits > 0)
    validation = {
        "accuracy": float(np.mean((logits > 0) == truth)),
        "recall": level.recall,
        "precision": level.precision,
        "specificity": level.specificity,
        "images": len(val_records),
    }
    history = pd.DataFrame(fit.history).rename_axis("epoch")
    history.index += 1
    return PretrainResult(classifier, history, validation, seconds)


def _batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(_batchnorm_layers(layer))
    return found


def precise_batchnorm(model: keras.Model, dataset: tf.data.Dataset) -> int:
    """Replaces every batch-normalisation layer's moving statistics by their average over
    the batches of `dataset`, computed with the final weights ("precise BN", as in
    Detectron2 and pycls; Wu and Johnson, 2021).

    During training the moving averages trail weights that keep changing; a classifier that
    scored 0.9 on its training batches scored 0.5 on the same images in inference mode (the
    first pre-training runs here). Only the statistics change, never a weight. The layer's
    own update `moving = momentum * moving + (1 - momentum) * batch`, run with momentum
    `(k - 1) / k` at batch `k`, leaves the plain mean of the batch statistics.

    Returns:
        The number of batches used.
    """
    layers = _batchnorm_layers(model)
    momenta = [layer.momentum for layer in layers]
    count = 0
    try:
        for count, (images, _) in enumerate(dataset, start=1):
            for layer in layers:
                layer.momentum = (count - 1) / count
            model(images, training=True)  # eager: each call reads the momentum just set
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return count


def backbone_of_classifier(classifier: keras.Model) -> keras.Model:
    """The backbone sub-model of `build_opacity_classifier`'s model."""
    return next(layer for layer in classifier.layers if layer.name.startswith("backbone"))


def save_backbone_weights(result: PretrainResult, path: str | Path, provenance: dict) -> Path:
    """Writes the backbone's weights (`*.weights.h5`, loadable with
    `ModelConfig(backbone_weights=path)`) and, next to them, a JSON file with `provenance`
    and the classifier's validation scores.

    Returns:
        The weights path.
    """
    path = Path(path)
    if not path.name.endswith(".weights.h5"):
        raise ValueError(f"Keras weights files end in '.weights.h5'; got {path.name}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    backbone_of_classifier(result.classifier).save_weights(path)
    record = {
        **provenance,
        "validation": {k: round(float(v), 4) for k, v in result.validation.items()},
        "train_seconds": round(result.seconds, 1),
        "final_epoch": {k: round(float(v), 4) for k, v in result.history.iloc[-1].items()},
    }
    path.with_suffix("").with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return path


def read_provenance(path: str | Path = SHIPPED_BACKBONE_WEIGHTS) -> dict:
    """The JSON record written next to a weights file by `save_backbone_weights`."""
    return json.loads(Path(path).with_suffix("").with_suffix(".json").read_text())
