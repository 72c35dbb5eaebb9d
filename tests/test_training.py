import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import COLORS, make_image
from tlkeras import freezing
from tlkeras.config import StageConfig
from tlkeras.training import finetune, make_optimizer


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
    np.testing.assert_allclose(history["learning_rate"], [1e-2, 1e-2, 1e-4, 1e-4], rtol=1e-6)
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


def test_warmup_then_cosine_schedule():
    stage = StageConfig(epochs=4, schedule="cosine", warmup_epochs=1)
    optimizer = make_optimizer(stage, 0.1, steps_per_epoch=10)
    schedule = optimizer._learning_rate
    rates = [float(schedule(step)) for step in (0, 5, 10, 25, 40)]
    assert rates[0] == pytest.approx(0.0, abs=1e-9)
    assert rates[1] == pytest.approx(0.05, rel=1e-5)  # half-way through the warm-up
    assert rates[2] == pytest.approx(0.1, rel=1e-5)  # peak
    assert rates[3] == pytest.approx(0.05, rel=1e-4)  # half-way through the decay
    assert rates[4] == pytest.approx(0.0, abs=1e-7)


def test_warmup_then_constant_schedule():
    stage = StageConfig(epochs=3, schedule="constant", warmup_epochs=0.5)
    schedule = make_optimizer(stage, 0.02, steps_per_epoch=10)._learning_rate
    assert float(schedule(0)) == pytest.approx(0.0, abs=1e-9)
    assert [float(schedule(s)) for s in (5, 15, 29)] == pytest.approx([0.02, 0.02, 0.02], rel=1e-5)


def test_weight_decay_spares_biases_and_batch_norm():
    stage = StageConfig(optimizer="adamw", weight_decay=0.01)
    optimizer = make_optimizer(stage, 1e-3, None)
    bias = keras.Variable(np.ones(2), name="bias")
    kernel = keras.Variable(np.ones(2), name="kernel")
    assert not optimizer._use_weight_decay(bias)
    assert optimizer._use_weight_decay(kernel)


def test_early_stopping_restores_the_best_epoch(tiny_model):
    """A rate so high that validation loss blows up after the first epoch: the first epoch's weights come back."""
    ds, val = _color_dataset(), _color_dataset(2, seed=1)
    snapshots = []

    class Keep(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append((logs["val_loss"], tiny_model.get_layer("predictions").kernel.numpy().copy()))

    history = finetune(tiny_model, ds, val, stage1={"epochs": 6, "learning_rate": 5.0, "early_stopping": 1},
                       stage2={"epochs": 0}, callbacks=[Keep()], verbose=0)
    assert len(history["epoch"]) < 6  # it stopped
    best_loss, best_kernel = min(snapshots, key=lambda s: s[0])
    np.testing.assert_array_equal(tiny_model.get_layer("predictions").kernel.numpy(), best_kernel)

