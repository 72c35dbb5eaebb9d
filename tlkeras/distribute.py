"""Devices and numerics: the mixed-precision policy for the hardware in use."""

from __future__ import annotations

import contextlib

import keras

from tlkeras._logging import get_logger


def resolve_precision(setting: str = "auto") -> str:
    """The Keras dtype policy for `setting`: "auto" means mixed_float16 with a GPU,
    mixed_bfloat16 with a TPU, float32 on CPU (where float16 math is emulated and slower).

    >>> resolve_precision("mixed_bfloat16")
    'mixed_bfloat16'
    """
    if setting != "auto":
        return setting
    import tensorflow as tf

    if tf.config.list_logical_devices("TPU"):
        return "mixed_bfloat16"
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "float32"


@contextlib.contextmanager
def precision_policy(policy: str):
    """Build layers under `policy`, then restore the global policy (layers keep theirs)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    if policy != "float32":
        get_logger().info("mixed precision: %s (the output layer stays float32)", policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def uses_float16(model: keras.Model) -> bool:
    """Whether any layer of `model` (nested layers included) computes in float16."""
    return any(layer.dtype_policy.compute_dtype == "float16" for layer in model._flatten_layers())
