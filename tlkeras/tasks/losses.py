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
