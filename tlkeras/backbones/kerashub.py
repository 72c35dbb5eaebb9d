"""KerasHub presets as backbones: `backbone="kerashub:<preset>"`.

KerasHub is where Keras 3 pretrained models now live. A preset is a name KerasHub knows
("resnet_50_imagenet", "efficientnet_b0_ra_imagenet", "vit_base_patch16_224_imagenet", ...; see
`keras_hub.models.Backbone.presets`), a Kaggle handle ("kaggle://keras/resnetv2/keras/resnet50_v2_imagenet")
or a local folder written by `save_to_preset` - which is how to use one offline: save it once on a
machine with network, copy the folder.

A text preset (BERT, DistilBERT, RoBERTa, DeBERTaV3, ... with its tokenizer) is a text encoder: see
`tlkeras.backbones.kerashub_text`. The preset's image backbone is the pretrained base (its own layers, so `unfreeze` counts, fractions
and layer names work as for keras.applications; ResNet, DenseNet and VGG presets have a block map
for `blocks:N` and `layer_decay` by block, others are split into 8 bands of layers for the
decay and refuse `blocks:N`), and the preset's own `ImageConverter` says how pixels
are normalised: its `scale` and `offset` become the model's first layer (the resize stays tlkeras's
one decode-and-resize function, shared with serving), and its `image_size` the default size.
`weights: imagenet` (the default) loads the preset's weights, `null` builds it randomly
initialised, a weights file is loaded on top.
"""

from __future__ import annotations

from tlkeras.backbones.kerashub_presets import import_keras_hub, load_preset, load_weights
from tlkeras.backbones.spec import BACKBONE_LAYER, BackboneSpec, BlockMap, check_options
from tlkeras.modes import PREPROCESSING_MODES
from tlkeras.errors import BackboneError

SCHEME = "kerashub:"
USAGE = ("kerashub:<preset>", 'a KerasHub preset name or a save_to_preset folder (pip install "tlkeras[kerashub]"), '
                              "normalised by the preset's own image converter")
OPTIONS = ("preprocessing",)
MIN_SIZE = 32

# KerasHub backbone class -> how its layers group into blocks (layer names as KerasHub builds them).
BLOCK_MAPS = {
    "ResNetBackbone": BlockMap("prefix", r"^(stack\d+_block\d+)_"),  # residual blocks
    "DenseNetBackbone": BlockMap("prefix", r"^(?:stack(\d+)_|transition(\d+)_)"),  # dense block + its transition
    "VGGBackbone": BlockMap("prefix", r"^(block\d+)_"),
}


def is_kerashub(name: str) -> bool:
    return str(name).startswith(SCHEME)


def before_loading(name: str) -> None:
    """KerasHub's layers register themselves when it is imported: a model on a preset needs it to load."""
    import_keras_hub(name)


def _converter(keras_hub, preset: str):
    """The preset's ImageConverter, or None when it has none."""
    try:
        return keras_hub.layers.ImageConverter.from_preset(preset)
    except Exception:  # a preset saved without one (a bare backbone)
        return None


def _per_channel(value) -> list[float]:
    if value is None:
        return [1.0, 1.0, 1.0]
    values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    return values * 3 if len(values) == 1 else values


def get_spec(name: str, options: dict | None = None) -> BackboneSpec:
    """The spec of `kerashub:<preset>` (the preset's config and image converter are read here)."""
    preset = name[len(SCHEME):].strip()
    if not preset:
        raise BackboneError("backbone: 'kerashub:' needs a preset, e.g. kerashub:resnet_50_imagenet or "
                            "kerashub:path/to/preset_folder.")
    keras_hub = import_keras_hub(preset)
    backbone = load_preset(keras_hub.models.Backbone, preset, load_weights=False)  # reads the config only
    from tlkeras.backbones import kerashub_text

    if kerashub_text.is_text_backbone(backbone):  # a BERT-class encoder: the model tokenises its strings
        return kerashub_text.get_spec(preset, backbone, options, SCHEME)
    options = check_options(options, OPTIONS, "a KerasHub preset (preprocessing replaces its image converter)")
    _check_image_backbone(backbone, preset)
    converter = _converter(keras_hub, preset)
    params: dict = {}
    if "preprocessing" in options:
        mode = options["preprocessing"]
    elif converter is not None:
        mode = "affine"
        # The converter works on [0, 255] pixels: x * scale + offset, per channel.
        params = {"scale": _per_channel(converter.scale), "offset": _per_channel(converter.offset or 0.0)}
    else:
        raise BackboneError(f"backbone: the KerasHub preset {preset!r} has no image converter, so tlkeras cannot "
                            "tell how its inputs are normalised; say it with backbone_options.preprocessing "
                            f"({', '.join(PREPROCESSING_MODES)}).")
    size = tuple(backbone.inputs[0].shape[1:3])
    fixed = size[0] if size[0] is not None and size[0] == size[1] else None
    converter_size = getattr(converter, "image_size", None) if converter is not None else None
    default = fixed or (int(converter_size[0]) if converter_size else 224)
    label = preset.rstrip("/").rsplit("/", 1)[-1] or preset
    return BackboneSpec(
        name=f"{SCHEME}{preset}",
        display_name=f"kerashub-{label}",
        source="kerashub",
        preprocessing=mode,
        default_size=default,
        min_size=fixed or MIN_SIZE,
        block_map=BLOCK_MAPS.get(type(backbone).__name__),
        builder=lambda image_size, weights, opts: _build(preset, image_size, weights),
        options=options,
        preprocessing_params=params,
        own_weights=True,
    )


def _check_image_backbone(backbone, preset: str) -> None:
    inputs = backbone.inputs
    shape = tuple(inputs[0].shape) if len(inputs) == 1 else None
    if shape is None or len(shape) != 4 or shape[-1] != 3:
        found = ", ".join(f"{getattr(t, 'name', '?')} {tuple(t.shape)}" for t in inputs)
        raise BackboneError(
            f"backbone: the KerasHub preset {preset!r} is a {type(backbone).__name__} taking {found}; tlkeras "
            "fine-tunes KerasHub image backbones (one image input [batch, height, width, 3]) and text encoders "
            "that take token ids (BERT-class presets with a tokenizer)."
        )
    if len(backbone.outputs) != 1 or len(backbone.outputs[0].shape) not in (2, 3, 4):
        raise BackboneError(f"backbone: the KerasHub preset {preset!r} has outputs "
                            f"{[tuple(t.shape) for t in backbone.outputs]}; a backbone gives one feature map, token "
                            "sequence or vector.")


def _build(preset: str, image_size, weights):
    import keras


    keras_hub = import_keras_hub(preset)
    loaded = load_preset(keras_hub.models.Backbone, preset, load_weights=weights is not None)
    size = tuple(loaded.inputs[0].shape[1:3])
    if (size[0] is not None and size[0] != image_size[0]) or (size[1] is not None and size[1] != image_size[1]):
        raise BackboneError(f"image_size: {list(image_size)} does not match the input of the KerasHub preset "
                            f"{preset!r} ({size[0]}x{size[1]}); use image_size {size[0]}.")
    # Its own layers as a functional model named "backbone" (what tlkeras looks for).
    backbone = keras.Model(loaded.inputs[0], loaded.outputs[0], name=BACKBONE_LAYER)
    load_weights(backbone, preset, weights)
    return backbone
