"""Bring your own backbone: a `.keras` model file whose output is a feature map or a feature vector.

E.g. a backbone you pretrained on your own source domain, saved with `model.save("source.keras")`
(include_top=False, or cut below its classifier). A file that ends in a classifier - a Dense layer with softmax or
sigmoid (or followed by such an activation), and any Dropout before it - is cut before it, and the log says so:
its features, not its class probabilities, feed the new head. It is loaded in Keras's safe mode, keeps its
own weights (`weights: imagenet` - the default - and `weights: null` both mean "the file's
weights"; a weights file path is loaded on top), and trains like any other backbone: frozen in
stage 1, unfrozen by layer count, fraction or name in stage 2 (it has no block map, so
`blocks:N` is refused and `layer_decay` groups its layers into 8 bands).

`backbone_options.preprocessing` says what its input expects from [0, 255] RGB pixels: "none"
(the default: the model takes [0, 255] and normalises itself, as keras.applications
EfficientNets do), "unit" ([0, 1]), "tf" ([-1, 1]), "torch" or "caffe" (ImageNet statistics).
"""

from __future__ import annotations

import os

from tlkeras.backbones.spec import BACKBONE_LAYER, BackboneSpec, check_options
from tlkeras.errors import BackboneError

MIN_SIZE = 32  # for files with a free input size


USAGE = ("path/to/model.keras", "your own backbone (output a feature map or vector); say what its input expects with "
                               "--set backbone_options.preprocessing=none|unit|tf|torch|caffe")


def is_model_file(name: str) -> bool:
    return str(name).lower().endswith(".keras")


def peek(path: str, options: dict | None = None) -> None:
    """The options and that the file is there; reading it is for `get_spec`."""
    check_options(options, ("preprocessing",), "a backbone file")
    if not os.path.isfile(path):
        raise BackboneError(f"backbone: the model file {path!r} does not exist.")


def get_spec(path: str, options: dict | None = None) -> BackboneSpec:
    """The spec of a `.keras` backbone file (read once here to learn its input and output)."""
    peek(path, options)
    options = check_options(options, ("preprocessing",), "a backbone file")
    preprocessing = options.get("preprocessing", "none")
    model = _load(path)
    height, width = _input_size(model, path)
    cut = classifier_cut(model)
    if cut is not None:
        from tlkeras._logging import get_logger

        get_logger().info("backbone: %s ends in a classifier (%s): cut before it, so that its features %s feed the "
                          "new head", os.path.basename(path), cut[1], tuple(cut[0].shape))
    fixed = height if height is not None and height == width else None
    return BackboneSpec(
        name=path,
        display_name=os.path.basename(path),
        source="model file",
        preprocessing=preprocessing,
        default_size=fixed or 224,
        min_size=min(s for s in (height, width) if s is not None) if height or width else MIN_SIZE,
        block_map=None,
        builder=lambda size, weights, opts: _build(path, size, weights),
        options=options,
        own_weights=True,
        random_init=False,
    )


def _load(path: str):
    import keras

    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except (ValueError, TypeError, KeyError) as e:  # TypeError / KeyError: a config naming unknown objects
        if "safe_mode" in str(e):
            raise BackboneError(
                f"backbone: {path!r} holds code (a Lambda layer) that safe mode does not run; rebuild it without "
                "Lambda layers (or with registered custom layers)."
            ) from None
        raise BackboneError(f"backbone: {path!r} cannot be loaded as a Keras model: {str(e).splitlines()[0]}") from None


def _input_size(model, path: str) -> tuple:
    shape = model.input_shape
    if not isinstance(shape, tuple) or len(shape) != 4 or shape[-1] != 3:
        raise BackboneError(
            f"backbone: {path!r} takes input {shape}; a backbone takes one image tensor [batch, height, width, 3]."
        )
    out = model.output_shape
    if not isinstance(out, tuple) or len(out) not in (2, 3, 4):
        raise BackboneError(
            f"backbone: {path!r} outputs {out}; a backbone outputs a feature map [batch, h, w, channels] or a "
            "feature vector [batch, features] (save the model without its classifier)."
        )
    return shape[1], shape[2]


CLASSIFIER_ACTIVATIONS = ("softmax", "sigmoid")


def classifier_cut(model):
    """(the tensor that feeds a classification head at `model`'s end, what the head is) or None: a Dense layer with
    a softmax or sigmoid activation (or followed by an Activation / Softmax layer of one), and the Dropout layers
    just before it.

    >>> import keras
    >>> inputs = keras.Input((8, 8, 3))
    >>> features = keras.layers.GlobalAveragePooling2D(name="pool")(keras.layers.Conv2D(4, 3)(inputs))
    >>> model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="predictions")(features))
    >>> tensor, head = classifier_cut(model)
    >>> tensor.shape, head
    ((None, 4), "dense 'predictions' with 10 outputs, softmax")
    >>> classifier_cut(keras.Model(inputs, features)) is None
    True
    """
    import keras

    def producer(tensor):
        history = getattr(tensor, "_keras_history", None)
        return history.operation if history is not None else None

    def activation_name(fn) -> str:
        return getattr(fn, "__name__", str(fn))

    if len(model.outputs) != 1:
        return None
    tensor = model.outputs[0]
    layer = producer(tensor)
    squashed = None
    if isinstance(layer, keras.layers.Softmax):
        squashed = "softmax"
    elif isinstance(layer, keras.layers.Activation) and activation_name(layer.activation) in CLASSIFIER_ACTIVATIONS:
        squashed = activation_name(layer.activation)
    if squashed is not None:
        tensor = layer.input
        layer = producer(tensor)
    if not isinstance(layer, keras.layers.Dense):
        return None
    own = activation_name(layer.activation)
    if squashed is None and own not in CLASSIFIER_ACTIVATIONS:
        return None
    head = f"dense {layer.name!r} with {layer.units} outputs, {squashed or own}"
    tensor = layer.input
    while isinstance(producer(tensor), keras.layers.Dropout):
        tensor = producer(tensor).input
    if len(tensor.shape) not in (2, 4):
        return None
    return tensor, head


def _build(path: str, image_size: tuple, weights):
    import keras

    from tlkeras.backbones.applications import load_weights_file

    loaded = _load(path)
    height, width = _input_size(loaded, path)
    if (height is not None and height != image_size[0]) or (width is not None and width != image_size[1]):
        raise BackboneError(
            f"image_size: {list(image_size)} does not match the input of {os.path.basename(path)} "
            f"({height}x{width}); use image_size {height} or save the backbone with a free input size."
        )
    # The same layers as a functional model named "backbone" (what tlkeras looks for), with the
    # input size of this run.
    if len(loaded.outputs) != 1:
        raise BackboneError(f"backbone: {path!r} has {len(loaded.outputs)} outputs; a backbone has one (features).")
    cut = classifier_cut(loaded)
    backbone = keras.Model(loaded.inputs[0], cut[0] if cut is not None else loaded.outputs[0], name=BACKBONE_LAYER)
    if weights not in (None, "imagenet"):
        load_weights_file(backbone, weights, os.path.basename(path))
    return backbone
