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
