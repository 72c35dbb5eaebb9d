"""Metrics of a trained model - in memory, a run directory or an exported SavedModel - on labelled data."""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from tlkeras.model import model_info, predict_function, to_probabilities
from tlkeras.rundir import run_examples  # noqa: F401  (where it lived before)


def predict_probabilities(model, ds: tf.data.Dataset, *, part=None, views=()) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, C], labels [N] or multi-hot [N, C]) over a batched dataset of (inputs, label).

    With `part` (a part of `model` sharing its layers, e.g. `FinetuneHistory.cached_validation.model`),
    `ds` holds that part's inputs - what the frozen layers below it output, cached - and the outputs are
    `part`'s, read as `model`'s Task reads them. `views` (test-time augmentation, `Inputs.tta_views`): functions
    of a batch whose probabilities are averaged with the batch's own.
    """
    predict = predict_function(model) if part is None else _part_function(part, ds)
    probs, labels = [], []
    for images, y in ds:
        p = np.asarray(to_probabilities(predict(images), model))
        for view in views:
            p = p + np.asarray(to_probabilities(predict(view(images)), model))
        probs.append(p / (1 + len(views)))
        labels.append(np.asarray(y))
    if not probs:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(probs), _as_labels(np.concatenate(labels))


def _part_function(part, ds: tf.data.Dataset):
    """`part`'s outputs on its cached inputs, traced once for any batch size (graph mode, as `predict_function`)."""
    spec = keras.tree.map_structure(lambda s: tf.TensorSpec([None, *s.shape[1:]], s.dtype), ds.element_spec[0])
    return tf.function(lambda inputs: part(inputs, training=False), input_signature=[spec])


def _as_labels(labels: np.ndarray) -> np.ndarray:
    return labels.astype(np.int64) if labels.ndim == 1 else labels.astype(np.float32)


def evaluate_model(model, ds: tf.data.Dataset, class_names: list[str], top_k: int = 5) -> dict:
    """Metrics of `model` on a batched (inputs, label) dataset, as its Task reports them (see `tlkeras.metrics`)."""
    probabilities, labels = predict_probabilities(model, ds)
    info = model_info(model)
    return info.task_role.metrics(probabilities, labels, class_names, top_k=top_k, decision=info.decision)


def evaluate_run(path: str, data=None, *, batch_size: int = 32, top_k: int = 5, write: bool = False,
                 safe_mode: bool = True, tta: str = "none") -> dict:
    """Metrics of a finished run's model, or of an exported SavedModel, on labelled examples.

    `path` is a run directory (its model.keras) or an export (`run/export` or `run/export/3`,
    served through its `serving_default` signature from the image bytes, as TF Serving would).
    `data` is a folder of class subfolders, a CSV or "tfds:..."; without it, the run's own
    validation split is rebuilt from its config.yaml (same data, val_split and seed, so the same
    examples). The metrics are those of the model's Task, at its own thresholds for multi-label.
    With `write`, a run directory's metrics.json is rewritten with the result. `tta` ("flip", "flip_all") averages
    the probabilities of those views of each input with its own (a run directory's model; an export answers as
    it was exported).

    Example (after `tlkeras train ... --output-dir runs/flowers`):

        evaluate_run("runs/flowers", "photos/test")["per_class"]["tulip"]["recall"]
    """
    from tlkeras.inputs import get_inputs
    from tlkeras.predict import is_export, load_export
    from tlkeras.rundir import load_run
    from tlkeras.tasks import get_task
    from tlkeras.atomic import write_json_atomic

    from tlkeras.errors import TlkerasError

    if is_export(path):
        if tta != "none":
            raise TlkerasError(f"tta: an export answers each input as it was exported; evaluate the run directory "
                               f"with --tta {tta} instead.")
        export = load_export(path)
        run_dir = os.path.dirname(os.path.dirname(export.path))  # run/export/<version>
        task, decision, kind = get_task(export.task), export.decision, get_inputs(export.inputs)
        examples, skipped = run_examples(run_dir, data, export.class_names, inputs=kind.name, task=task.name)
        probabilities, labels = _serve_examples(export.serve, examples, batch_size, kind)
        class_names, source = export.class_names, export.path
    else:
        model, class_names, _ = load_run(path, safe_mode=safe_mode)
        info = model_info(model)
        task, decision, kind = info.task_role, info.decision, get_inputs(info.inputs)
        examples, skipped = run_examples(path, data, class_names, inputs=kind.name, task=task.name)
        probabilities, labels = predict_probabilities(model, kind.evaluation_pipeline(examples, model, batch_size),
                                                      views=kind.tta_views(tta))
        source = path
    metrics = task.metrics(probabilities, labels, class_names, top_k=top_k, decision=decision)
    metrics["skipped_files"] = len(skipped)
    metrics["evaluated"] = source
    metrics["inputs"] = kind.name  # what was counted (images, texts)
    if tta != "none":
        metrics["tta"] = tta
    if write and not is_export(path):
        write_json_atomic(os.path.join(path, "metrics.json"), {"split": "data" if data else "validation", **metrics})
    return metrics


def format_evaluation(metrics: dict) -> str:
    """The console report of `evaluate_run`'s metrics, as their Task writes it."""
    from tlkeras.tasks import task_of_metrics

    from tlkeras.inputs import get_inputs

    return task_of_metrics(metrics).format_metrics(metrics, noun=get_inputs(metrics.get("inputs", "image")).noun)


def _serve_examples(serve, examples, batch_size: int, kind) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of an export fed what its clients send (`kind.example_payloads`), and the labels."""
    probs = []
    rows = np.arange(len(examples.labels))
    for start in range(0, len(rows), batch_size):
        payloads = kind.example_payloads(examples, rows[start : start + batch_size])
        request = kind.request(payloads)
        probs.append(serve(**{name: tf.constant(values) for name, values in request.items()})["probabilities"].numpy())
    if not probs:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(probs), _as_labels(np.asarray(examples.labels))
