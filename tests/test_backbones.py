import importlib
import os

import keras
import numpy as np
import pytest

import tlkeras
from tlkeras import backbones
from tlkeras.backbones import applications
from tlkeras.errors import BackboneError
from tlkeras.layers import ImagePreprocessing

# keras.applications module of each family, for comparing preprocessing with the family's own.
_MODULES = {
    "ConvNeXt": "convnext",
    "DenseNet": "densenet",
    "EfficientNetV2": "efficientnet_v2",
    "EfficientNet": "efficientnet",
    "InceptionResNetV2": "inception_resnet_v2",
    "InceptionV3": "inception_v3",
    "MobileNetV3": "mobilenet_v3",
    "MobileNetV2": "mobilenet_v2",
    "MobileNet": "mobilenet",
    "NASNet": "nasnet",
    "ResNet50V2": "resnet_v2",
    "ResNet101V2": "resnet_v2",
    "ResNet152V2": "resnet_v2",
    "ResNet": "resnet",
    "VGG16": "vgg16",
    "VGG19": "vgg19",
    "Xception": "xception",
}


def _module_of(cls_name: str) -> str:
    for prefix, module in _MODULES.items():
        if cls_name.startswith(prefix):
            return module
    raise KeyError(cls_name)


def test_every_keras_applications_family_is_listed():
    expected = {n.lower() for n in dir(keras.applications) if n[0].isupper()}
    assert set(tlkeras.list_backbones()) == expected
    assert len(expected) == 40


@pytest.mark.parametrize("name", ["EfficientNet-B0", "efficientnet_b0", "EFFICIENTNETB0", " efficientnetb0 "])
def test_names_are_case_and_separator_insensitive(name):
    assert backbones.resolve(name).display_name == "EfficientNetB0"


def test_unknown_backbone_lists_the_closest_names():
    with pytest.raises(BackboneError, match=r"Unknown backbone 'mobilenet_v4'\. Did you mean 'mobilenet.*'\?.*tlkeras backbones"):
        backbones.resolve("mobilenet_v4")


def test_unknown_backbone_option_lists_the_valid_ones():
    with pytest.raises(BackboneError, match=r"MobileNetV2 has no option 'alpah'\. Did you mean 'alpha'\?"):
        backbones.resolve("mobilenetv2", {"alpah": 0.5})


def test_image_size_defaults_to_the_backbone_and_respects_its_minimum():
    assert backbones.resolve_image_size(backbones.resolve("efficientnetb3"), None) == (300, 300)
    assert backbones.resolve_image_size(backbones.resolve("xception"), [80, 96]) == (80, 96)
    with pytest.raises(BackboneError, match=r"image_size: \[64, 64\] is below the minimum of InceptionV3 \(75x75\)"):
        backbones.resolve_image_size(backbones.resolve("inceptionv3"), 64)


@pytest.mark.parametrize("cls_name", sorted(applications.APPLICATIONS))
def test_preprocessing_matches_the_family_preprocess_input(cls_name):
    """Our in-model preprocessing gives what the family's own preprocess_input gives on [0, 255] RGB."""
    spec = backbones.resolve(cls_name)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 3)).astype("float32")
    module = importlib.import_module(f"keras.applications.{_module_of(cls_name)}")
    expected = np.asarray(module.preprocess_input(pixels.copy()))
    ours = np.asarray(ImagePreprocessing(spec.preprocessing)(pixels))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-4)


def test_include_preprocessing_off_switches_to_the_matching_external_normalisation():
    assert backbones.resolve("mobilenetv3small").preprocessing == "none"
    assert backbones.resolve("mobilenetv3small", {"include_preprocessing": False}).preprocessing == "tf"
    assert backbones.resolve("convnexttiny", {"include_preprocessing": False}).preprocessing == "torch"


@pytest.mark.parametrize(
    "name, size, first_blocks, count",
    [
        ("mobilenetv2", 32, ["stem", "block_1"], 17),
        ("resnet50", 32, ["stem", "conv2_block1"], 17),
        ("vgg16", 32, ["1", "2"], 5),
        ("inceptionv3", 75, ["mixed0"], 11),
        ("efficientnetb0", 32, ["stem", "block1a"], 17),
        ("densenet121", 32, ["stem", "2"], 5),
    ],
)
def test_block_maps_split_backbones_into_their_architectural_blocks(name, size, first_blocks, count):
    model = tlkeras.build_model(name, 2, image_size=size, weights=None)
    blocks = tlkeras.freezing.list_blocks(model)
    assert len(blocks) == count
    # every backbone layer is in exactly one block, in order
    flat = [n for block in blocks for n in block]
    assert flat == [layer.name for layer in tlkeras.freezing.backbone_layers(model)]
    for expected, block in zip(first_blocks, blocks):
        if expected == "stem":
            assert not any(n.startswith(("block_", "conv2_", "block1")) for n in block)
        else:
            assert any(expected in n for n in block), (expected, block[:3])


def test_a_block_without_weights_joins_the_block_below_so_blocks_1_trains_something():
    """NASNet's block map ends a block at each cell's concat; after the last cell comes only an activation, which
    would be a top "block" of its own with nothing to train."""
    model = tlkeras.build_model("nasnetmobile", 2, image_size=32, weights=None)
    layers = tlkeras.freezing.backbone_layers(model)
    blocks = tlkeras.freezing.list_blocks(model)
    assert blocks[-1][-2:] == ["normal_concat_12", layers[-1].name] and not layers[-1].weights
    weighted = {layer.name for layer in layers if layer.weights}
    assert all(weighted.intersection(block) for block in blocks)
    tlkeras.freezing.freeze_backbone(model)
    plan = tlkeras.freezing.unfreeze(model, "blocks:1")
    assert plan.layers and set(plan.layers) <= set(blocks[-1]) and plan.trainable_params > 0


def test_offline_imagenet_download_says_where_to_put_the_file(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise Exception(
            "URL fetch failure on https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5: None -- [Errno -2] Name or service not known"
        )

    monkeypatch.setattr("keras.src.utils.file_utils.get_file", offline)
    # Keras's home, where it downloads to (it reads KERAS_HOME once, at import)
    monkeypatch.setattr("keras.src.backend.config._KERAS_DIR", str(tmp_path / "keras"))
    os.makedirs(tmp_path / "keras")
    with pytest.raises(BackboneError) as info:
        tlkeras.build_model("mobilenetv2", 2, image_size=96, weights="imagenet", backbone_options={"alpha": 0.35})
    message = str(info.value)
    assert "Could not download the ImageNet weights of MobileNetV2 (no network?" in message
    assert f"{tmp_path}/keras/models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5" in message
    assert "weights='path/to/backbone.weights.h5'" in message


def test_weights_file_is_loaded_not_ignored(backbone_weights):
    from conftest import TINY

    loaded = tlkeras.build_model("mobilenetv2", 2, image_size=32, weights=backbone_weights,
                                 backbone_options=TINY["backbone_options"])
    fresh = tlkeras.build_model("mobilenetv2", 2, image_size=32, weights=None, backbone_options=TINY["backbone_options"])
    reference = keras.models.clone_model(fresh.get_layer("backbone"))
    reference.load_weights(backbone_weights)
    for a, b in zip(loaded.get_layer("backbone").weights, reference.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    moving_var = loaded.get_layer("backbone").get_layer("Conv_1_bn").moving_variance
    assert not np.allclose(np.asarray(moving_var), 1.0)  # calibrated, not the fresh initial value


@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_weights_file_of_another_architecture_is_a_clear_error(backbone_weights):
    with pytest.raises(BackboneError, match=r"does not match the MobileNetV2 backbone built here"):
        tlkeras.build_model("mobilenetv2", 2, image_size=32, weights=backbone_weights, backbone_options={"alpha": 0.5})


def test_missing_weights_path_is_a_clear_error():
    with pytest.raises(BackboneError, match=r"weights: 'imagenett' is neither 'imagenet', null"):
        tlkeras.build_model("mobilenetv2", 2, image_size=32, weights="imagenett")
