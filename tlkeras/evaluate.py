"""Metrics of a trained model - in memory, a run directory or an exported SavedModel - on labelled data."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from tlkeras.metrics import classification_metrics
from tlkeras.model import predict_function, to_probabilities


def predict_probabilities(model, ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, C], labels [N]) over a batched dataset of (pixels, label)."""
    predict = predict_function(model)
    probs, labels = [], []
    for images, y in ds:
        probs.append(np.asarray(to_probabilities(predict(images))))
        labels.append(np.asarray(y))
    if not probs:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(probs), np.concatenate(labels).astype(np.int64)


def evaluate_model(model, ds: tf.data.Dataset, class_names: list[str], top_k: int = 5) -> dict:
    """Metrics of `model` on a batched (pixels, label) dataset (see `tlkeras.metrics`)."""
    probabilities, labels = predict_probabilities(model, ds)
    return classification_metrics(probabilities, labels, class_names, top_k=top_k)


def run_examples(path: str, data, class_names: list[str], split: str = "val", text: bool = False):
    """Labelled examples: `data`, or the run's own validation (or training) split rebuilt from
    config.yaml. `text`: the run is a text classifier (a CSV or folder of .txt files)."""
    import functools

    from tlkeras.config import FinetuneConfig
    from tlkeras.data.datasets import load_examples, stratified_split
    from tlkeras.data.text import load_text_examples
    from tlkeras.errors import DataError
    from tlkeras.rundir import CONFIG_FILE

    config_path = os.path.join(path, CONFIG_FILE)
    cfg = FinetuneConfig.from_yaml(config_path) if os.path.isfile(config_path) else None
    load = load_examples
    if text:
        columns = {"text_column": cfg.text_column, "label_column": cfg.label_column} if cfg else {}
        load = functools.partial(load_text_examples, **columns)
    if data is not None:
        examples, _, skipped = load(data, "data", class_names)
        return examples, skipped
    if cfg is None or not isinstance(cfg.data, str):
        raise DataError(f"{path!r} has no config.yaml naming a data folder; pass --data to evaluate on a folder.")
    if cfg.val_data is not None:
        examples, _, skipped = load(cfg.data if split == "train" else cfg.val_data,
                                    "data" if split == "train" else "val_data", class_names)
        return examples, skipped
    examples, _, skipped = load(cfg.data, "data", class_names)
    train_rows, val_rows = stratified_split(examples.labels, cfg.val_split, cfg.seed)
    rows = train_rows if split == "train" else val_rows
    if not len(rows):
        raise DataError(f"{path!r} had no {'training' if split == 'train' else 'validation'} split; pass --data.")
    return examples.subset(rows), skipped


def evaluate_run(path: str, data=None, *, batch_size: int = 32, top_k: int = 5, write: bool = False,
                 safe_mode: bool = True) -> dict:
    """Metrics of a finished run's model, or of an exported SavedModel, on labelled images.

    `path` is a run directory (its model.keras) or an export (`run/export` or `run/export/3`,
    served through its `serving_default` signature from the image bytes, as TF Serving would).
    `data` is a folder of class subfolders or "tfds:..."; without it, the run's own validation
    split is rebuilt from its config.yaml (same data, val_split and seed, so the same images).
    With `write`, a run directory's metrics.json is rewritten with the result.

    Example (after `tlkeras train ... --output-dir runs/flowers`):

        evaluate_run("runs/flowers", "photos/test")["per_class"]["tulip"]["recall"]
    """
    from tlkeras.data.datasets import build_pipeline
    from tlkeras.data.text import text_pipeline
    from tlkeras.model import image_size_of, is_text_model
    from tlkeras.predict import export_input, is_export, load_export
    from tlkeras.rundir import load_run
    from tlkeras.utils import write_json_atomic

    if is_export(path):
        serve, class_names, export_dir = load_export(path)
        run_dir = os.path.dirname(os.path.dirname(export_dir))  # run/export/<version>
        text = export_input(serve) == "text"
        examples, skipped = run_examples(run_dir, data, class_names, text=text)
        probabilities, labels = _serve_examples(serve, examples, batch_size, text)
        source = export_dir
    else:
        model, class_names, _ = load_run(path, safe_mode=safe_mode)
        text = is_text_model(model)
        examples, skipped = run_examples(path, data, class_names, text=text)
        if text:
            ds = text_pipeline(examples, batch_size, training=False, seed=0)
        else:
            ds = build_pipeline(examples, image_size_of(model), batch_size, training=False, cache=False, seed=0)
        probabilities, labels = predict_probabilities(model, ds)
        source = path
    metrics = classification_metrics(probabilities, labels, class_names, top_k=top_k)
    metrics["skipped_files"] = len(skipped)
    metrics["evaluated"] = source
    if write and not is_export(path):
        write_json_atomic(os.path.join(path, "metrics.json"), {"split": "data" if data else "validation", **metrics})
    return metrics


def _serve_examples(serve, examples, batch_size: int, text: bool = False) -> tuple[np.ndarray, np.ndarray]:
    probs = []
    rows = np.arange(len(examples.labels))
    for start in range(0, len(rows), batch_size):
        if text:
            batch = [examples.texts[i] for i in rows[start : start + batch_size]]
            probs.append(serve(text=tf.constant(batch, dtype=tf.string))["probabilities"].numpy())
            continue
        blobs = examples.encoded(rows[start : start + batch_size])
        probs.append(serve(image_bytes=tf.constant(blobs))["probabilities"].numpy())
    if not probs:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(probs), np.asarray(examples.labels, np.int64)
