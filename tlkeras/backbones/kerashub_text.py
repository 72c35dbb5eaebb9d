"""KerasHub text encoders as backbones: `backbone="kerashub:<preset>"` for a BERT-class preset.

BERT, DistilBERT, RoBERTa, XLM-RoBERTa, DeBERTaV3, ALBERT, ELECTRA, F-Net and the BERT-format
sentence-transformer presets: any KerasHub text Backbone whose preset has a tokenizer. The model
takes raw strings; its "preprocess" layer is the preset's own tokenizer and packer
(`tlkeras.text_layers.TextPacker`: start, end and pad tokens, segment ids) and its "backbone" is
the encoder's own layers, ending in one vector per text:

- `backbone_options.pooling`: "mean" (the default: the mean over real tokens), "pooled" (the
  encoder's pooled output where it has one, as BERT's [CLS] dense layer, else the first token) or
  "first" (the [CLS] token's state);
- `backbone_options.sequence_length` (default 128, at most the encoder's maximum): longer texts
  are cut, and how many were is logged and kept in run.json.

Transformer layers are the blocks of `unfreeze: blocks:N` and of `layer_decay` (the embeddings
before them; a pooler joins the last layer). `weights: imagenet` (the default) loads the preset's
weights, `null` builds the encoder randomly initialised, a weights file is loaded on top.
Where a run's config does not set them, text encoders train with their own measured defaults
(`tlkeras.text_layers.ENCODER_TRAINING_DEFAULTS`).
"""

from __future__ import annotations

import re

from tlkeras.backbones.kerashub_presets import import_keras_hub, load_preset, load_weights
from tlkeras.backbones.spec import BACKBONE_LAYER, BackboneSpec, BlockMap
from tlkeras.errors import BackboneError

OPTIONS = ("sequence_length", "pooling")
DEFAULT_SEQUENCE_LENGTH = 128
# Each encoder layer is one Keras layer in these families (ALBERT shares one layer: no blocks).
BLOCK_MAP = BlockMap("prefix", r"^((?:transformer|disentangled_attention_encoder|f_net)_layer_\d+)$")


def is_text_backbone(backbone) -> bool:
    """Whether a KerasHub Backbone takes token ids (a text encoder)."""
    return isinstance(backbone.input, dict) and "token_ids" in backbone.input


def get_spec(preset: str, backbone, options: dict, scheme: str) -> BackboneSpec:
    """The spec of a KerasHub text preset, from its backbone built without weights."""
    from tlkeras.text_layers import DEFAULT_POOLING, ENCODER_TRAINING_DEFAULTS, POOLINGS

    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise BackboneError(f"backbone_options: {', '.join(unknown)} do not apply to a KerasHub text encoder; its "
                            f"options are sequence_length and pooling ({', '.join(POOLINGS)}).")
    pooling = options.get("pooling", DEFAULT_POOLING)
    if pooling not in POOLINGS:
        raise BackboneError(f"backbone_options.pooling: {pooling!r} is not one of {', '.join(POOLINGS)}.")
    maximum = getattr(backbone, "max_sequence_length", None)
    length = options.get("sequence_length", min(DEFAULT_SEQUENCE_LENGTH, maximum or DEFAULT_SEQUENCE_LENGTH))
    if isinstance(length, bool) or not isinstance(length, int) or length < 3 or (maximum and length > maximum):
        top = f"{maximum}, the encoder's maximum" if maximum else "the encoder's maximum"
        raise BackboneError(f"backbone_options.sequence_length: {length!r} is not valid; use an integer from 3 to "
                            f"{top} (two places hold the start and end tokens).")
    options.update(sequence_length=length, pooling=pooling)
    _check_tokenizer(preset, backbone)
    layers = [layer.name for layer in backbone.layers]
    label = preset.rstrip("/").rsplit("/", 1)[-1] or preset
    return BackboneSpec(
        name=f"{scheme}{preset}",
        display_name=f"kerashub-{label}",
        source="kerashub",
        preprocessing="none",
        default_size=0,
        min_size=0,
        block_map=BLOCK_MAP if any(re.search(BLOCK_MAP.pattern, n) for n in layers) else None,
        builder=lambda size, weights, opts: _build(preset, weights, opts),
        options=options,
        modality="tokens",
        own_weights=True,
        tokenizer=lambda: _packer(preset, length),
        training_defaults=ENCODER_TRAINING_DEFAULTS,
    )


def _check_tokenizer(preset: str, backbone) -> None:
    """Refuse, before any work, a text preset saved without its tokenizer."""

    keras_hub = import_keras_hub(preset)
    try:
        keras_hub.tokenizers.Tokenizer.from_preset(preset)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise BackboneError(
            f"backbone: the KerasHub preset {preset!r} is a {type(backbone).__name__} (a text encoder) but its "
            f"tokenizer could not be loaded ({first}); tlkeras tokenises raw strings with the preset's own tokenizer: "
            "save it to the same folder (keras_hub.tokenizers.Tokenizer.from_preset(name).save_to_preset(folder))."
        ) from None


def _packer(preset: str, sequence_length: int):
    """The preset's tokenizer and packer as the model's "preprocess" layer."""
    from tlkeras.layers import PREPROCESS_LAYER
    from tlkeras.text_layers import TextPacker

    keras_hub = import_keras_hub(preset)
    try:
        preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(preset,
                                                                                sequence_length=sequence_length)
    except Exception:  # a family without a classifier preprocessor (ELECTRA): its tokenizer, BERT's packing
        tokenizer = load_preset(keras_hub.tokenizers.Tokenizer, preset)
        preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=sequence_length)
    return TextPacker(preprocessor, name=PREPROCESS_LAYER)


def _build(preset: str, weights, options: dict):
    import keras

    from tlkeras.text_layers import DEFAULT_POOLING, TokenPooling

    keras_hub = import_keras_hub(preset)
    loaded = load_preset(keras_hub.models.Backbone, preset, load_weights=weights is not None)
    outputs = loaded.output
    sequence = outputs["sequence_output"] if isinstance(outputs, dict) else outputs
    pooled = outputs.get("pooled_output") if isinstance(outputs, dict) else None
    pooling = options.get("pooling", DEFAULT_POOLING)
    if pooling == "pooled" and pooled is not None:
        features = pooled
    else:
        features = TokenPooling("first" if pooling == "pooled" else pooling, name="token_pooling")(
            sequence, loaded.input["padding_mask"])
    # The encoder's own layers as a functional model named "backbone" (what tlkeras looks for).
    backbone = keras.Model(loaded.input, features, name=BACKBONE_LAYER)
    load_weights(backbone, preset, weights)
    return backbone
