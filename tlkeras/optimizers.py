"""How a stage optimizes: optimizers with layer-wise learning rates, schedules and the loss.

Discriminative (layer-wise) learning rates for Keras 3 optimizers:

Keras 3 has no parameter groups. These optimizers multiply the learning rate of each variable by
its own factor inside `update_step`, the per-variable hook every Keras optimizer goes through - so
it works under tf.distribute (the hook runs inside the strategy's per-variable update) and under a
LossScaleOptimizer. Decoupled weight decay is applied in the same hook with the same per-variable
rate, and skips biases and normalisation parameters.

The update itself is Adam's and SGD's own rule, written as TensorFlow's fused kernel
(`ResourceApplyAdam`, `ResourceApplyKerasMomentum`: the same equations as Keras 3's Adam and SGD,
which tf.keras used) instead of Keras's two dozen ops per variable: a train step traces and runs a
graph with thousands of ops fewer (benchmarks/fixed_costs.py). Gradients of embedding lookups
(IndexedSlices), AMSGrad and non-float variables take Keras's own rule.

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

# The dtypes TensorFlow's fused apply kernels are registered for on every device.
_FUSED_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _handle(variable):
    """The resource handle of a variable: a Keras variable's TensorFlow variable (under a strategy, inside its
    per-variable update, the component on the device being updated)."""
    return getattr(variable, "value", variable).handle

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
        if self._fusable(gradient, variable):
            return self._fused_update(gradient, variable, rate)
        return super().update_step(gradient, variable, rate)

    def _fusable(self, gradient, variable) -> bool:
        import tensorflow as tf

        return (keras.backend.backend() == "tensorflow" and isinstance(variable, tf.Variable)
                and not isinstance(gradient, tf.IndexedSlices) and variable.dtype.name in _FUSED_DTYPES)

    def _fused_update(self, gradient, variable, rate):
        raise NotImplementedError

    def get_config(self):
        config = super().get_config()
        config.update({"multipliers": self.multipliers, "decay": self.decay})
        return config


@keras.saving.register_keras_serializable(package="tlkeras")
class LayerwiseAdam(_Layerwise, keras.optimizers.Adam):
    """Adam with per-variable learning-rate multipliers and decoupled weight decay (`decay`)."""

    def _fusable(self, gradient, variable) -> bool:
        return not self.amsgrad and super()._fusable(gradient, variable)

    def _fused_update(self, gradient, variable, rate):
        # Keras's Adam: alpha = rate * sqrt(1 - b2^t) / (1 - b1^t); m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2);
        # variable -= alpha * m / (sqrt(v) + epsilon) - which is what this kernel computes.
        import tensorflow as tf

        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=_handle(self._momentums[index]), v=_handle(self._velocities[index]),
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step), lr=rate, beta1=beta_1, beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))


@keras.saving.register_keras_serializable(package="tlkeras")
class LayerwiseSGD(_Layerwise, keras.optimizers.SGD):
    """SGD (with momentum) with per-variable learning-rate multipliers and decoupled weight decay."""

    def _fused_update(self, gradient, variable, rate):
        # Keras's SGD: m = momentum * m - rate * g; variable += m (Nesterov: += momentum * m - rate * g).
        import tensorflow as tf

        dtype = variable.dtype
        gradient = tf.cast(gradient, dtype)
        if not self.momentum:
            tf.raw_ops.ResourceApplyGradientDescent(var=variable.handle, alpha=rate, delta=gradient)
            return
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle, accum=_handle(self.momentums[self._get_variable_index(variable)]), lr=rate,
            grad=gradient, momentum=tf.cast(self.momentum, dtype), use_nesterov=self.nesterov)



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
    every class. Soft targets (rows of C shares, from mixed examples) are taken as they are."""

    def __init__(self, label_smoothing: float = 0.0, name="sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        num_classes = ops.shape(y_pred)[-1]
        if len(y_true.shape) == 2 and y_true.shape[-1] == y_pred.shape[-1] and y_pred.shape[-1] != 1:
            target = ops.cast(y_true, y_pred.dtype)  # soft targets
        else:
            y_true = ops.reshape(ops.cast(y_true, "int32"), (-1,))
            target = ops.one_hot(y_true, num_classes, dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(target, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}
