"""Keras layers of a tlkeras model on a tokenised text encoder (a KerasHub BERT-class preset).

`TextPacker` is the model's "preprocess" layer: it holds the preset's own tokenizer and packer,
so raw strings go into the model, training feeds it the same strings that TF Serving clients
send, and the export carries the tokenizer (TensorFlow Text ops: TF Serving's model server links
them; a Python client runs `import tensorflow_text` before `tf.saved_model.load`).
`TokenPooling` turns the encoder's token sequence into one vector (the first token, or the mean
over the real tokens). Both are registered, so `.keras` files reload in safe mode.
"""

from __future__ import annotations

import keras
from keras import ops

POOLINGS = ("pooled", "first", "mean")
# A Transformer encoder's one vector per text, unless backbone_options.pooling says otherwise: the mean over
# real tokens gave the frozen stage its best accuracy on both tasks of benchmarks/text_defaults.py, where the
# pooled output (a sentence-transformer's untrained pooler) stayed at the majority class (RESULTS.md).
DEFAULT_POOLING = "mean"
# What a text encoder's run trains with where its config does not say (BackboneSpec.training_defaults):
# measured by benchmarks/text_defaults.py (RESULTS.md). The head on cached features costs next to nothing a
# epoch, and 20 epochs at 1e-2 were worth 2-28 points over the general 5 at 3e-3; stage 2 trains the encoder
# at a transformer's rate, not the general default (stage 1's rate / 3, which would be 3.3e-3 here).
ENCODER_TRAINING_DEFAULTS = {
    "stage1.epochs": 20,
    "stage1.learning_rate": 1e-2,
    "stage2.learning_rate": 1e-4,
}


def import_keras_hub():
    try:
        import keras_hub
    except ImportError:
        from tlkeras.errors import BackboneError

        raise BackboneError('this model tokenises its text with KerasHub, which is not installed: '
                            'pip install "tlkeras[text]".') from None
    return keras_hub


class Packer(keras.layers.Layer):
    """What a text model's "preprocess" layer is: strings [N] (a pair: a tuple of two batches) -> the
    encoder's inputs, at a fixed `sequence_length`; `truncated` counts the texts it cuts and
    `description` says what it is (the model card). Subclasses give `call`, `sequence_length`,
    `description` and `_token_lengths`."""

    def build(self, input_shape=None):
        self.built = True  # no weights: a tokenizer and its vocabulary

    @property
    def sequence_length(self) -> int:
        raise NotImplementedError

    @property
    def description(self) -> str:
        raise NotImplementedError

    def _token_lengths(self, strings):
        """The number of tokens of each of `strings` (a tf.string [N]), as a NumPy array."""
        raise NotImplementedError

    def truncated(self, texts, batch_size: int = 512) -> int:
        """How many of `texts` (strings, or (first, second) pairs) have more tokens than fit (the
        sequence length less the packer's own start, separator and end tokens): the packer cuts them."""
        import numpy as np
        import tensorflow as tf

        pairs = bool(len(texts)) and isinstance(texts[0], (list, tuple))
        empty = (tf.constant([""]), tf.constant([""])) if pairs else tf.constant([""])
        mask = next(value for key, value in self(empty).items() if key in ("padding_mask", "input_mask"))
        capacity = self.sequence_length - int(np.sum(np.asarray(mask)))  # what the special tokens leave
        count = 0
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start:start + batch_size])
            segments = [[pair[i] for pair in batch] for i in range(2)] if pairs else [batch]
            lengths = sum(self._token_lengths(tf.constant(s, dtype=tf.string)) for s in segments)
            count += int(np.sum(lengths > capacity))
        return count


@keras.saving.register_keras_serializable(package="tlkeras")
class TextPacker(Packer):
    """Strings [N] -> the encoder's inputs ({"token_ids", "padding_mask", ...} of [N, sequence_length]).

    Args:
        preprocessor: a KerasHub `TextClassifierPreprocessor` (the preset's tokenizer and packer:
            start, end and pad tokens, segment ids, truncation).

    Example (a WordPiece vocabulary of a few words):

    >>> import keras_hub, tensorflow as tf
    >>> vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "film"]
    >>> packer = TextPacker(keras_hub.models.BertTextClassifierPreprocessor(
    ...     keras_hub.models.BertTokenizer(vocabulary=vocab), sequence_length=6))
    >>> packer(tf.constant(["good film", "film film film film film"]))["token_ids"].numpy().tolist()
    [[2, 5, 6, 3, 0, 0], [2, 6, 6, 6, 6, 3]]
    >>> packer.truncated(["good film", "film film film film film"])
    1
    """

    def __init__(self, preprocessor, output_dtypes: dict | None = None, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.preprocessor = preprocessor
        if output_dtypes is None:  # what this preset's packer gives (BERT: segment ids too), found by trying it
            import tensorflow as tf

            probe = preprocessor(tf.constant([""]))
            output_dtypes = {key: value.dtype.name for key, value in dict(probe).items()}
        # Kept in the config: a model being reloaded is rebuilt before the tokenizer's vocabulary is.
        self.output_dtypes = dict(output_dtypes)

    @property
    def sequence_length(self) -> int:
        return int(self.preprocessor.sequence_length)

    @property
    def tokenizer(self):
        return self.preprocessor.tokenizer

    @property
    def description(self) -> str:
        return f"the preset's {type(self.tokenizer).__name__} and packer (start, end and padding tokens)"

    def call(self, text):
        # a sentence pair is a tuple of two string batches, which the packer joins as the encoder expects;
        # passed as x=: KerasHub's preprocessors read a positional tuple as (x, y)
        return dict(self.preprocessor(x=tuple(text) if isinstance(text, (list, tuple)) else text))

    def compute_output_spec(self, text):
        first = text[0] if isinstance(text, (list, tuple)) else text
        shape = (first.shape[0], self.sequence_length)
        return {key: keras.KerasTensor(shape, dtype) for key, dtype in self.output_dtypes.items()}

    def _token_lengths(self, strings):
        return _lengths(self.tokenizer(strings))

    def get_config(self):
        return {**super().get_config(), "preprocessor": keras.saving.serialize_keras_object(self.preprocessor),
                "output_dtypes": dict(self.output_dtypes)}

    @classmethod
    def from_config(cls, config):
        import_keras_hub()  # registers KerasHub's classes
        config = dict(config)
        config["preprocessor"] = keras.saving.deserialize_keras_object(config["preprocessor"])
        return cls(**config)


def _lengths(tokens):
    import numpy as np

    if hasattr(tokens, "row_lengths"):  # a tf.RaggedTensor
        return np.asarray(tokens.row_lengths())
    return np.asarray([len(ids) for ids in tokens])  # lists of ids (KerasHub's eager workflow)


@keras.saving.register_keras_serializable(package="tlkeras")
class TokenPooling(keras.layers.Layer):
    """[N, T, H] token states and their [N, T] padding mask -> [N, H]: the first token ("first", the
    [CLS] position) or the mean over real tokens ("mean").

    >>> import numpy as np
    >>> x = np.array([[[1.0], [3.0], [100.0]]], "float32"); mask = np.array([[1, 1, 0]])
    >>> float(TokenPooling("mean")(x, mask)[0, 0]), float(TokenPooling("first")(x, mask)[0, 0])
    (2.0, 1.0)
    """

    def __init__(self, mode: str = "mean", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("first", "mean"):
            raise ValueError(f"mode {mode!r} is not 'first' or 'mean'")
        self.mode = mode

    def call(self, sequence, padding_mask):
        if self.mode == "first":
            return sequence[:, 0, :]
        mask = ops.expand_dims(ops.cast(padding_mask, sequence.dtype), -1)
        return ops.sum(sequence * mask, axis=1) / ops.maximum(ops.sum(mask, axis=1), 1.0)

    def compute_output_shape(self, sequence_shape, padding_mask_shape=None):
        return (sequence_shape[0], sequence_shape[-1])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
