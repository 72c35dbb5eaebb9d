"""The shared contract every kind of run keeps (keras-hub's `run_task_test` shape): run it over each
backbone source x task x inputs kind.

- stage 1 leaves the backbone bit-identical;
- stage 2 changes only what `unfreeze` allows (the layers, or a hub module's variables, listed in
  stage2_trainable_layers.txt), and
  BatchNormalization statistics stay fixed;
- the `.keras` file reloads (safe mode) with the same metadata and predicts identically;
- the export's `serving_default` answers as `model.predict` within 1e-5 and returns the Task's
  outputs, consistent with its probabilities (a regression's values).
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import tensorflow as tf

from tlkeras import freezing
from tlkeras.export.serving_client import signature_def
from tlkeras.model import get_backbone, model_info

EXPORT_TOLERANCE = 1e-5
RELOAD_TOLERANCE = 1e-6
_MOVING = ("moving_mean", "moving_variance")


def backbone_arrays(model) -> list[tuple[str, np.ndarray]]:
    """(path, value) of every backbone weight, in order (paths differ between two builds, order does not)."""
    return [(w.path, np.array(w.numpy())) for w in get_backbone(model).weights]


def changed_weights(before, after) -> set[str]:
    assert [p for p, _ in before] == [p for p, _ in after] or len(before) == len(after)
    return {path for (path, a), (_, b) in zip(after, before) if not np.array_equal(a, b)}


def check_stage1_leaves_backbone(initial, result) -> None:
    assert result.history["stage"] and set(result.history["stage"]) == {1}
    assert changed_weights(initial, backbone_arrays(result.model)) == set()


def check_stage2_changes_what_unfreeze_allows(initial, result) -> None:
    """Every changed backbone weight belongs to a layer that stage 2 trained (per the run's own
    stage2_trainable_layers.txt), each such layer's kernel moved, and no moving statistic moved."""
    with open(os.path.join(result.run_dir, "stage2_trainable_layers.txt"), encoding="utf-8") as f:
        trained = {line.strip() for line in f if line.strip()}
    moved = changed_weights(initial, backbone_arrays(result.model))
    assert moved, "stage 2 changed nothing in the backbone"
    unit_of = trainable_units(result.model)
    assert {unit_of[path] for path in moved} <= trained, (sorted(moved), sorted(trained))
    assert not any(path.endswith(_MOVING) for path in moved)


def trainable_units(model) -> dict:
    """{backbone weight path: the unit stage 2 names for it}: its layer, or a hub module's variable."""
    module = freezing.hub_module(model)
    if module is not None:
        return {weight.path: name for name, weight, _ in module.named_variables()}
    return {w.path: w.path.split("/")[0] for w in get_backbone(model).weights}


def check_reload_predicts_identically(result, inputs) -> None:
    model = keras.models.load_model(os.path.join(result.run_dir, "model.keras"), safe_mode=True)
    assert model_info(model) == model_info(result.model)
    np.testing.assert_allclose(model.predict(inputs, verbose=0), result.model.predict(inputs, verbose=0),
                               atol=RELOAD_TOLERANCE)


def check_export_answers_as_the_model(result, served_inputs: dict, model_inputs) -> dict:
    """Run the export's serving_default; its probabilities match model.predict (1e-5) and its outputs
    are the Task's: top-k classes for single-label, labels at the thresholds for multi-label, the values (with
    the targets' scaling in the card) for regression."""
    info = model_info(result.model)
    served = tf.saved_model.load(result.export_dir).signatures["serving_default"](**served_inputs)
    expected = np.asarray(info.task_role.to_probabilities(result.model.predict(model_inputs, verbose=0)))
    probabilities = served[info.task_role.output_key].numpy()
    np.testing.assert_allclose(probabilities, expected, atol=EXPORT_TOLERANCE)
    names = np.array(result.class_names)
    outputs = set(signature_def(result.export_dir).outputs)
    if "image_bytes" in served_inputs:  # images: each item's status beside the Task's outputs
        assert outputs >= {"error"} and not any(served["error"].numpy())
        outputs -= {"error"}
    with open(os.path.join(result.export_dir, "assets", "model_card.json"), encoding="utf-8") as f:
        card = json.load(f)
    if info.task == "regression":
        assert outputs == {"value"} and probabilities.shape[1] == len(names)
        assert card["task_options"] == info.task_options and set(info.task_options) >= {"mean", "std"}
    elif info.task == "multi_label":
        assert outputs == {"probabilities", "labels", "label_count"}
        thresholds = np.array(info.decision["thresholds"])
        above = probabilities >= thresholds
        labels = served["labels"].numpy().astype(str)
        np.testing.assert_array_equal(labels, np.where(above, names, ""))
        np.testing.assert_array_equal(served["label_count"].numpy(), above.sum(axis=1))
    else:
        assert outputs == {"probabilities", "classes", "scores"}
        best = served["classes"].numpy()[:, 0].astype(str)
        np.testing.assert_array_equal(best, names[probabilities.argmax(axis=1)])
    assert card["task_name"] == info.task and card["decision"] == info.decision
    return {k: v.numpy() for k, v in served.items()}
