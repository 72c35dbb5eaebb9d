"""TensorFlow Hub / Kaggle Models SavedModels as Keras 3 backbones: `backbone="hub:<handle>"`.

`tensorflow_hub.KerasLayer` is a Keras 2 (tf_keras) layer, which a Keras 3 model rejects. Here a
Keras 3 layer of ours, `HubModule`, holds the module loaded with `tf.saved_model.load` (the path
found by tensorflow_hub's resolver, so `TFHUB_CACHE_DIR` and offline copies work) and exposes
each of its variables as a Keras weight - wrapping the module's own tf.Variable, not copying it,
so the module's functions and Keras's optimizer, checkpoints and `.keras` files see one value.

A handle is a tfhub.dev or Kaggle Models URL, a Kaggle handle ("google/mobilenet-v2/tensorFlow2/
100-224-feature-vector/2"), or a local folder holding a TF2 SavedModel with the reusable-SavedModel
API (`__call__(inputs, training)`, `variables`, `trainable_variables`, `regularization_losses`)
- or a Keras SavedModel (`model.export()`, whose `serve` endpoint runs in inference mode).

- Image modules take RGB in [0, 1] (the TF Hub convention; `backbone_options.preprocessing`
  changes it) at the module's fixed input size when its signature has one.
- Text modules take a batch of strings ([None] tf.string) and return [None, D] embeddings.
- Transformer text encoders (TF Hub's BERT family: token ids in, `pooled_output` and `sequence_output`
  out) come with their preprocessing model, `backbone_options.preprocessor: hub:<handle>`, and take
  `sequence_length` and `pooling` too: see `tlkeras.backbones.hub_text`.
- The output must be a feature vector [N, D] or a feature map [N, h, w, C]; a module returning
  a dict of them needs `backbone_options.output_key`.
- Stage 1 freezes every variable. In stage 2 `unfreeze` counts the module's trainable variables
  in their order (the last ones are the top): an int N trains the last N, a fraction that share,
  a variable name (e.g. "conv2/kernel") it and every later one, "all" all of them. The module runs
  in inference mode (BatchNormalization statistics fixed) unless `stage2.train_bn` is set. Its
  regularization losses join the model's losses while it trains.
- The layer (`tlkeras.backbones.hub_module`) computes in float32 whatever the mixed-precision policy (tensorflow/hub#854, #466).
- A `.keras` file of the model stores the handle and the fine-tuned values: reloading needs
  the module again (from TFHUB_CACHE_DIR or its folder) and puts the values back.
"""

from __future__ import annotations

import os

from tlkeras.backbones.hub_handles import handle_url, resolve_handle
from tlkeras.backbones.spec import BACKBONE_LAYER, BackboneSpec, check_options
from tlkeras.errors import BackboneError

SCHEME = "hub:"
USAGE = ("hub:<handle>", 'a TF Hub / Kaggle Models URL or handle, or a module folder (pip install "tlkeras[hub]"): '
                         "image feature-vector modules take [0, 1] pixels at their own size; text-embedding modules "
                         "(strings -> vectors) make a text classifier (--data a CSV or folder of .txt files)")
SAVED_MODEL_USAGE = ("path/to/saved_model/", "your own backbone as a SavedModel folder (e.g. Keras's model.export()); "
                                             "same option")
ENCODER_OPTIONS = ("preprocessor", "sequence_length", "pooling")  # a Transformer encoder's (hub_text)
OPTIONS = ("output_key", "preprocessing", *ENCODER_OPTIONS)
MIN_SIZE = 32  # for image modules with a free input size


def is_hub(name: str) -> bool:
    return str(name).startswith(SCHEME)


def is_saved_model_dir(name: str) -> bool:
    """A local folder holding a SavedModel (e.g. written by Keras's `model.export()`)."""
    return os.path.isdir(name) and os.path.isfile(os.path.join(name, "saved_model.pb"))


# === The spec ===


def peek(name: str, options: dict | None = None) -> None:
    """The handle and options, and a local module's folder; loading it is for `get_spec`."""
    handle = _handle(name)
    options = check_options(options, OPTIONS, "a hub module")
    preprocessor = options.get("preprocessor")
    for local in (handle, preprocessor[len(SCHEME):] if is_hub(preprocessor) else preprocessor):
        if isinstance(local, str) and "://" not in handle_url(local):
            resolve_handle(local)  # a local folder: that it holds a SavedModel


def _handle(name: str) -> str:
    handle = name[len(SCHEME):].strip()
    if not handle:
        raise BackboneError("backbone: 'hub:' needs a handle, e.g. hub:https://tfhub.dev/google/imagenet/"
                            "mobilenet_v2_100_224/feature_vector/5 or hub:path/to/saved_model.")
    return handle


def get_spec(name: str, options: dict | None = None, default_preprocessing: str = "unit") -> BackboneSpec:
    """The spec of `hub:<handle>` (the module is resolved and inspected here, before any training).

    Image modules get [0, 1] inputs by default (TF Hub's convention); a SavedModel folder given
    as a bare path (your own backbone) gets [0, 255] ("none"), as `.keras` backbone files do.
    """
    handle = _handle(name)
    options = check_options(options, OPTIONS, "a hub module")
    preprocessing = options.get("preprocessing", default_preprocessing)
    from tlkeras.backbones.hub_module import _keep_spare, describe, load_module

    path = resolve_handle(handle)
    module = load_module(path)
    info = describe(module, f"hub:{handle}", options.get("output_key"))
    block_map = None
    if info.kind == "encoder":  # token ids in: its preprocessing model makes them inside the model
        from tlkeras.backbones import hub_text

        options = hub_text.encoder_options(handle, options, module)
        block_map = hub_text.block_map(module)
    elif set(options) & set(ENCODER_OPTIONS):
        raise BackboneError(f"backbone_options: {', '.join(sorted(set(options) & set(ENCODER_OPTIONS)))} apply to "
                            f"a Transformer text encoder (token ids in), and hub:{handle} takes {info.kind}s; remove "
                            "them.")
    _keep_spare(path, module)
    height, width = (info.input_shape[0], info.input_shape[1]) if info.kind == "image" else (None, None)
    fixed = height if height is not None and height == width else None
    label = handle.rstrip("/").rsplit("/", 1)[-1] or handle
    return BackboneSpec(
        name=f"{SCHEME}{handle}",
        display_name=f"hub-{label}",
        source="tensorflow hub",
        preprocessing=preprocessing if info.kind == "image" else "none",
        default_size=fixed or 224,
        min_size=min(s for s in (height, width) if s is not None) if (height or width) else MIN_SIZE,
        block_map=block_map,
        builder=lambda size, weights, opts: _build(handle, info, size, weights, opts),
        options=options,
        modality="tokens" if info.kind == "encoder" else info.kind,
        own_weights=True,
        tokenizer=_packer(options) if info.kind == "encoder" else None,
        training_defaults=hub_text.ENCODER_TRAINING_DEFAULTS if info.kind == "encoder" else {},
    )


def _packer(options: dict):
    """`() -> HubPacker`: the encoder's preprocessing model as the model's "preprocess" layer."""

    def make():
        from tlkeras.backbones.hub_text import HubPacker
        from tlkeras.layers import PREPROCESS_LAYER

        return HubPacker(options["preprocessor"], options["sequence_length"], name=PREPROCESS_LAYER)

    return make


def _build(handle: str, info, image_size, weights, options: dict):
    import keras

    from tlkeras.backbones.applications import load_weights_file
    from tlkeras.backbones.hub_module import HubModule

    if weights is None:
        raise BackboneError(
            f"weights: null (random initialisation) does not apply to hub:{handle}: a hub module brings its own "
            "weights. Remove weights (or set it to imagenet) to start from them."
        )
    if info.kind == "encoder":
        from tlkeras.backbones.hub_text import encoder_features

        inputs, features = encoder_features(handle, options)
    elif info.kind == "image":
        height, width = info.input_shape[0], info.input_shape[1]
        if (height is not None and height != image_size[0]) or (width is not None and width != image_size[1]):
            raise BackboneError(
                f"image_size: {list(image_size)} does not match the input of hub:{handle} ({height}x{width}); "
                f"use image_size {height}."
            )
        inputs = keras.Input((image_size[0], image_size[1], 3), name="pixels")
        features = HubModule(handle, output_key=options.get("output_key"), name="hub_module")(inputs)
    else:
        inputs = keras.Input((), dtype="string", name="text")
        features = HubModule(handle, output_key=options.get("output_key"), name="hub_module")(inputs)
    backbone = keras.Model(inputs, features, name=BACKBONE_LAYER)
    if weights != "imagenet" and os.path.isfile(str(weights)):
        load_weights_file(backbone, weights, f"hub:{handle}")
    elif weights != "imagenet":
        raise BackboneError(f"weights: {weights!r} is neither 'imagenet' (the module's own weights) nor an existing "
                            "weights file.")
    return backbone
