"""TF Hub / SavedModel modules as Keras 3 backbones (`backbone="hub:..."`), on modules the fixtures export."""

import os
import urllib.error

import keras
import numpy as np
import pytest
import tensorflow as tf

import tlkeras
import tlkeras.errors
from conftest import CtrlC
from tlkeras import backbones, distribute, freezing
from tlkeras.backbones import hub, hub_module
from tlkeras.data.images import decode_and_resize
from tlkeras.errors import BackboneError

RUN = {"image_size": 32, "batch_size": 8, "report": False, "tensorboard": False, "verbose": 0}
TRAINABLE = ["conv1/kernel", "conv1/bias", "bn1/gamma", "bn1/beta", "conv2/kernel", "conv2/bias", "bn2/gamma",
             "bn2/beta"]
MOVING = ["bn1/moving_mean", "bn1/moving_variance", "bn2/moving_mean", "bn2/moving_variance"]


def module_values(module_or_path) -> dict:
    """{variable name: value} of a module folder (as exported) or of a model's HubModule layer."""
    if isinstance(module_or_path, str):
        obj = tf.saved_model.load(module_or_path)
        return {hub_module._variable_name(v): v.numpy() for v in obj.variables}
    return {name: weight.numpy() for name, weight, _ in module_or_path.named_variables()}


def changed(before: dict, after: dict) -> set:
    return {name for name in before if not np.array_equal(before[name], after[name])}


def test_an_image_module_takes_unit_pixels_at_its_own_size(hub_image_module):
    spec = backbones.resolve(f"hub:{hub_image_module}")
    assert (spec.source, spec.modality, spec.preprocessing, spec.default_size, spec.min_size) == (
        "tensorflow hub", "image", "unit", 32, 32)  # the size the module's signature fixes
    model = tlkeras.build_model(spec, 3)  # no image_size: the module's
    assert model.input_shape == (None, 32, 32, 3)
    np.testing.assert_allclose(model.get_layer("preprocess")(np.full((1, 32, 32, 3), 255.0, "float32")), 1.0)


def test_stage_1_changes_no_module_variable(tmp_path, hub_image_module, image_folder):
    result = tlkeras.build_and_finetune(image_folder, backbone=f"hub:{hub_image_module}", **RUN,
                                        stage1={"epochs": 2}, stage2={"epochs": 0}, export=False,
                                        output_dir=str(tmp_path / "run"))
    assert changed(module_values(hub_image_module), module_values(freezing.hub_module(result.model))) == set()
    head = result.model.get_layer("predictions").kernel.numpy()
    assert np.abs(head).sum() > 0 and result.history["stage"] == [1, 1]


def test_stage_2_trains_what_unfreeze_says_and_keeps_bn_fixed(tmp_path, hub_image_module, image_folder):
    result = tlkeras.build_and_finetune(image_folder, backbone=f"hub:{hub_image_module}", **RUN,
                                        stage1={"epochs": 1}, stage2={"epochs": 2, "unfreeze": 4},
                                        output_dir=str(tmp_path / "run"))
    module = freezing.hub_module(result.model)
    moved = changed(module_values(hub_image_module), module_values(module))
    # the last 4 trainable variables are the top: conv2 and bn2's scale and offset; BN statistics stay
    assert moved == {"conv2/kernel", "conv2/bias", "bn2/gamma", "bn2/beta"}
    written = open(os.path.join(result.run_dir, "stage2_trainable_layers.txt")).read().split()
    assert written == ["conv2/kernel", "conv2/bias", "bn2/gamma", "bn2/beta"]
    # the .keras file reloads in safe mode and answers the same
    reloaded = keras.models.load_model(os.path.join(result.run_dir, "model.keras"), safe_mode=True)
    x = np.random.default_rng(0).uniform(0, 255, (5, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), result.model.predict(x, verbose=0), atol=1e-6)
    assert changed(module_values(module), module_values(freezing.hub_module(reloaded))) == set()
    # the export answers as model.predict on the same decoded pixels (within 1e-5), through both signatures
    served = tf.saved_model.load(result.export_dir)
    blobs = [tf.io.encode_png(tf.constant(img.astype("uint8"))).numpy() for img in x]
    pixels = np.stack([decode_and_resize(b, (32, 32)).numpy() for b in blobs])
    expected = result.model.predict(pixels, verbose=0)
    got = served.signatures["serving_default"](image_bytes=tf.constant(blobs))["probabilities"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    got = served.signatures["serving_images"](images=tf.constant(pixels))["probabilities"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_partial_unfreezing_counts_the_module_variables(hub_image_module):
    model = tlkeras.build_model(f"hub:{hub_image_module}", 3, image_size=32)
    module = freezing.hub_module(model)
    freezing.freeze_backbone(model)
    assert [w.path for w in model.trainable_weights] == ["predictions/kernel", "predictions/bias"]
    assert freezing.unfreeze(model, 2).layers == ["bn2/gamma", "bn2/beta"]
    assert freezing.unfreeze(model, 0.5).layers == TRAINABLE[4:]
    assert freezing.unfreeze(model, "conv2").layers == TRAINABLE[4:]  # a variable name: it and every later one
    assert freezing.unfreeze(model, "bn1/beta").layers == TRAINABLE[3:]
    plan = freezing.unfreeze(model, "all")
    assert plan.layers == TRAINABLE and plan.unit == "hub module variable" and plan.bn_frozen
    assert "8 backbone hub module variable(s) train" in plan.describe()
    assert plan.describe().endswith("the module runs in inference mode (its BatchNormalization statistics stay fixed)")
    assert len(model.trainable_weights) == 8 + 2
    assert not any(weight.trainable for name, weight, _ in module.named_variables() if name in MOVING)
    assert freezing.plan_cut(model, "all") == (0, 1) and freezing.plan_cut(model, None) == (1, 1)
    with pytest.raises(BackboneError, match=r"no variable 'conv3'\. Did you mean 'conv2'"):
        freezing.unfreeze(model, "conv3")
    with pytest.raises(BackboneError, match=r"'blocks:2' needs a block map, and this hub module has none"):
        freezing.unfreeze(model, "blocks:2")
    # layer-wise rates: 8 bands over the trainable variables, the last (top) at decay^1
    factors = freezing.layer_multipliers(model, 0.5)
    assert factors["hub_module/bn2_beta"] == 0.5 and factors["hub_module/conv1_kernel"] == 0.5**8


def test_the_module_runs_in_inference_mode_unless_train_bn(hub_image_module):
    x = np.random.default_rng(1).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = np.arange(8) % 3
    for train_bn, statistics_move in ((False, False), (True, True)):
        model = tlkeras.build_model(f"hub:{hub_image_module}", 3, image_size=32)
        module = freezing.hub_module(model)
        plan = freezing.unfreeze(model, "all", train_bn=train_bn)
        assert ("the module runs in training mode" in plan.describe()) is train_bn
        before = module_values(module)
        model.compile("adam", "sparse_categorical_crossentropy")
        model.fit(x, y, epochs=1, verbose=0)
        moved = changed(before, module_values(module))
        assert (set(MOVING) <= moved) is statistics_move and not (set(MOVING) & moved and not statistics_move)
        assert set(TRAINABLE) <= moved


def test_regularization_losses_join_the_model_while_the_module_trains(hub_image_module):
    model = tlkeras.build_model(f"hub:{hub_image_module}", 3, image_size=32)
    x = np.zeros((2, 32, 32, 3), "float32")
    freezing.freeze_backbone(model)
    model(x, training=True)
    assert model.losses == []
    freezing.unfreeze(model, "all")
    model(x, training=True)
    kernel = module_values(freezing.hub_module(model))["conv1/kernel"]
    (loss,) = model.losses
    np.testing.assert_allclose(float(loss), 1e-3 * np.sum(kernel**2), rtol=1e-5)


def test_mixed_precision_keeps_the_module_in_float32(hub_image_module):
    with distribute.precision_policy("mixed_float16"):
        model = tlkeras.build_model(f"hub:{hub_image_module}", 3, image_size=32)
    module = freezing.hub_module(model)
    assert module.compute_dtype == "float32" and model.get_layer("predictions").compute_dtype == "float32"
    freezing.unfreeze(model, "all")
    model.compile(keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam()), "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    history = model.fit(x, np.arange(8) % 3, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def test_a_hub_backbone_trains_under_mirrored_strategy(tmp_path, hub_image_module, image_folder):
    result = tlkeras.build_and_finetune(image_folder, backbone=f"hub:{hub_image_module}", **RUN,
                                        stage1={"epochs": 1}, stage2={"epochs": 1, "unfreeze": "all"},
                                        strategy="mirrored", export=False, output_dir=str(tmp_path / "run"))
    assert result.history["stage"] == [1, 2]
    moved = changed(module_values(hub_image_module), module_values(freezing.hub_module(result.model)))
    assert moved == set(TRAINABLE)


def test_a_keras_saved_model_folder_is_a_backbone(tmp_path, image_folder):
    """Bring your own backbone as a SavedModel (Keras 3's `model.export()`): a bare folder path."""
    keras.utils.set_random_seed(0)
    base = keras.Sequential(name="mine", layers=[
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(8, 3, strides=2, name="c1"), keras.layers.BatchNormalization(name="b1"),
        keras.layers.ReLU(), keras.layers.Conv2D(16, 3, strides=2, name="c2"), keras.layers.GlobalAveragePooling2D(),
    ])
    folder = str(tmp_path / "exported_backbone")
    base.export(folder, verbose=False)
    spec = backbones.resolve(folder)
    assert (spec.source, spec.preprocessing, spec.default_size) == ("tensorflow hub", "none", 32)
    result = tlkeras.build_and_finetune(image_folder, backbone=folder, backbone_options={"preprocessing": "unit"},
                                        **RUN, stage1={"epochs": 1}, stage2={"epochs": 1, "unfreeze": 2},
                                        output_dir=str(tmp_path / "run"))
    module = freezing.hub_module(result.model)
    assert module.info.endpoint == "serve"  # no training flag: BatchNormalization always in inference mode
    trained = open(os.path.join(result.run_dir, "stage2_trainable_layers.txt")).read().split()
    assert trained == ["mine/c2/kernel", "mine/c2/bias"]
    assert changed(module_values(folder), module_values(module)) == set(trained)


def test_an_interrupted_hub_run_resumes_to_the_same_weights(tmp_path, hub_image_module, image_folder):
    # one batch per epoch and no dropout: an interrupted and an uninterrupted run must agree
    options = {**RUN, "data": image_folder, "backbone": f"hub:{hub_image_module}", "batch_size": 32, "export": False,
               "head": {"dropout": 0.0}, "stage1": {"epochs": 2}, "stage2": {"epochs": 3, "unfreeze": 6}}
    whole = tlkeras.build_and_finetune(**options, output_dir=str(tmp_path / "whole"))
    with pytest.raises(tlkeras.errors.Interrupted, match=r"3 finished epoch\(s\) are saved"):
        tlkeras.build_and_finetune(**options, output_dir=str(tmp_path / "cut"), callbacks=[CtrlC((2, 4))])
    resumed = tlkeras.build_and_finetune(**options, output_dir=str(tmp_path / "cut"), resume=True)
    assert resumed.history["epoch"] == [1, 2, 3, 4, 5] and resumed.history["stage"] == [1, 1, 2, 2, 2]
    np.testing.assert_allclose(resumed.history["loss"], whole.history["loss"], rtol=1e-4)
    for name, value in module_values(freezing.hub_module(whole.model)).items():
        np.testing.assert_allclose(module_values(freezing.hub_module(resumed.model))[name], value, atol=1e-5)


def test_an_image_module_trains_under_xla(hub_image_module):
    model = tlkeras.build_model(f"hub:{hub_image_module}", 3, image_size=32)
    freezing.unfreeze(model, "all")
    before = module_values(freezing.hub_module(model))
    model.compile("adam", "sparse_categorical_crossentropy", jit_compile=True)
    assert model.jit_compile is True
    x = np.random.default_rng(2).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    model.fit(x, np.arange(8) % 3, epochs=1, verbose=0)
    assert changed(before, module_values(freezing.hub_module(model))) == set(TRAINABLE)


# === Errors a user can meet ===


def test_an_unreachable_handle_offline_says_what_to_do(monkeypatch):
    import tensorflow_hub

    def offline(handle):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tensorflow_hub, "resolve", offline)
    monkeypatch.setenv("TFHUB_CACHE_DIR", "/data/hub-cache")
    with pytest.raises(BackboneError) as info:
        backbones.resolve("hub:https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5")
    message = str(info.value)
    assert "could not fetch hub:https://tfhub.dev/google/" in message and "no network?" in message
    assert "TFHUB_CACHE_DIR" in message and "/data/hub-cache" in message and "hub:/path/to/module" in message


def test_kaggle_handles_become_kaggle_urls(monkeypatch):
    import tensorflow_hub

    asked = []

    def offline(url):
        asked.append(url)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(tensorflow_hub, "resolve", offline)
    with pytest.raises(BackboneError):
        backbones.resolve("hub:google/mobilenet-v2/tensorFlow2/100-224-feature-vector/2")
    assert asked == ["https://www.kaggle.com/models/google/mobilenet-v2/tensorFlow2/100-224-feature-vector/2"]


def test_a_missing_tensorflow_hub_names_the_extra(uninstalled):
    uninstalled("tensorflow_hub")
    with pytest.raises(BackboneError, match=r'needs tensorflow-hub .*pip install "tlkeras\[hub\]"'):
        backbones.resolve("hub:https://tfhub.dev/google/some/module/1")


class _Logits(tf.Module):
    """A classifier-like module: images -> int32 class ids of rank 1 (not features)."""

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32), tf.TensorSpec([], tf.bool)])
    def __call__(self, images, training=False):
        return tf.argmax(tf.reduce_mean(images, axis=[1, 2]), axis=-1, output_type=tf.int32)


class _Tabular(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 10], tf.float32)])
    def __call__(self, rows):
        return rows * 2.0


class _Dict(tf.Module):
    def __init__(self):
        self.w = tf.Variable(tf.ones([3, 4]))

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32), tf.TensorSpec([], tf.bool)])
    def __call__(self, images, training=False):
        pooled = tf.reduce_mean(images, axis=[1, 2]) @ self.w
        return {"pooled": pooled, "logits": pooled[:, :2]}


class _SignatureOnly(tf.Module):
    """A SavedModel that can only be served (a signature), like TF1 Hub modules converted to SavedModels."""

    def __init__(self):
        self.w = tf.Variable(tf.ones([3, 4]))

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
    def features(self, images):
        return {"features": tf.reduce_mean(images, axis=[1, 2]) @ self.w}


def test_modules_that_are_not_backbones_are_explained(tmp_path, hub_image_module):
    for name, module in (("logits", _Logits()), ("tabular", _Tabular()), ("dict", _Dict())):
        tf.saved_model.save(module, str(tmp_path / name))
    signature_only = _SignatureOnly()
    tf.saved_model.save(signature_only, str(tmp_path / "signature"),
                        signatures={"serving_default": signature_only.features})
    with pytest.raises(BackboneError, match=r"has no callable __call__ \(reusable TF2 SavedModel\) or serve endpoint "
                                            r"\(Keras export\); it only has the signatures serving_default"):
        backbones.resolve(f"hub:{tmp_path / 'signature'}")
    with pytest.raises(BackboneError, match=r"outputs int32 \(None,\); a backbone outputs float features"):
        backbones.resolve(f"hub:{tmp_path / 'logits'}")
    with pytest.raises(BackboneError, match=r"takes float32 \(None, 10\); a backbone takes images"):
        backbones.resolve(f"hub:{tmp_path / 'tabular'}")
    with pytest.raises(BackboneError, match=r"returns a dict \(logits, pooled\); .*backbone_options.output_key"):
        backbones.resolve(f"hub:{tmp_path / 'dict'}")
    spec = backbones.resolve(f"hub:{tmp_path / 'dict'}", {"output_key": "pooled"})
    assert tlkeras.build_model(spec, 2, image_size=8).output_shape == (None, 1)
    with pytest.raises(BackboneError, match=r"is neither a URL nor an existing folder"):
        backbones.resolve(f"hub:{tmp_path / 'missing'}")
    with pytest.raises(BackboneError, match=r"holds no saved_model.pb"):
        backbones.resolve(f"hub:{tmp_path}")
    with pytest.raises(BackboneError, match=r"weights: null .* does not apply to hub:.*brings its own weights"):
        tlkeras.build_model(f"hub:{hub_image_module}", 3, image_size=32, weights=None)
    with pytest.raises(BackboneError, match=r"image_size: \[64, 64\] does not match the input of hub:.*"
                                            r"\(32x32\); use image_size 32"):
        tlkeras.build_model(f"hub:{hub_image_module}", 3, image_size=64)
    with pytest.raises(BackboneError, match=r"backbone_options: alpha do not apply to a hub module"):
        backbones.resolve(f"hub:{hub_image_module}", {"alpha": 0.5})
