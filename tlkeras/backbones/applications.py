"""Every keras.applications family: one table row each (constructor, preprocessing, sizes, blocks)."""

from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass
from typing import Optional

from tlkeras.backbones.spec import BACKBONE_LAYER, BackboneSpec, BlockMap
from tlkeras.errors import BackboneError, did_you_mean


@dataclass(frozen=True)
class _Family:
    preprocessing: str  # for [0, 255] inputs, as the family's own preprocess_input does
    min_size: int
    block_map: BlockMap
    # Families that normalise inside the model (include_preprocessing=True) need this mode
    # instead when the user turns that off.
    preprocessing_without_builtin: Optional[str] = None


_MOBILENET = _Family("tf", 32, BlockMap("prefix", r"^conv_(?:dw|pw)_(\d+)"))
_MOBILENETV2 = _Family("tf", 32, BlockMap("prefix", r"^(block_\d+)_"))
_MOBILENETV3 = _Family("none", 32, BlockMap("prefix", r"^(expanded_conv(?:_\d+)?)_"), "tf")
_EFFICIENTNET = _Family("none", 32, BlockMap("prefix", r"^(block\d+[a-z])_"))
_EFFICIENTNETV2 = _Family("none", 32, BlockMap("prefix", r"^(block\d+[a-z])_"), "tf")
_RESNET = _Family("caffe", 32, BlockMap("prefix", r"^(conv\d_block\d+)_"))
_RESNETV2 = _Family("tf", 32, BlockMap("prefix", r"^(conv\d_block\d+)_"))
_VGG = _Family("caffe", 32, BlockMap("prefix", r"^(block\d)_"))
# A DenseNet "block" is a dense block (conv2..conv5) with the transition (poolN) after it.
_DENSENET = _Family("torch", 32, BlockMap("prefix", r"^(?:conv(\d)_block|pool(\d)_)"))
_INCEPTIONV3 = _Family("tf", 75, BlockMap("end", r"^mixed\d+$"))
_INCEPTIONRESNETV2 = _Family("tf", 75, BlockMap("end", r"^(?:mixed_\d[a-z]|block\d+_\d+_ac)$"))
_XCEPTION = _Family("tf", 71, BlockMap("prefix", r"^(block\d+)_"))
_NASNET = _Family("tf", 32, BlockMap("end", r"^(?:normal_concat_\d+|reduction_concat_(?:stem|reduce)_\d+)$"))
_CONVNEXT = _Family("none", 32, BlockMap("prefix", r"_(stage_\d+_block_\d+)_"), "torch")

# keras.applications class name -> (family, default input size)
APPLICATIONS: dict[str, tuple[_Family, int]] = {
    "ConvNeXtTiny": (_CONVNEXT, 224),
    "ConvNeXtSmall": (_CONVNEXT, 224),
    "ConvNeXtBase": (_CONVNEXT, 224),
    "ConvNeXtLarge": (_CONVNEXT, 224),
    "ConvNeXtXLarge": (_CONVNEXT, 224),
    "DenseNet121": (_DENSENET, 224),
    "DenseNet169": (_DENSENET, 224),
    "DenseNet201": (_DENSENET, 224),
    "EfficientNetB0": (_EFFICIENTNET, 224),
    "EfficientNetB1": (_EFFICIENTNET, 240),
    "EfficientNetB2": (_EFFICIENTNET, 260),
    "EfficientNetB3": (_EFFICIENTNET, 300),
    "EfficientNetB4": (_EFFICIENTNET, 380),
    "EfficientNetB5": (_EFFICIENTNET, 456),
    "EfficientNetB6": (_EFFICIENTNET, 528),
    "EfficientNetB7": (_EFFICIENTNET, 600),
    "EfficientNetV2B0": (_EFFICIENTNETV2, 224),
    "EfficientNetV2B1": (_EFFICIENTNETV2, 240),
    "EfficientNetV2B2": (_EFFICIENTNETV2, 260),
    "EfficientNetV2B3": (_EFFICIENTNETV2, 300),
    "EfficientNetV2S": (_EFFICIENTNETV2, 384),
    "EfficientNetV2M": (_EFFICIENTNETV2, 480),
    "EfficientNetV2L": (_EFFICIENTNETV2, 480),
    "InceptionV3": (_INCEPTIONV3, 299),
    "InceptionResNetV2": (_INCEPTIONRESNETV2, 299),
    "MobileNet": (_MOBILENET, 224),
    "MobileNetV2": (_MOBILENETV2, 224),
    "MobileNetV3Small": (_MOBILENETV3, 224),
    "MobileNetV3Large": (_MOBILENETV3, 224),
    "NASNetMobile": (_NASNET, 224),
    "NASNetLarge": (_NASNET, 331),
    "ResNet50": (_RESNET, 224),
    "ResNet101": (_RESNET, 224),
    "ResNet152": (_RESNET, 224),
    "ResNet50V2": (_RESNETV2, 224),
    "ResNet101V2": (_RESNETV2, 224),
    "ResNet152V2": (_RESNETV2, 224),
    "VGG16": (_VGG, 224),
    "VGG19": (_VGG, 224),
    "Xception": (_XCEPTION, 299),
}

# Arguments tlkeras sets itself; a user cannot pass them through backbone_options.
_RESERVED = {"include_top", "weights", "input_tensor", "input_shape", "pooling", "classes", "classifier_activation", "name"}


def canonical(name: str) -> str:
    """Lower-case, without separators: "EfficientNet-B0" and "efficientnet_b0" -> "efficientnetb0"."""
    return re.sub(r"[\s_\-]", "", name).lower()


NAMES = {canonical(cls): cls for cls in APPLICATIONS}


# What a keras.applications backbone's run trains with where its config does not say (BackboneSpec.training_defaults):
# stage 2 trains the top half of the layers, not all of them. Measured on MobileNetV2 at 128 px, 3 seeds, both tasks
# of benchmarks/recipe_vs_tlkeras.py: as accurate as training all (0.879 against 0.883 on 722 images, 0.649 against
# 0.638 on 100), and the frozen bottom is computed once and cached, so stage 2 took 7.0 s instead of 22.1 s
# (benchmarks/RESULTS.md, issue 17).
TRAINING_DEFAULTS = {"stage2.unfreeze": 0.5}


def get_spec(name: str, options: dict | None = None) -> BackboneSpec:
    """The spec of a keras.applications backbone, by case-insensitive name."""
    key = canonical(name)
    if key not in NAMES:
        raise BackboneError(
            f"Unknown backbone {name!r}.{did_you_mean(key, NAMES)} "
            "Run `tlkeras backbones` for the full list."
        )
    cls_name = NAMES[key]
    family, default_size = APPLICATIONS[cls_name]
    options = dict(options or {})
    _check_options(cls_name, options)
    preprocessing = family.preprocessing
    if options.get("include_preprocessing") is False and family.preprocessing_without_builtin:
        preprocessing = family.preprocessing_without_builtin
    return BackboneSpec(
        name=key,
        display_name=cls_name,
        source="keras.applications",
        preprocessing=preprocessing,
        default_size=default_size,
        min_size=family.min_size,
        block_map=family.block_map,
        builder=lambda size, weights, opts: _build(cls_name, size, weights, opts),
        options=options,
        training_defaults=TRAINING_DEFAULTS,
    )


def block_map(name: str) -> Optional[BlockMap]:
    cls_name = NAMES.get(canonical(name))
    return APPLICATIONS[cls_name][0].block_map if cls_name else None


def _constructor(cls_name: str):
    import keras

    return getattr(keras.applications, cls_name)


def _check_options(cls_name: str, options: dict) -> None:
    if not options:  # the constructor's signature needs Keras (and so TensorFlow) imported
        return
    allowed = sorted(set(inspect.signature(_constructor(cls_name)).parameters) - _RESERVED)
    for key in options:
        if key not in allowed:
            raise BackboneError(
                f"backbone_options: {cls_name} has no option {key!r}.{did_you_mean(key, allowed)} "
                f"Its options are: {', '.join(allowed) or 'none'}."
            )


def _keras_models_dir() -> str:
    """Where keras.applications keeps downloaded weights: Keras's own home (KERAS_HOME, read when Keras was
    imported; /tmp/.keras when that is not writable), then models/."""
    try:
        from keras.src.backend.config import keras_home

        home = keras_home()
    except ImportError:  # a Keras that moved it: the documented default
        home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    if not os.access(os.path.expanduser(home), os.W_OK):
        home = os.path.join("/tmp", ".keras")
    return os.path.join(os.path.expanduser(home), "models")


def _build(cls_name: str, image_size: tuple[int, int], weights, options: dict):
    constructor = _constructor(cls_name)
    h, w = image_size
    # No `name`: a family looks its block arguments (EfficientNetV2) and its weights file (EfficientNet, EfficientNetV2,
    # ConvNeXt) up by its own name, so it is built exactly as keras.applications builds it and renamed afterwards.
    kwargs = dict(include_top=False, weights=None, input_shape=(h, w, 3), **options)
    if weights == "imagenet":
        kwargs["weights"] = "imagenet"
    elif weights is not None and not os.path.isfile(weights):
        raise BackboneError(
            f"weights: {weights!r} is neither 'imagenet', null (random initialisation) nor an existing weights file."
        )
    try:
        model = constructor(**kwargs)
    except Exception as e:  # keras raises a bare Exception when a download fails
        raise _build_error(cls_name, options, e) from None
    model.name = BACKBONE_LAYER  # the nested layer `tlkeras.model.get_backbone` finds; no variable path holds it
    if weights not in (None, "imagenet"):
        load_weights_file(model, weights, cls_name)
    return model


_INSTEAD = "or pass weights='path/to/backbone.weights.h5', or weights=None to start from random weights."


def _build_error(cls_name: str, options: dict, error: Exception) -> Exception:
    """What a failed keras.applications constructor means for the user, in one line."""
    message = str(error)
    fetch = re.search(r"URL fetch failure on (https?://\S+?): (\S+) -- (.*)", message)
    if fetch:  # keras.utils.get_file: "URL fetch failure on <url>: <HTTP code or errno> -- <reason>"
        url, code, reason = fetch.groups()
        if code.isdigit() and int(code) >= 400:
            why = f"the server answered HTTP {code} {reason}"
        elif "incomplete" in reason:
            why = f"the connection was cut: {reason}"
        else:
            why = f"no network? {reason}"
        path = os.path.join(_keras_models_dir(), url.rsplit("/", 1)[-1])
        return BackboneError(
            f"Could not download the ImageNet weights of {cls_name} ({why}). Download {url} on a machine with "
            f"network and place it at {path}, {_INSTEAD}"
        )
    if "file hash does not match" in message:  # downloaded, but not the bytes Keras expects
        return BackboneError(
            f"The downloaded ImageNet weights of {cls_name} are incomplete or corrupted (their checksum is not the "
            f"one Keras expects; a proxy or a cut download?): run again to download them again (Keras replaces the "
            f"file in {_keras_models_dir()}), {_INSTEAD}"
        )
    if isinstance(error, (ValueError, TypeError)):  # e.g. backbone_options {alpha: abc}
        return BackboneError(f"{cls_name} cannot be built with these settings (backbone_options "
                             f"{options or {}}): {message}")
    return error


def load_weights_file(model, path: str, what: str) -> None:
    """Load a weights file into `model`, turning a mismatch into an error that says what to do."""
    try:
        model.load_weights(path)
    except Exception as e:
        raise BackboneError(
            f"weights file {path!r} does not match the {what} backbone built here "
            f"(input {model.input_shape[1:3]}): {str(e).splitlines()[0]} "
            "Pass the same backbone, backbone_options and a weights file saved from that backbone "
            "(e.g. tlkeras.model.get_backbone(model).save_weights('backbone.weights.h5'))."
        ) from None
