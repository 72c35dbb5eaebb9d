"""Mixing (`tlkeras.mixing`): MixUp / CutMix of training images and feature mixup of cached inputs, labels mixed as
the Task's soft targets; only training batches are mixed, and the losses and metrics take both kinds of label."""

import numpy as np
import pytest
import tensorflow as tf

import tlkeras
from tlkeras.errors import ConfigError, DataError
from tlkeras.mixing import Mixing, mix_features
from tlkeras.steploop import fit_arrays
from tlkeras.tasks import get_task


def test_feature_mixup_mixes_inputs_and_targets_alike_and_a_seed_mixes_one_way():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(64, 5)), tf.float32)
    labels = tf.constant(np.arange(64) % 4)
    targets = get_task("single_label").soft_targets(labels, 4)
    mixed, soft = mix_features(x, targets, 0.4, tf.constant([3, 7]))
    np.testing.assert_allclose(tf.reduce_sum(soft, axis=1), np.ones(64), atol=1e-6)  # rows of shares
    assert float(tf.reduce_max(tf.abs(mixed - x))) > 0.1  # the inputs did change
    # Each mixed row lies on the segment between its own row and one other row, at the weight its target says.
    own = soft.numpy()[np.arange(64), labels.numpy()]
    for i in range(64):
        other = (mixed[i] - own[i] * x[i]) / max(1 - own[i], 1e-6)
        if 1 - own[i] > 1e-3:
            assert np.min(np.abs(x.numpy() - other.numpy()).max(axis=1)) < 1e-3
    again, _ = mix_features(x, targets, 0.4, tf.constant([3, 7]))
    other_seed, _ = mix_features(x, targets, 0.4, tf.constant([3, 8]))
    np.testing.assert_array_equal(again, mixed)
    assert not np.allclose(other_seed, mixed)


@pytest.mark.parametrize("task, labels, units", [
    ("single_label", np.array([0, 1, 2, 1]), 3),
    ("single_label", np.array([0, 1, 1, 0]), 1),  # two classes: one sigmoid unit
    ("multi_label", np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], np.float32), 3),
])
def test_the_losses_take_soft_targets_and_plain_labels_alike(task, labels, units):
    task = get_task(task)
    loss = task.loss(units, soft=True)
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, units)).astype("float32")
    probabilities = tf.sigmoid(logits) if units == 1 or task.name == "multi_label" else tf.nn.softmax(logits)
    soft = task.soft_targets(tf.constant(labels), units)
    # Unmixed soft targets are the labels: the loss is the same either way.
    np.testing.assert_allclose(float(loss(soft, probabilities)), float(loss(labels, probabilities)), rtol=1e-5)
    # A mix of two targets costs the same mix of their losses (cross-entropy is linear in the target).
    order = [1, 0, 3, 2]
    mixed = 0.3 * soft + 0.7 * tf.gather(soft, order)
    each = loss.call(soft, probabilities) * 0.3 + loss.call(tf.gather(soft, order), probabilities) * 0.7
    np.testing.assert_allclose(loss.call(mixed, probabilities), each, rtol=1e-5)
    metric = task.training_metrics(soft=True)[0]
    metric.update_state(soft, probabilities)
    plain = float(metric.result())
    metric.reset_state()
    metric.update_state(tf.constant(labels), probabilities)
    assert float(metric.result()) == pytest.approx(plain)


@pytest.mark.parametrize("mixing", [Mixing(mixup=0.4, seed=1), Mixing(cutmix=1.0, seed=1),
                                    Mixing(mixup=0.4, cutmix=1.0, seed=1)])
def test_the_image_mixers_change_training_images_and_mix_their_labels(mixing):
    rng = np.random.default_rng(2)
    pixels = rng.uniform(0, 255, (16, 16, 16, 3)).astype("float32")
    labels = np.arange(16) % 4
    ds = tf.data.Dataset.from_tensor_slices((pixels, labels)).batch(8)
    batches = list(_mixed(mixing, ds, "single_label", 4))
    mixed = np.concatenate([b[0].numpy() for b in batches])
    soft = np.concatenate([b[1].numpy() for b in batches])
    assert soft.shape == (16, 4)
    np.testing.assert_allclose(soft.sum(axis=1), np.ones(16), atol=1e-5)
    assert np.abs(mixed - pixels).max() > 1.0
    assert mixed.min() >= 0 and mixed.max() <= 255  # still pixels of the same range
    assert np.all(soft[np.arange(16), labels] >= 0.0) and (soft.max(axis=1) < 1 - 1e-3).any()


def _mixed(mixing, ds, task, units):
    """`ds` through the image mixer as the training pipeline runs it (one batch at a time, numbered)."""
    mix = mixing.image_mixer(get_task(task), units)
    return ds.enumerate().map(lambda index, batch: mix(index, *batch))


def test_multi_label_targets_mix_into_shares_of_each_label():
    pixels = np.random.default_rng(3).uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    labels = np.eye(3, dtype="float32")[np.arange(8) % 3]
    ds = tf.data.Dataset.from_tensor_slices((pixels, labels)).batch(8)
    _, soft = next(iter(_mixed(Mixing(mixup=1.0, seed=0), ds, "multi_label", 3)))
    assert soft.shape == (8, 3) and float(tf.reduce_min(soft)) >= 0 and float(tf.reduce_max(soft)) <= 1
    np.testing.assert_allclose(tf.reduce_sum(soft, axis=1), np.ones(8), atol=1e-5)  # one label each, mixed


def _tiny_classifier(units=3):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(units, activation="softmax")])
    task = get_task("single_label")
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=task.loss(units, soft=True),
                  metrics=task.training_metrics(soft=True))
    return model


def test_feature_mixup_trains_on_mixed_batches_and_validates_on_plain_ones():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(48, 6)).astype("float32")
    y = np.arange(48) % 3
    mix = Mixing(feature_mixup=0.4, seed=0).feature_step(get_task("single_label"), 3)
    plain, mixed = _tiny_classifier(), _tiny_classifier()
    fit_arrays(plain, (x, y), batch_size=16, epochs=2, seed=0)
    history = fit_arrays(mixed, (x, y), batch_size=16, validation=(x[:12], y[:12]), epochs=2, seed=0, mix=mix)
    assert not np.allclose(plain.get_weights()[0], mixed.get_weights()[0])  # the mixing changed training
    # validation is the plain labels on the final weights: what evaluating the model there gives
    loss, accuracy = mixed.evaluate(x[:12], y[:12], verbose=0)
    assert history.history["val_loss"][-1] == pytest.approx(loss, rel=1e-5)
    assert history.history["val_accuracy"][-1] == pytest.approx(accuracy)


def test_a_run_with_feature_mixup_keeps_the_caches_and_trains_on_mixed_features(tmp_path, image_folder, tiny, caplog):
    """The caches stay on (run.json's caching line), the log says what is mixed, and the head trained differs from
    the same run's without mixing: what it learned came from mixed features. (What mixing gains is measured in
    benchmarks/few_labels.py, not on six validation images.)"""
    import json
    import logging
    import os

    caplog.set_level(logging.INFO, logger="tlkeras")
    runs = {}
    for name, augment in (("plain", "none"), ("mixed", {"feature_mixup": 0.4})):
        runs[name] = tlkeras.build_and_finetune(image_folder, **tiny, augment=augment, export=False,
                                                output_dir=str(tmp_path / name), verbose=0, stage1={"epochs": 3},
                                                stage2={"epochs": 0})
    run = json.load(open(os.path.join(runs["mixed"].run_dir, "run.json")))
    assert run["caching"].startswith("inputs are not randomly augmented: stage 1 trains the head on cached")
    assert "mixing: feature mixup (alpha 0.4) on the cached features and activations" in caplog.text
    head = [w.path for w in runs["plain"].model.trainable_weights]
    plain = {w.path: w.numpy() for w in runs["plain"].model.trainable_weights}
    mixed = {w.path: w.numpy() for w in runs["mixed"].model.trainable_weights}
    assert head and any(not np.allclose(plain[p], mixed[p]) for p in head)
    assert np.isfinite(runs["mixed"].metrics["loss"])


def test_mixing_settings_out_of_range_or_on_text_are_one_line(tmp_path):
    from tlkeras.config import resolve_config
    from tlkeras.data.text import make_text_datasets

    with pytest.raises(ConfigError, match=r"augment.mixup: 5.0 is not valid: use a number in \[0.0, 4.0\]"):
        resolve_config(None, None, {"augment": {"mixup": 5}})
    with pytest.raises(ConfigError, match="augment.cutmix"):
        resolve_config(None, None, {"augment": {"cutmix": -1}})
    csv = tmp_path / "t.csv"
    csv.write_text("text,label\n" + "".join(f"word {i},{'ab'[i % 2]}\n" for i in range(10)))

    with pytest.raises(DataError, match="image augmentation does not apply to text.*feature_mixup"):
        make_text_datasets(resolve_config(None, str(csv), {"augment": {"mixup": 0.2}}))


def test_augment_auto_is_the_measured_choice_per_inputs_kind_and_none_turns_it_off(tmp_path, image_folder, tiny,
                                                                                  caplog):
    """The default (augment: auto) gives images feature mixup at 0.4 and says so; an op given replaces it; augment:
    none is off; texts get nothing until something is measured to pay for them."""
    import logging

    from tlkeras.config import resolve_config

    assert resolve_config(None, None, {}).augment.resolved("image").feature_mixup == 0.4
    assert resolve_config(None, None, {"augment": {"rotation": 0.1}}).augment.resolved("image").feature_mixup == 0.0
    assert resolve_config(None, None, {"augment": "none"}).augment.resolved("image").feature_mixup == 0.0
    assert resolve_config(None, None, {"augment": None}).augment.resolved("image").feature_mixup == 0.0
    assert not resolve_config(None, None, {}).augment.resolved("text").given
    assert resolve_config(None, None, {}).augment.resolved("image", "multi_label").feature_mixup == 0.0
    # measured with the stages' epochs auto: set epochs get nothing (on 10 + 5 epochs it cost 4 points)
    assert resolve_config(None, None, {"stage1": {"epochs": 10}}).augment_for("image", "single_label").feature_mixup \
        == 0.0
    caplog.set_level(logging.INFO, logger="tlkeras")
    tlkeras.build_and_finetune(image_folder, **tiny, export=False, output_dir=str(tmp_path / "set"), verbose=0,
                               stage1={"epochs": 1}, stage2={"epochs": 0})
    assert "augment: auto: nothing for single-label classification of images (it was measured to pay with the " \
           "stages' epochs auto, and they are set here" in caplog.text and "mixing:" not in caplog.text
    caplog.clear()
    tlkeras.build_and_finetune(image_folder, **tiny, export=False, output_dir=str(tmp_path / "run"), verbose=0,
                               stage2={"epochs": 0})  # stage 1's epochs auto
    assert "augment: auto: feature_mixup 0.4 (what the few-labels benchmark measured to pay" in caplog.text
    assert "mixing: feature mixup (alpha 0.4) on the cached features and activations" in caplog.text
    with open(tmp_path / "run" / "config.yaml", encoding="utf-8") as f:
        assert "preset: auto" in f.read()
