"""TF Hub / Kaggle Models BERT-class text encoders: `backbone="hub:<encoder>"` with
`backbone_options.preprocessor: "hub:<its preprocessing model>"`.

TF Hub publishes its Transformer encoders (BERT, ALBERT, ELECTRA, Talking Heads, ...) as pairs: an
encoder that takes token ids (`input_word_ids`, `input_mask`, `input_type_ids`, int32 [N, T]) and
returns `pooled_output` [N, H] and `sequence_output` [N, T, H], and a preprocessing model that
turns strings into those ids (`tokenize`, then `bert_pack_inputs(segments, seq_length=T)`), built
of TensorFlow Text ops. tlkeras puts both in the model: its "preprocess" layer (`HubPacker`) is the
preprocessing model, its "backbone" the encoder in tlkeras's Keras 3 hub layer
(`tlkeras.backbones.hub_module.HubModule`), so raw strings go in, in training and in the export.

- `backbone_options.sequence_length` (default 128, at most the encoder's position embeddings): longer
  texts are cut by the preprocessing model (pairs: a token at a time from the longer text), and how
  many were is logged and kept in run.json.
- `backbone_options.pooling`: "mean" (the mean over real tokens, the default), "pooled" (the
  encoder's pooled_output: its [CLS] dense layer) or "first" (the [CLS] token's state).
- The encoder's transformer layers (its variables `transformer/layer_<i>/...`) are the blocks of
  `unfreeze: blocks:N`, of `layer_decay` and of gradual unfreezing; the embeddings come before them,
  the pooler joins the last one. An int N or a fraction counts the encoder's variables from the top.
- Loading the preprocessing model needs TensorFlow Text (`pip install "tlkeras[text]"`); TF Serving's
  model server links those ops; a Python client imports `tensorflow_text` before loading the export.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from tlkeras.backbones.hub_handles import resolve_handle
from tlkeras.backbones.hub_module import ENCODER_INPUTS, HubModule, _keep_spare, _take_spare, load_module
from tlkeras.backbones.spec import BlockMap
from tlkeras.errors import BackboneError
from tlkeras.text_layers import DEFAULT_POOLING, ENCODER_TRAINING_DEFAULTS, POOLINGS, Packer, TokenPooling

SCHEME = "hub:"
#: backbone_options that only a Transformer encoder takes
OPTIONS = ("preprocessor", "sequence_length", "pooling")
DEFAULT_SEQUENCE_LENGTH = 128
# TF Model Garden's encoders (what tfhub.dev's BERT family is) name each layer's variables this way.
BLOCK_MAP = BlockMap("prefix", r"^(transformer/layer_\d+)/")
_TEXT_EXTRA = 'pip install "tlkeras[text]"'


def import_text_ops() -> None:
    """TensorFlow Text registers the ops of BERT preprocessing models: import it before loading one."""
    try:
        import tensorflow_text  # noqa: F401
    except ImportError:
        raise BackboneError("a TF Hub BERT preprocessing model runs TensorFlow Text ops, and tensorflow-text is "
                            f"not installed: {_TEXT_EXTRA}.") from None


def encoder_options(handle: str, options: dict, module) -> dict:
    """Check a Transformer encoder's options against it (preprocessor given and loadable, pooling,
    sequence_length within its position embeddings); the options with their defaults filled in."""
    options = dict(options)
    preprocessor = options.get("preprocessor")
    if not preprocessor or not isinstance(preprocessor, str):
        raise BackboneError(
            f"backbone: hub:{handle} is a Transformer text encoder (it takes input_word_ids, input_mask and "
            "input_type_ids); give its preprocessing model with backbone_options.preprocessor, e.g. "
            "hub:https://tfhub.dev/tensorflow/bert_en_uncased_preprocess/3.")
    options["preprocessor"] = preprocessor if preprocessor.startswith(SCHEME) else SCHEME + preprocessor
    pooling = options.setdefault("pooling", DEFAULT_POOLING)
    if pooling not in POOLINGS:
        raise BackboneError(f"backbone_options.pooling: {pooling!r} is not one of {', '.join(POOLINGS)}.")
    maximum = _max_positions(module)
    length = options.setdefault("sequence_length", min(DEFAULT_SEQUENCE_LENGTH, maximum or DEFAULT_SEQUENCE_LENGTH))
    if isinstance(length, bool) or not isinstance(length, int) or length < 3 or (maximum and length > maximum):
        top = f"{maximum}, the encoder's maximum" if maximum else "the encoder's maximum"
        raise BackboneError(f"backbone_options.sequence_length: {length!r} is not valid; use an integer from 3 to "
                            f"{top} (two places hold the start and end tokens).")
    path = resolve_handle(options["preprocessor"][len(SCHEME):])
    _keep_spare(path, _load_preprocessor(path, options["preprocessor"]))
    return options


def block_map(module) -> "BlockMap | None":
    """The encoder's block map when its variables are named by transformer layer, else None."""
    import re

    names = [v.name for v in getattr(module, "trainable_variables", [])]
    return BLOCK_MAP if any(re.search(BLOCK_MAP.pattern, n) for n in names) else None


def _max_positions(module) -> "int | None":
    """The encoder's longest sequence: the rows of its position embeddings, when it names them."""
    for variable in getattr(module, "variables", []):
        if "position_embedding" in variable.name and variable.shape.rank == 2:
            return int(variable.shape[0])
    return None


def _load_preprocessor(path: str, where: str):
    import_text_ops()
    module = load_module(path)
    if not (hasattr(module, "tokenize") and hasattr(module, "bert_pack_inputs")):
        raise BackboneError(f"backbone_options.preprocessor: {where} is not a BERT preprocessing model (it has no "
                            "tokenize and bert_pack_inputs); use the preprocessing model published with the encoder.")
    return module


def encoder_features(handle: str, options: dict):
    """(inputs, features) of a Transformer encoder as a backbone: the three token-id inputs at the
    sequence length, the encoder in a `HubModule`, and its pooling."""
    length, pooling = options["sequence_length"], options["pooling"]
    inputs = {key: keras.Input((length,), dtype="int32", name=key) for key in ENCODER_INPUTS}
    layer = HubModule(handle, output_key="pooled_output" if pooling == "pooled" else "sequence_output",
                      name="hub_module")
    features = layer(inputs)
    if pooling != "pooled":
        features = TokenPooling(pooling, name="token_pooling")(features, inputs["input_mask"])
    return inputs, features


@keras.saving.register_keras_serializable(package="tlkeras")
class HubPacker(Packer):
    """A TF Hub BERT preprocessing model as a Keras 3 layer: strings [N] (a pair: a tuple of two
    batches) -> {"input_word_ids", "input_mask", "input_type_ids"} int32 [N, sequence_length}, by the
    model's own `tokenize` and `bert_pack_inputs`.

    Args:
        handle: URL, Kaggle handle or folder of the preprocessing model ("hub:" optional).
        sequence_length: tokens per example, start, separator and end tokens included.
    """

    def __init__(self, handle: str, sequence_length: int = DEFAULT_SEQUENCE_LENGTH, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.handle = handle[len(SCHEME):] if handle.startswith(SCHEME) else handle
        self._length = int(sequence_length)
        path = resolve_handle(self.handle)
        self._module = _take_spare(path) or _load_preprocessor(path, SCHEME + self.handle)
        self.supports_jit = False  # string ops have no XLA kernels

    @property
    def sequence_length(self) -> int:
        return self._length

    @property
    def description(self) -> str:
        return f"the TF Hub preprocessing model hub:{self.handle} (its tokenize and bert_pack_inputs)"

    def serving_resources(self) -> list:
        """The preprocessing model: its vocabulary table and functions go into the export."""
        return [self._module]

    @tf.autograph.experimental.do_not_convert
    def call(self, text):
        texts = list(text) if isinstance(text, (list, tuple)) else [text]
        segments = [self._module.tokenize(t) for t in texts]
        packed = self._module.bert_pack_inputs(segments, seq_length=tf.constant(self._length, tf.int32))
        return {key: packed[key] for key in ENCODER_INPUTS}

    def compute_output_spec(self, text):
        first = text[0] if isinstance(text, (list, tuple)) else text
        return {key: keras.KerasTensor((first.shape[0], self._length), "int32") for key in ENCODER_INPUTS}

    def _token_lengths(self, strings):
        import numpy as np

        tokens = self._module.tokenize(strings)  # [N, words, word pieces]
        while tokens.ragged_rank > 1:
            tokens = tokens.merge_dims(-2, -1)
        return np.asarray(tokens.row_lengths())

    def get_config(self):
        return {**super().get_config(), "handle": self.handle, "sequence_length": self._length}

