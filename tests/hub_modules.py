"""Tiny TF Hub-format modules made the way real ones were: a tf_keras model saved with
tf.saved_model.save (reusable SavedModel: __call__(inputs, training), variables,
trainable_variables, regularization_losses). Used by the fixtures; no network."""

from __future__ import annotations

import tensorflow as tf

VOCABULARY = ["red", "green", "blue", "apple", "leaf", "sky", "sea", "grass", "fire", "cherry"]


def save_image_module(path: str, size: int | None = 32, seed: int = 0) -> str:
    """An image feature-vector module: [N, size, size, 3] in [0, 1] -> [N, 16], with Conv, an L2
    regulariser and BatchNormalization (moving statistics set from one batch, like pretrained ones)."""
    import tf_keras

    tf_keras.utils.set_random_seed(seed)
    inputs = tf_keras.Input((size, size, 3))
    x = tf_keras.layers.Conv2D(8, 3, strides=2, kernel_regularizer=tf_keras.regularizers.L2(1e-3), name="conv1")(inputs)
    x = tf_keras.layers.BatchNormalization(name="bn1")(x)
    x = tf_keras.layers.ReLU()(x)
    x = tf_keras.layers.Conv2D(16, 3, strides=2, name="conv2")(x)
    x = tf_keras.layers.BatchNormalization(name="bn2")(x)
    x = tf_keras.layers.ReLU()(x)
    outputs = tf_keras.layers.GlobalAveragePooling2D()(x)
    model = tf_keras.Model(inputs, outputs)
    for layer in model.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(tf.random.uniform((16, size or 32, size or 32, 3)), training=True)  # moving statistics of a batch
    tf.saved_model.save(model, path)
    return path


def save_text_module(path: str, dim: int = 8, seed: int = 0) -> str:
    """A text-embedding module: [N] tf.string -> [N, dim]: words looked up in a vocabulary table
    (a resource the export must carry), embedded, averaged, and a Dense layer."""
    import tf_keras

    class Embed(tf_keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.lookup = tf_keras.layers.StringLookup(vocabulary=VOCABULARY)
            self.embedding = tf_keras.layers.Embedding(
                len(VOCABULARY) + 1, dim, embeddings_initializer=tf_keras.initializers.RandomNormal(stddev=1.0),
                name="embedding")

        def call(self, text):
            words = tf.strings.split(tf.strings.lower(text))
            vectors = tf.ragged.map_flat_values(self.embedding, self.lookup(words))
            counts = tf.cast(words.row_lengths(), tf.float32)[:, None]
            return tf.math.divide_no_nan(tf.reduce_sum(vectors, axis=1), counts)  # an empty text: zeros

    tf_keras.utils.set_random_seed(seed)
    inputs = tf_keras.Input((), dtype=tf.string)
    x = Embed(name="embed")(inputs)
    outputs = tf_keras.layers.Dense(dim, activation="tanh", name="dense")(x)
    tf.saved_model.save(tf_keras.Model(inputs, outputs), path)
    return path


# === TF Hub's BERT pair: a preprocessing model and a Transformer encoder ===


def save_bert_preprocessor(path: str, vocabulary: list[str], seq_length: int = 16) -> str:
    """A BERT preprocessing model with TF Hub's interface, of TensorFlow Text ops as the published ones:
    `__call__(sentences)` -> {input_word_ids, input_mask, input_type_ids} [N, seq_length];
    `tokenize(sentences)` -> word pieces [N, words, pieces] (RaggedTensor, int32) with
    `tokenize.get_special_tokens_dict()`; `bert_pack_inputs(segments, seq_length=)` joining one or two
    tokenised segments ([CLS] a [SEP] b [SEP], round-robin trimming). The vocabulary is an asset."""
    import os
    import tempfile

    import tensorflow_text as text

    ids = {token: i for i, token in enumerate(vocabulary)}
    special = {"start_of_sequence_id": ids["[CLS]"], "end_of_segment_id": ids["[SEP]"], "padding_id": ids["[PAD]"],
               "mask_id": ids["[MASK]"], "vocab_size": len(vocabulary)}

    class Tokenize(tf.Module):
        def __init__(self, vocab_file):
            super().__init__()
            self.table = tf.lookup.StaticVocabularyTable(tf.lookup.TextFileInitializer(
                vocab_file, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER), num_oov_buckets=1)
            self._tokenizer = text.BertTokenizer(self.table, token_out_type=tf.int32, lower_case=True)
            self.get_special_tokens_dict = tf.Module()
            self.get_special_tokens_dict.__call__ = tf.function(
                lambda: {k: tf.constant(v, tf.int32) for k, v in special.items()}, input_signature=[])

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, sentences):
            return self._tokenizer.tokenize(sentences)

    class Pack(tf.Module):
        def __init__(self):
            super().__init__()

            @tf.function(autograph=False)
            def call(inputs, seq_length=seq_length):
                segments = [s.merge_dims(-2, -1) if s.ragged_rank > 1 else s for s in inputs]
                trimmed = text.RoundRobinTrimmer(seq_length - len(segments) - 1).trim(segments)
                word_ids, type_ids = text.combine_segments(trimmed, special["start_of_sequence_id"],
                                                           special["end_of_segment_id"])
                word_ids, mask = text.pad_model_inputs(word_ids, seq_length, pad_value=special["padding_id"])
                type_ids, _ = text.pad_model_inputs(type_ids, seq_length, pad_value=0)
                return {"input_word_ids": word_ids, "input_mask": mask, "input_type_ids": type_ids}

            self.__call__ = call
            for rank in (1, 2):
                for count in (1, 2):
                    call.get_concrete_function([tf.RaggedTensorSpec([None] * (rank + 1), tf.int32)] * count,
                                               seq_length=tf.TensorSpec([], tf.int32))

    class Preprocessor(tf.Module):
        def __init__(self, vocab_file):
            super().__init__()
            self.tokenize = Tokenize(vocab_file)
            self.bert_pack_inputs = Pack()

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, sentences):
            return self.bert_pack_inputs.__call__([self.tokenize(sentences)], seq_length=seq_length)

    with tempfile.TemporaryDirectory() as folder:
        vocab_file = os.path.join(folder, "vocab.txt")
        with open(vocab_file, "w", encoding="utf-8") as f:
            f.write("".join(token + "\n" for token in vocabulary))
        tf.saved_model.save(Preprocessor(vocab_file), path)  # the vocabulary is copied in as an asset
    return path


def save_bert_encoder(path: str, vocabulary_size: int, hidden: int = 16, layers: int = 2, heads: int = 2,
                      max_length: int = 32, dropout: float = 0.1, seed: int = 0) -> str:
    """A Transformer encoder with TF Hub's interface, made as TF Model Garden's are (tf_keras, variables
    named word_embeddings/..., transformer/layer_<i>/..., pooler_transform/...): {input_word_ids,
    input_mask, input_type_ids} int32 [N, T] -> {pooled_output [N, H], sequence_output [N, T, H],
    encoder_outputs, default}."""
    import tf_keras

    class Block(tf_keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.attention = tf_keras.layers.MultiHeadAttention(heads, hidden // heads, dropout=dropout,
                                                                name="self_attention")
            self.attention_norm = tf_keras.layers.LayerNormalization(epsilon=1e-12, name="self_attention_layer_norm")
            self.intermediate = tf_keras.layers.Dense(2 * hidden, activation="gelu", name="intermediate")
            self.out = tf_keras.layers.Dense(hidden, name="output")
            self.drop = tf_keras.layers.Dropout(dropout)
            self.output_norm = tf_keras.layers.LayerNormalization(epsilon=1e-12, name="output_layer_norm")

        def call(self, x, mask, training=None):
            x = self.attention_norm(x + self.drop(self.attention(x, x, attention_mask=mask, training=training),
                                                  training=training))
            return self.output_norm(x + self.drop(self.out(self.intermediate(x)), training=training))

    class Positions(tf_keras.layers.Layer):
        def build(self, shape):
            self.embeddings = self.add_weight("embeddings", (max_length, hidden),
                                              initializer=tf_keras.initializers.TruncatedNormal(stddev=0.02))

        def call(self, x):
            return x + self.embeddings[None, : tf.shape(x)[1]]

    tf_keras.utils.set_random_seed(seed)
    inputs = {key: tf_keras.Input((None,), dtype=tf.int32, name=key)
              for key in ("input_word_ids", "input_mask", "input_type_ids")}
    # words spread wide and positions narrow, so that a random encoder's states still tell words apart
    x = tf_keras.layers.Embedding(vocabulary_size, hidden, embeddings_initializer=tf_keras.initializers.RandomNormal(
        stddev=1.0), name="word_embeddings")(inputs["input_word_ids"])
    x = Positions(name="position_embedding")(x)
    x = x + tf_keras.layers.Embedding(2, hidden, name="type_embeddings")(inputs["input_type_ids"])
    x = tf_keras.layers.LayerNormalization(epsilon=1e-12, name="embeddings/layer_norm")(x)
    mask = tf.cast(inputs["input_mask"][:, None, :], tf.bool)
    encoder_outputs = []
    for i in range(layers):
        x = Block(name=f"transformer/layer_{i}")(x, mask)
        encoder_outputs.append(x)
    pooled = tf_keras.layers.Dense(hidden, activation="tanh", name="pooler_transform")(x[:, 0, :])
    model = tf_keras.Model(inputs, {"pooled_output": pooled, "sequence_output": x, "encoder_outputs": encoder_outputs,
                                    "default": pooled})
    tf.saved_model.save(model, path)
    return path
