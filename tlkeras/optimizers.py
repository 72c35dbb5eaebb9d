"""How a stage optimizes: optimizers with layer-wise learning rates, schedules and the loss.

Discriminative (layer-wise) learning rates for Keras 3 optimizers:

Keras 3 has no parameter groups. These optimizers multiply the learning rate of each variable by
its own factor inside `update_step`, the per-variable hook every Keras optimizer goes through - so
Adam's and SGD's own update rules stay untouched, and it works under tf.distribute (the hook runs
inside the strategy's per-variable update) and under a LossScaleOptimizer. Decoupled weight decay
is applied in the same hook with the same per-variable rate, and skips biases and normalisation
parameters.

Example:

>>> import keras, numpy as np
>>> v = keras.Variable(np.ones(2, "float32"), name="kernel")
>>> opt = LayerwiseSGD(learning_rate=0.1, multipliers={v.path: 0.5})
>>> opt.apply([np.ones(2, "float32")], [v])
>>> np.asarray(v).tolist()  # 1 - 0.1 * 0.5 * 1
[0.949999988079071, 0.949999988079071]
"""

from __future__ import annotations

import math
from typing import Optional

import keras
from keras import ops

# Variables whose name contains one of these get no weight decay.
NO_DECAY = ("bias", "gamma", "beta", "moving_mean", "moving_variance")


class _Layerwise:
    """Mixin for a Keras optimizer: per-variable learning-rate multipliers (by variable path)."""

    def __init__(self, *args, multipliers: Optional[dict] = None, decay: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.multipliers = dict(multipliers or {})
        self.decay = float(decay)

    def build(self, variables):
        super().build(variables)
        # update_step receives backend variables (and, under a strategy, per-replica components),
        # which `_var_key` maps back to one key per Keras variable.
        self._factors = {self._var_key(v): float(self.multipliers.get(v.path, 1.0)) for v in variables}
        self._decays = {self._var_key(v): not any(token in v.name for token in NO_DECAY) for v in variables}

    def update_step(self, gradient, variable, learning_rate):
        key = self._var_key(variable)
        rate = ops.cast(learning_rate, variable.dtype) * self._factors.get(key, 1.0)
        if self.decay and self._decays.get(key, False):
            variable.assign(variable - variable * ops.cast(self.decay, variable.dtype) * rate)
        return super().update_step(gradient, variable, rate)

    def get_config(self):
        config = super().get_config()
        config.update({"multipliers": self.multipliers, "decay": self.decay})
        return config


@keras.saving.register_keras_serializable(package="tlkeras")
class LayerwiseAdam(_Layerwise, keras.optimizers.Adam):
    """Adam with per-variable learning-rate multipliers and decoupled weight decay (`decay`)."""


@keras.saving.register_keras_serializable(package="tlkeras")
class LayerwiseSGD(_Layerwise, keras.optimizers.SGD):
    """SGD (with momentum) with per-variable learning-rate multipliers and decoupled weight decay."""




@keras.saving.register_keras_serializable(package="tlkeras")
class ShiftedSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule` evaluated `offset` steps later: a stage split into phases (gradual unfreezing),
    each with a fresh optimizer, still follows one schedule over the whole stage."""

    def __init__(self, schedule, offset: int):
        self.schedule = schedule
        self.offset = int(offset)

    def __call__(self, step):
        return self.schedule(step + self.offset)

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule), "offset": self.offset}

    @classmethod
    def from_config(cls, config):
        return cls(keras.optimizers.schedules.deserialize(config["schedule"]), config["offset"])


def make_schedule(stage, learning_rate: float, steps_per_epoch: Optional[int]):
    """The stage's rate: a float, or a schedule over the stage's steps.

    constant (optionally after a linear warm-up), cosine (warm-up, then cosine decay to 0) or
    one_cycle (from rate/25 up to the rate over the first 30 %, then cosine decay to 0).
    """
    if stage.schedule == "constant" and not stage.warmup_epochs:
        return learning_rate
    if not steps_per_epoch:
        from tlkeras._logging import get_logger

        get_logger().warning("the training data has no known length, so schedule %r cannot be laid out: "
                             "training at a constant %g (give the dataset a length, e.g. with "
                             "tf.data.experimental.assert_cardinality)", stage.schedule, learning_rate)
        return learning_rate
    total = max(1, stage.epochs * steps_per_epoch)
    if stage.schedule == "one_cycle":
        warmup = max(1, int(math.ceil(0.3 * total)))
        start = learning_rate / 25.0
    else:
        warmup = min(int(math.ceil(stage.warmup_epochs * steps_per_epoch)), total // 2)
        start = 0.0 if warmup else learning_rate
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=start,
        decay_steps=max(1, total - warmup),
        alpha=1.0 if stage.schedule == "constant" else 0.0,  # alpha=1: constant after the warm-up
        warmup_target=learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def make_optimizer(stage, learning_rate: float, steps_per_epoch: Optional[int], *,
                   multipliers: Optional[dict] = None, step_offset: int = 0):
    """The stage's optimizer: adam, adamw or sgd, with its schedule, per-variable rate
    `multipliers` ({variable path: factor}) and decoupled weight decay that spares biases and
    normalisation parameters. `step_offset` continues a schedule already `step_offset` steps in."""
    rate = make_schedule(stage, learning_rate, steps_per_epoch)
    if step_offset and not isinstance(rate, float):
        rate = ShiftedSchedule(rate, step_offset)
    if stage.optimizer == "sgd":
        return LayerwiseSGD(rate, momentum=stage.momentum, multipliers=multipliers, decay=stage.weight_decay)
    return LayerwiseAdam(rate, multipliers=multipliers, decay=stage.weight_decay)


@keras.saving.register_keras_serializable(package="tlkeras")
class SparseCrossentropy(keras.losses.Loss):
    """Categorical cross-entropy on integer labels, with label smoothing (which Keras 3's
    SparseCategoricalCrossentropy lacks): the target is (1 - s) on the true class plus s / C on
    every class."""

    def __init__(self, label_smoothing: float = 0.0, name="sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        num_classes = ops.shape(y_pred)[-1]
        y_true = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        target = ops.one_hot(y_true, num_classes, dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(target, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}
