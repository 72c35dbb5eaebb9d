"""Metrics of a trained model on labelled data."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

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


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, cross-entropy loss and per-class accuracy from probabilities and true labels.

    >>> p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    >>> m = classification_metrics(p, np.array([0, 1, 1]), ["a", "b"])
    >>> round(m["accuracy"], 4), m["count"], m["per_class_accuracy"]
    (0.6667, 3, {'a': 1.0, 'b': 0.5})
    """
    n = len(labels)
    if n == 0:
        return {"count": 0}
    predicted = probabilities.argmax(axis=1)
    eps = 1e-7
    picked = np.clip(probabilities[np.arange(n), labels], eps, 1.0)
    per_class = {}
    for c, name in enumerate(class_names):
        rows = labels == c
        if rows.any():
            per_class[name] = float((predicted[rows] == c).mean())
    return {
        "count": int(n),
        "accuracy": float((predicted == labels).mean()),
        "loss": float(-np.log(picked).mean()),
        "per_class_accuracy": per_class,
    }


def evaluate_model(model, ds: tf.data.Dataset, class_names: list[str]) -> dict:
    """Metrics of `model` on a batched (pixels, label) dataset."""
    probabilities, labels = predict_probabilities(model, ds)
    return classification_metrics(probabilities, labels, class_names)


def evaluate_run(run_dir: str, data=None, *, batch_size: int = 32) -> dict:
    """Metrics of a finished run's model on `data` (a folder of class subfolders, "tfds:...").

    Without `data`, the run's own validation split is rebuilt from its config.yaml (same
    data, val_split and seed, so the same images).

    Example (after `tlkeras train ... --output-dir runs/flowers`):

        evaluate_run("runs/flowers", "photos/test")["accuracy"]
    """
    from tlkeras.data.datasets import build_pipeline, load_examples, stratified_split
    from tlkeras.errors import DataError
    from tlkeras.model import image_size_of
    from tlkeras.rundir import load_run

    model, class_names, cfg = load_run(run_dir)
    if data is not None:
        examples, _, skipped = load_examples(data, "data", class_names)
    else:
        if cfg is None or not isinstance(cfg.data, str):
            raise DataError(f"{run_dir!r} was trained on in-memory data; pass --data to evaluate on a folder.")
        if cfg.val_data is not None:
            examples, _, skipped = load_examples(cfg.val_data, "val_data", class_names)
        else:
            examples, _, skipped = load_examples(cfg.data, "data", class_names)
            _, val_rows = stratified_split(examples.labels, cfg.val_split, cfg.seed)
            if not len(val_rows):
                raise DataError(f"{run_dir!r} had no validation split; pass --data to evaluate.")
            examples = examples.subset(val_rows)
    ds = build_pipeline(examples, image_size_of(model), batch_size, training=False, cache=False, seed=0)
    metrics = evaluate_model(model, ds, class_names)
    metrics["skipped_files"] = len(skipped)
    return metrics
