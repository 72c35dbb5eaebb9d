"""KerasHub presets as backbones (`backbone="kerashub:..."`), on a preset folder the fixture saves."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tlkeras
from tlkeras import backbones, freezing
from tlkeras.data.images import decode_and_resize
from tlkeras.errors import BackboneError

RUN = {"batch_size": 8, "report": False, "tensorboard": False, "verbose": 0}


def preset_weights(preset: str) -> dict:
    import keras_hub

    loaded = keras_hub.models.Backbone.from_preset(preset)
    return {layer.name: [w.numpy() for w in layer.weights] for layer in loaded.layers if layer.weights}


def test_the_preset_s_own_image_converter_normalises_the_pixels(kerashub_preset):
    import keras_hub

    spec = backbones.resolve(f"kerashub:{kerashub_preset}")
    assert (spec.source, spec.preprocessing, spec.default_size, spec.min_size) == ("kerashub", "affine", 32, 32)
    model = tlkeras.build_model(spec, 3)
    assert model.input_shape == (None, 32, 32, 3)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    converter = keras_hub.layers.ImageConverter.from_preset(kerashub_preset)
    np.testing.assert_allclose(model.get_layer("preprocess")(pixels), converter(pixels), atol=1e-5)


def test_two_stages_on_a_kerashub_preset(tmp_path, kerashub_preset, image_folder):
    original = preset_weights(kerashub_preset)
    result = tlkeras.build_and_finetune(image_folder, backbone=f"kerashub:{kerashub_preset}", **RUN,
                                        stage1={"epochs": 2}, stage2={"epochs": 1, "unfreeze": 3},
                                        output_dir=str(tmp_path / "run"))
    backbone = result.model.get_layer("backbone")
    trained = open(os.path.join(result.run_dir, "stage2_trainable_layers.txt")).read().split()
    assert len(trained) == 3
    moved = {name for name, values in original.items()
             if any(not np.array_equal(a, w.numpy()) for a, w in zip(values, backbone.get_layer(name).weights))}
    assert moved == set(trained)  # and nothing else: stage 1 left the preset's weights, BN statistics stay
    reloaded = keras.models.load_model(os.path.join(result.run_dir, "model.keras"), safe_mode=True)
    x = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), result.model.predict(x, verbose=0), atol=1e-6)
    blobs = [tf.io.encode_png(tf.constant(img.astype("uint8"))).numpy() for img in x]
    pixels = np.stack([decode_and_resize(b, (32, 32)).numpy() for b in blobs])
    served = tf.saved_model.load(result.export_dir).signatures["serving_default"](image_bytes=tf.constant(blobs))
    np.testing.assert_allclose(served["probabilities"].numpy(), result.model.predict(pixels, verbose=0), atol=1e-5)


def test_a_resnet_preset_unfreezes_by_block_and_keeps_its_block_map_when_saved(tmp_path, kerashub_preset):
    model = tlkeras.build_model(f"kerashub:{kerashub_preset}", 3)
    blocks = freezing.list_blocks(model)
    assert [block[0] for block in blocks] == ["conv1_pad", "stack0_block0_1_conv", "stack1_block0_1_pad"]
    plan = freezing.unfreeze(model, "blocks:1")
    assert plan.layers == ["stack1_block0_1_conv", "stack1_block0_0_conv", "stack1_block0_2_conv"]  # BN stays frozen
    factors = freezing.layer_multipliers(model, 0.5)
    backbone = model.get_layer("backbone")
    assert factors[backbone.get_layer("stack1_block0_2_conv").kernel.path] == 0.5
    assert factors[backbone.get_layer("conv1_conv").kernel.path] == 0.125
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    assert freezing.unfreeze(reloaded, "blocks:2").layers[0] == "stack0_block0_1_conv"


@pytest.mark.parametrize("kind", ["vgg", "densenet"])
def test_the_block_maps_follow_kerashub_s_layer_names(tmp_path, kind):
    import keras_hub

    if kind == "vgg":
        backbone = keras_hub.models.VGGBackbone(stackwise_num_repeats=[1, 2], stackwise_num_filters=[4, 8],
                                                image_shape=(32, 32, 3))
        expected = [["block1_conv1", "block1_pool"], ["block2_conv1", "block2_conv2", "block2_pool"]]
    else:
        backbone = keras_hub.models.DenseNetBackbone(stackwise_num_repeats=[1, 1], image_shape=(32, 32, 3))
        expected = None
    backbone.save_to_preset(str(tmp_path / kind))
    model = tlkeras.build_model(f"kerashub:{tmp_path / kind}", 2, backbone_options={"preprocessing": "unit"})
    blocks = freezing.list_blocks(model)
    if expected is not None:
        assert blocks == expected
    else:  # stem, then each dense block with the transition after it; the final BN closes the last
        assert [b[0] for b in blocks] == ["conv1_conv", "stack1_block1_1_bn", "stack2_block1_1_bn"]
        assert blocks[1][-1] == "transition1_pool" and blocks[2][-2:] == ["bn", "relu"]


def test_weights_none_builds_the_preset_s_architecture_randomly(kerashub_preset):
    original = preset_weights(kerashub_preset)
    model = tlkeras.build_model(f"kerashub:{kerashub_preset}", 3, weights=None)
    kernel = model.get_layer("backbone").get_layer("conv1_conv").kernel.numpy()
    assert kernel.shape == original["conv1_conv"][0].shape and not np.allclose(kernel, original["conv1_conv"][0])
    pretrained = tlkeras.build_model(f"kerashub:{kerashub_preset}", 3)
    np.testing.assert_array_equal(pretrained.get_layer("backbone").get_layer("conv1_conv").kernel.numpy(),
                                  original["conv1_conv"][0])


def test_kerashub_errors_say_what_to_do(tmp_path, kerashub_preset, monkeypatch):
    import keras_hub

    # (a text encoder saved without its tokenizer: tests/test_text_encoders.py)
    with pytest.raises(BackboneError, match=r"backbone_options: alpha do not apply to a KerasHub preset"):
        backbones.resolve(f"kerashub:{kerashub_preset}", {"alpha": 1.0})

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'www.kaggle.com'")

    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", offline)
    with pytest.raises(BackboneError, match=r"could not load the KerasHub preset 'resnet_50_imagenet' "
                                            r"\(ConnectionError: .*save_to_preset.*kerashub:/path/to/folder"):
        backbones.resolve("kerashub:resnet_50_imagenet")


def test_a_missing_keras_hub_names_the_extra(uninstalled):
    uninstalled("keras_hub")
    with pytest.raises(BackboneError, match=r'needs keras-hub: pip install "tlkeras\[kerashub\]"'):
        backbones.resolve("kerashub:resnet_50_imagenet")
