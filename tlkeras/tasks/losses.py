"""The Keras losses of the Tasks (imported when a model is compiled or loaded, not with the Task)."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tlkeras")
class MultiLabelCrossentropy(keras.losses.Loss):
    """Binary cross-entropy of each label, averaged over the labels, with label smoothing and
    optional weights on each label's positive term (`class_weight` of a multi-label task)."""

    def __init__(self, positive_weights=None, label_smoothing: float = 0.0, name="multi_label_crossentropy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.positive_weights = [float(w) for w in positive_weights] if positive_weights else None
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        if self.label_smoothing:
            y_true = y_true * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        p = ops.clip(y_pred, keras.config.epsilon(), 1.0 - keras.config.epsilon())
        positive = -y_true * ops.log(p)
        if self.positive_weights:
            positive = positive * ops.convert_to_tensor(self.positive_weights, dtype=p.dtype)
        return ops.mean(positive - (1.0 - y_true) * ops.log(1.0 - p), axis=-1)

    def get_config(self):
        return {**super().get_config(), "positive_weights": self.positive_weights,
                "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="tlkeras")
class ClassAccuracy(keras.metrics.MeanMetricWrapper):
    """Single-label accuracy on class indices and on soft targets (mixed examples) alike: a soft target counts
    its largest share as the class. One compiled metric serves a stage's mixed training batches and its
    validation's plain labels."""

    def __init__(self, name="accuracy", dtype=None):
        super().__init__(fn=_class_accuracy, name=name, dtype=dtype)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


def dominant_class(labels):
    """Class indices [N] (int64) of class indices or soft targets (the largest share; a soft binary label rounded)."""
    import tensorflow as tf

    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 2 and labels.shape[-1] not in (None, 1):
        return tf.argmax(labels, axis=-1, output_type=tf.int64)
    labels = tf.reshape(labels, [-1])
    if labels.dtype.is_floating:
        labels = tf.round(labels)
    return tf.cast(labels, tf.int64)


def _class_accuracy(y_true, y_pred):
    import tensorflow as tf

    if y_pred.shape[-1] == 1:  # one sigmoid unit
        predicted = tf.cast(tf.reshape(y_pred, [-1]) > 0.5, tf.int64)
    else:
        predicted = tf.argmax(y_pred, axis=-1, output_type=tf.int64)
    return tf.cast(tf.equal(predicted, dominant_class(y_true)), tf.float32)


@keras.saving.register_keras_serializable(package="tlkeras")
class LabelAccuracy(keras.metrics.MeanMetricWrapper):
    """Multi-label accuracy (the share of labels right at `threshold`) on multi-hot labels and on soft targets
    alike: a soft target's labels are those at or above one half."""

    def __init__(self, name="accuracy", threshold=0.5, dtype=None):
        self.threshold = float(threshold)
        super().__init__(fn=_label_accuracy, name=name, dtype=dtype, threshold=self.threshold)

    def get_config(self):
        return {"name": self.name, "threshold": self.threshold, "dtype": self.dtype}


def _label_accuracy(y_true, y_pred, threshold=0.5):
    import tensorflow as tf

    present = tf.cast(tf.cast(y_true, tf.float32) >= 0.5, tf.float32)
    predicted = tf.cast(tf.cast(y_pred, tf.float32) >= threshold, tf.float32)
    return tf.reduce_mean(tf.cast(tf.equal(predicted, present), tf.float32), axis=-1)


@keras.saving.register_keras_serializable(package="tlkeras")
class TargetOutput(keras.layers.Dense):
    """A regression head's output layer: a Dense layer whose linear outputs are values in standard units, returned in
    the targets' own units (times `std`, plus `mean`: the training split's), or within `target_range` [low, high]
    through a scaled sigmoid. The constants are the layer's config, so the model and its export carry them."""

    def __init__(self, units, mean=None, std=None, target_range=None, **kwargs):
        kwargs.pop("activation", None)
        super().__init__(units, **kwargs)
        self.mean = [float(v) for v in mean] if mean is not None else [0.0] * units
        self.std = [float(v) for v in std] if std is not None else [1.0] * units
        self.target_range = [float(v) for v in target_range] if target_range else None

    def call(self, inputs, training=None):
        z = super().call(inputs, training=training)
        if self.target_range:
            low, high = self.target_range
            return low + (high - low) * ops.sigmoid(z)
        return z * ops.convert_to_tensor(self.std, dtype=z.dtype) + ops.convert_to_tensor(self.mean, dtype=z.dtype)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std, "target_range": self.target_range}


@keras.saving.register_keras_serializable(package="tlkeras")
class StandardisedLoss(keras.losses.Loss):
    """A regression loss on errors in standard units ((target - value) / `scale`, per target), averaged over the
    targets: "huber" (threshold 1 standard deviation), "mse" or "mae"."""

    def __init__(self, kind: str = "huber", scale=None, name=None, **kwargs):
        super().__init__(name=name or f"standardised_{kind}", **kwargs)
        self.kind = kind
        self.scale = [float(v) for v in scale] if scale is not None else None

    def call(self, y_true, y_pred):
        y_true = ops.reshape(ops.cast(y_true, y_pred.dtype), ops.shape(y_pred))
        error = y_true - y_pred
        if self.scale is not None:
            error = error / ops.convert_to_tensor(self.scale, dtype=y_pred.dtype)
        size = ops.abs(error)
        if self.kind == "mse":
            values = ops.square(error)
        elif self.kind == "mae":
            values = size
        else:
            values = ops.where(size <= 1.0, 0.5 * ops.square(error), size - 0.5)
        return ops.mean(values, axis=-1)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "scale": self.scale}
