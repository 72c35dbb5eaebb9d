import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import COLORS, make_image
from tlkeras import freezing
from tlkeras.training import finetune


def _color_dataset(n_per_class=6, size=32, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    colors = list(COLORS.values())[:classes]
    x = np.stack([make_image(rng, colors[i % classes], (size, size)) for i in range(n_per_class * classes)])
    y = np.arange(len(x)) % classes
    return tf.data.Dataset.from_tensor_slices((x.astype("float32"), y)).batch(6)


def _snapshot(model):
    """name -> array for every weight, backbone layers by their own names."""
    out = {}
    for layer in freezing.backbone_layers(model):
        for w in layer.weights:
            out[f"backbone/{layer.name}/{w.name}"] = w.numpy().copy()
    for layer in model.layers:
        if layer.name != "backbone":
            for w in layer.weights:
                out[f"{layer.name}/{w.name}"] = w.numpy().copy()
    return out


def _changed(before, after):
    return {k for k in before if not np.array_equal(before[k], after[k])}


def test_stage1_changes_only_the_head(tiny_model):
    before = _snapshot(tiny_model)
    finetune(tiny_model, _color_dataset(), stage1={"epochs": 2, "learning_rate": 1e-2}, stage2={"epochs": 0}, verbose=0)
    changed = _changed(before, _snapshot(tiny_model))
    assert changed == {"predictions/kernel", "predictions/bias"}
    # every backbone weight, BN moving statistics included, is bit-identical
    assert not any(k.startswith("backbone/") for k in changed)


def test_stage2_changes_exactly_the_unfrozen_layers_and_keeps_bn_statistics(tiny_model):
    ds = _color_dataset()
    finetune(tiny_model, ds, stage1={"epochs": 1}, stage2={"epochs": 0}, verbose=0)
    before = _snapshot(tiny_model)
    finetune(tiny_model, ds, stage1={"epochs": 0}, stage2={"epochs": 2, "unfreeze": "blocks:1", "learning_rate": 1e-3}, verbose=0)
    changed = _changed(before, _snapshot(tiny_model))
    changed_layers = {k.split("/")[1] for k in changed if k.startswith("backbone/")}
    assert changed_layers == {"block_16_expand", "block_16_depthwise", "block_16_project", "Conv_1"}
    assert {"predictions/kernel", "predictions/bias"} <= changed
    assert not any("moving_mean" in k or "moving_variance" in k for k in changed)
    assert not any("BN" in k or "_bn" in k for k in changed)


def test_train_bn_does_update_batch_norm_statistics(tiny_model):
    """The counterpart of the test above: the BN check can fail when BN trains."""
    before = _snapshot(tiny_model)
    finetune(tiny_model, _color_dataset(), stage1={"epochs": 0},
             stage2={"epochs": 1, "unfreeze": "blocks:1", "train_bn": True}, verbose=0)
    changed = _changed(before, _snapshot(tiny_model))
    assert "backbone/block_16_project_BN/moving_mean" in changed
    assert tiny_model.get_layer("backbone").get_layer("block_16_project_BN").momentum == 0.9
    assert "backbone/block_15_project_BN/moving_mean" not in changed


def test_history_counts_epochs_on_across_stages_with_each_stage_rate(tiny_model, tmp_path):
    history = finetune(
        tiny_model, _color_dataset(), _color_dataset(2, seed=1),
        stage1={"epochs": 2, "learning_rate": 1e-2}, stage2={"epochs": 2, "unfreeze": 4},
        run_dir=str(tmp_path), verbose=0,
    )
    assert history["epoch"] == [1, 2, 3, 4]
    assert history["stage"] == [1, 1, 2, 2]
    # the rate at the end of each epoch: stage 2 (default: peak = stage 1's / 3, cosine, warm-up
    # capped at half the stage) reaches its peak after the 3-step warm-up epoch and 0 at its end
    np.testing.assert_allclose(history["learning_rate"], [1e-2, 1e-2, 1e-2 / 3, 0.0], rtol=1e-6, atol=1e-9)
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history)
    with open(tmp_path / "history.json") as f:
        assert json.load(f) == history
    assert os.path.getsize(tmp_path / "checkpoints" / "best.weights.h5") > 0


def test_stage2_trainable_layers_file_lists_the_plan(tiny_model, tmp_path):
    finetune(tiny_model, _color_dataset(), stage1={"epochs": 0}, stage2={"epochs": 1, "unfreeze": 2},
             run_dir=str(tmp_path), verbose=0)
    assert (tmp_path / "stage2_trainable_layers.txt").read_text().split() == ["block_16_project", "Conv_1"]


def test_skipping_stage1_starts_stage2_at_epoch_one(tiny_model):
    history = finetune(tiny_model, _color_dataset(), stage1={"epochs": 0}, stage2={"epochs": 1, "unfreeze": 1}, verbose=0)
    assert history["epoch"] == [1] and history["stage"] == [2]


def test_binary_head_trains_with_a_sigmoid_unit(backbone_weights):
    import tlkeras
    from conftest import TINY

    model = tlkeras.build_model("mobilenetv2", 2, image_size=32, weights=backbone_weights,
                                backbone_options=TINY["backbone_options"])
    assert model.output_shape == (None, 1)
    assert model.get_layer("predictions").activation.__name__ == "sigmoid"
    history = finetune(model, _color_dataset(8, classes=2), stage1={"epochs": 4, "learning_rate": 3e-2},
                       stage2={"epochs": 0}, verbose=0)
    assert history["loss"][-1] < history["loss"][0]


def test_output_layer_stays_float32_under_mixed_precision(backbone_weights):
    import tlkeras
    from conftest import TINY

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = tlkeras.build_model("mobilenetv2", 3, image_size=32, weights=None, backbone_options=TINY["backbone_options"])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("head_pool").compute_dtype == "float16"
    assert model.get_layer("predictions").compute_dtype == "float32"
    assert model.output.dtype == "float32"


def test_early_stopping_restores_the_best_epoch(tiny_model):
    """Scripted validation losses (a callback ahead of tlkeras's own rewrites them, so float noise
    cannot change the story): best at epoch 2, worse at epoch 3 -> with early_stopping 1 the run
    stops after epoch 3 and epoch 2's weights come back."""
    ds, val = _color_dataset(), _color_dataset(2, seed=1)
    scripted = [3.0, 2.0, 2.5, 1.0, 1.0, 1.0]
    snapshots = []

    class Script(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = scripted[epoch]
            snapshots.append(tiny_model.get_layer("predictions").kernel.numpy().copy())

    history = finetune(tiny_model, ds, val, stage1={"epochs": 6, "learning_rate": 0.05, "early_stopping": 1},
                       stage2={"epochs": 0}, callbacks=[Script()], verbose=0)
    assert history["epoch"] == [1, 2, 3]
    assert not np.array_equal(snapshots[1], snapshots[2])  # epoch 3 did move the head
    np.testing.assert_array_equal(tiny_model.get_layer("predictions").kernel.numpy(), snapshots[1])



def _full_batch(n_per_class=4):
    ds = _color_dataset(n_per_class)
    return ds.unbatch().batch(3 * n_per_class)


@pytest.mark.parametrize("cache_features", [True, False])
def test_layer_decay_scales_each_block_update_by_decay_to_its_depth(backbone_weights, cache_features):
    """One full-batch SGD step from the same weights: with layer_decay 0.5 the top block moves
    half as far as without it, the block below a quarter, the head the same."""
    import tlkeras

    deltas = {}
    for decay in (None, 0.5):
        keras.utils.set_random_seed(0)
        model = tlkeras.build_model("mobilenetv2", 3, image_size=32, weights=backbone_weights,
                                    backbone_options={"alpha": 0.35})
        before = _snapshot(model)
        finetune(model, _full_batch(), stage1={"epochs": 0},
                 stage2={"epochs": 1, "unfreeze": "blocks:2", "optimizer": "sgd", "momentum": 0.0,
                         "learning_rate": 0.05, "layer_decay": decay},
                 cache_features=cache_features, inputs_random=False, verbose=0)
        after = _snapshot(model)
        deltas[decay] = {k: after[k] - before[k] for k in before}
    for key, factor in [("backbone/block_16_project/kernel", 0.5), ("backbone/Conv_1/kernel", 0.5),
                        ("backbone/block_15_expand/kernel", 0.25), ("predictions/kernel", 1.0)]:
        expected = factor * deltas[None][key]
        assert np.abs(expected).max() > 0
        # float32 weights ~0.1 quantise a 1e-7 step to ~4e-9: compare up to 0.1 % of the largest step
        np.testing.assert_allclose(deltas[0.5][key], expected, rtol=2e-3, atol=1e-3 * np.abs(expected).max())


def test_gradual_unfreezing_adds_a_block_on_the_stated_epochs(tiny_model):
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append((epoch + 1, [n for n in freezing.trainable_layer_names(tiny_model) if n != "predictions"]))

    history = finetune(tiny_model, _color_dataset(), stage1={"epochs": 1},
                       stage2={"epochs": 5, "unfreeze": "blocks:3", "gradual_unfreeze": 2},
                       callbacks=[Record()], inputs_random=False, verbose=0)
    assert history["epoch"] == [1, 2, 3, 4, 5, 6] and history["stage"] == [1, 2, 2, 2, 2, 2]
    tops = {epoch: names[0] if names else None for epoch, names in seen}
    assert tops == {1: None, 2: "block_16_expand", 3: "block_16_expand", 4: "block_15_expand",
                    5: "block_15_expand", 6: "block_14_expand"}


def test_a_nan_loss_stops_with_a_clear_error_and_keeps_finite_weights(tiny_model, tmp_path):
    from tlkeras.errors import TrainingError

    ds = _color_dataset()
    finetune(tiny_model, ds, _color_dataset(2, seed=1), stage1={"epochs": 1, "learning_rate": 1e-3},
             stage2={"epochs": 0}, run_dir=str(tmp_path), verbose=0)  # writes a best checkpoint
    good = tiny_model.get_layer("predictions").kernel.numpy().copy()
    # 1e38 drives the head's weights past float32's range within the first epoch
    with pytest.raises(TrainingError, match=r"the loss became NaN in epoch 1 at learning rate 1e\+38: training "
                                            r"stopped and the weights from before that epoch were put back; "
                                            r"the best epoch so far is in .*best.weights.h5. Lower "
                                            r"stage1.learning_rate \(e.g. to 1e\+37\) or find one with "
                                            r"`tlkeras find-lr --stage 1`"):
        finetune(tiny_model, ds, stage1={"epochs": 3, "learning_rate": 1e38}, stage2={"epochs": 0},
                 run_dir=str(tmp_path), verbose=0)
    np.testing.assert_array_equal(tiny_model.get_layer("predictions").kernel.numpy(), good)


def test_best_checkpoint_writes_once_at_the_end_and_puts_back_the_best_epoch(tmp_path):
    # Epochs of a cached stage take milliseconds: the best epoch is kept in memory and written when the run
    # ends, not at every improvement. The part that fits (the head) is a part of the whole model; when a later
    # stage begins the copy takes in the rest of the model, so that stage's changes to it are undone by put_back
    # too; a stage with no later one never copies the rest.
    from tlkeras.training import BestCheckpoint

    inputs = keras.Input((3,))
    body = keras.layers.Dense(4, name="body")
    head = keras.layers.Dense(2, name="head")
    whole = keras.Model(inputs, head(body(inputs)))
    features = keras.Input((4,))
    part = keras.Model(features, head(features))
    path = tmp_path / "best.weights.h5"
    best = BestCheckpoint(whole, str(path), "val_loss")  # the default interval: a minute
    best.set_model(part)

    def set_head(value):
        head.kernel.assign(np.full((4, 2), value, "float32"))

    for epoch, (value, loss) in enumerate([(1.0, 0.9), (2.0, 0.5), (3.0, 0.7)]):
        set_head(value)
        best.on_epoch_end(epoch, {"val_loss": loss})
    best.on_train_end()
    assert not path.exists() and best.pending and best.epoch == 2  # 1-based: the second epoch
    assert len(best.values) == len(head.weights)  # the head's alone: nothing else has changed
    stage_end_body = body.kernel.numpy().copy()
    best.set_model(whole)
    best.on_train_begin()  # a later stage begins
    assert len(best.values) == len(whole.weights)
    body.kernel.assign(np.zeros((3, 4), "float32"))  # ... and trains the body, for the worse
    set_head(4.0)
    best.on_epoch_end(3, {"val_loss": 0.8})
    best.flush()
    assert path.exists() and not best.pending
    written = path.stat().st_mtime_ns
    best.flush()  # nothing new: not written again
    assert path.stat().st_mtime_ns == written
    best.put_back()
    np.testing.assert_array_equal(head.kernel.numpy(), np.full((4, 2), 2.0))
    np.testing.assert_array_equal(body.kernel.numpy(), stage_end_body)
    whole.set_weights([np.zeros_like(w) for w in whole.get_weights()])
    whole.load_weights(str(path))  # the file holds the same epoch
    np.testing.assert_array_equal(head.kernel.numpy(), np.full((4, 2), 2.0))
    np.testing.assert_array_equal(body.kernel.numpy(), stage_end_body)


def test_the_best_epoch_is_the_most_accurate_and_the_loss_breaks_ties(tmp_path):
    """The epochs a user watched (issue 37): epoch 1 has the lowest loss but a third of the accuracy of epoch 3;
    epochs 3 and 4 are equally accurate and 4's loss is lower."""
    from tlkeras.training import BestCheckpoint
    from tlkeras.training.callbacks import AccuracyThenLoss
    from tlkeras.training.finetune import best_epoch_monitor
    from tlkeras.tasks import get_task

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(inputs))
    best = BestCheckpoint(model, str(tmp_path / "best.weights.h5"), AccuracyThenLoss("val_accuracy", "val_loss"))
    best.set_model(model)
    epochs = [(0.333, 1.201), (0.5, 1.4), (0.639, 1.27), (0.639, 1.25), (0.6, 0.9), (float("nan"), 0.1)]
    for epoch, (accuracy, loss) in enumerate(epochs):
        model.get_layer("head").kernel.assign(np.full((3, 2), float(epoch), "float32"))
        best.on_epoch_end(epoch, {"val_accuracy": accuracy, "val_loss": loss})
    assert best.epoch == 4
    best.put_back()
    np.testing.assert_array_equal(model.get_layer("head").kernel.numpy(), np.full((3, 2), 3.0))
    # which rule each Task asks for: single-label by its accuracy, multi-label by the loss
    assert repr(best_epoch_monitor(get_task("single_label"), validation=True)) == "val_accuracy (ties: val_loss)"
    assert best_epoch_monitor(get_task("multi_label"), validation=True) == "val_loss"
    assert repr(best_epoch_monitor(get_task("single_label"), validation=False)) == "accuracy (ties: loss)"
