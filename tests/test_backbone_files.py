"""Bring your own backbone: a `.keras` model file as the pretrained base."""

import json
import os

import keras
import numpy as np
import pytest

import tlkeras
from tlkeras import backbones, freezing
from tlkeras.errors import BackboneError


@pytest.fixture(scope="module")
def source_file(tmp_path_factory, backbone_weights):
    """A backbone "pretrained on the user's own source domain", saved whole as a .keras file."""
    model = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35,
                                           name="backbone")
    model.load_weights(backbone_weights)
    path = str(tmp_path_factory.mktemp("byo") / "source_backbone.keras")
    model.save(path)
    return path


def test_a_model_file_trains_as_a_backbone(tmp_path, source_file, image_folder):
    original = keras.models.load_model(source_file)
    result = tlkeras.build_and_finetune(
        image_folder, backbone=source_file, backbone_options={"preprocessing": "tf"}, image_size=32, batch_size=8,
        stage1={"epochs": 2}, stage2={"epochs": 1, "unfreeze": 10, "layer_decay": None},
        report=False, tensorboard=False, output_dir=str(tmp_path / "run"), verbose=0,
        restore_best=False,  # what stage 2 trained is checked: its last epoch, even when stage 1's was better
    )
    backbone = result.model.get_layer("backbone")
    trained = set(open(os.path.join(result.run_dir, "stage2_trainable_layers.txt")).read().split())
    assert trained and len(trained) <= 10
    changed = set()
    for layer in original.layers:
        for before, after in zip(layer.weights, backbone.get_layer(layer.name).weights):
            if not np.array_equal(before.numpy(), after.numpy()):
                changed.add(layer.name)
    # only what stage 2 unfroze moved (BatchNormalization frozen: its statistics too stay)
    assert changed and changed <= trained
    assert not any("BN" in name or "bn" in name for name in changed)
    # the file's weights are recorded as the starting point
    with open(os.path.join(result.run_dir, "run.json"), encoding="utf-8") as f:
        record = json.load(f)
    assert record["backbone"]["note"] == "the backbone file's own weights" and len(record["backbone"]["sha256"]) == 64
    # save/reload answers the same; the export was checked against the model before it was written
    reloaded = keras.models.load_model(os.path.join(result.run_dir, "model.keras"), safe_mode=True)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), result.model.predict(x, verbose=0), atol=1e-6)
    assert os.path.isfile(os.path.join(result.export_dir, "saved_model.pb"))


def test_a_model_file_is_frozen_in_stage_1(tmp_path, source_file, image_folder):
    original = keras.models.load_model(source_file)
    result = tlkeras.build_and_finetune(
        image_folder, backbone=source_file, image_size=32, batch_size=8, stage1={"epochs": 2}, stage2={"epochs": 0},
        report=False, tensorboard=False, export=False, output_dir=str(tmp_path / "run"), verbose=0,
    )
    for a, b in zip(original.get_weights(), result.model.get_layer("backbone").get_weights()):
        np.testing.assert_array_equal(a, b)


def test_model_file_errors(tmp_path, source_file):
    with pytest.raises(BackboneError, match=r"the model file '.*missing.keras' does not exist"):
        backbones.resolve(str(tmp_path / "missing.keras"))
    with pytest.raises(BackboneError, match=r"the only option is preprocessing"):
        backbones.resolve(source_file, {"alpha": 0.5})
    with pytest.raises(BackboneError, match=r"backbone_options.preprocessing: 'zscore' is not one of"):
        backbones.resolve(source_file, {"preprocessing": "zscore"})
    spec = backbones.resolve(source_file)
    assert (spec.default_size, spec.min_size, spec.slug) == (32, 32, "source_backbone.keras")
    with pytest.raises(BackboneError, match=r"image_size: \[64, 64\] does not match the input of source_backbone.keras"):
        spec.build((64, 64), None)
    tabular = keras.Sequential([keras.Input((10,)), keras.layers.Dense(4)])
    tabular.save(tmp_path / "tabular.keras")
    with pytest.raises(BackboneError, match=r"takes input \(None, 10\); a backbone takes one image tensor"):
        backbones.resolve(str(tmp_path / "tabular.keras"))
    model = tlkeras.build_model(source_file, 3, image_size=32)
    with pytest.raises(BackboneError, match=r"needs a block map"):
        freezing.plan_cut(model, "blocks:2")


@pytest.mark.parametrize("style", ["functional", "sequential", "activation layer"])
def test_a_classifier_file_is_cut_before_its_classifier_and_says_so(tmp_path, caplog, style):
    """A .keras that ends in softmax class probabilities gives its features to the new head, not its probabilities
    (which a new head would learn little from), and the log names what was cut."""
    import logging

    keras.utils.set_random_seed(0)
    body = [keras.layers.Conv2D(6, 3, activation="relu", name="conv"), keras.layers.GlobalAveragePooling2D(name="pool"),
            keras.layers.Dropout(0.2, name="drop")]
    if style == "sequential":
        model = keras.Sequential([keras.Input((32, 32, 3)), *body, keras.layers.Dense(10, activation="softmax",
                                                                                        name="classes")])
    else:
        inputs = keras.Input((32, 32, 3))
        x = inputs
        for layer in body:
            x = layer(x)
        if style == "activation layer":
            x = keras.layers.Activation("softmax", name="probabilities")(keras.layers.Dense(10, name="classes")(x))
        else:
            x = keras.layers.Dense(10, activation="softmax", name="classes")(x)
        model = keras.Model(inputs, x)
    path = str(tmp_path / "classifier.keras")
    model.save(path)
    caplog.set_level(logging.INFO, logger="tlkeras")
    built = tlkeras.build_model(path, 3, image_size=32)
    backbone = built.get_layer("backbone")
    assert backbone.output_shape == (None, 6)  # the pooled features, not the 10 probabilities
    assert "ends in a classifier (dense 'classes' with 10 outputs, softmax): cut before it" in caplog.text
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    features = keras.Model(model.inputs, model.get_layer("pool").output)(x)
    np.testing.assert_allclose(backbone(x), features, atol=1e-5)
