"""The new classification head attached to a backbone's features."""

from __future__ import annotations

from typing import Sequence

import keras

HEAD_PREFIX = "head_"
HEAD_POOL = f"{HEAD_PREFIX}pool"
OUTPUT_LAYER = "predictions"


def build_head(
    features,
    units: int,
    *,
    activation: str = "softmax",
    hidden_units: Sequence[int] = (),
    dropout: float = 0.2,
    l2: float = 0.0,
    pooling: str = "avg",
    output=None,
):
    """Pool `features`, then optional hidden Dense layers, dropout and the output layer of `units`
    units with `activation` (what the model's Task asks for: `Task.output_units`, `Task.activation`), or
    `output(kernel_regularizer, name)`, the Task's own output layer (`Task.output_layer`).

    The output layer always computes in float32, so the probabilities stay exact under a
    mixed-precision policy. Layer names start with "head_" except the output, "predictions".

    Example:

    >>> import keras
    >>> x = keras.Input((4, 4, 8))
    >>> y = build_head(x, 3, hidden_units=[16], dropout=0.1, l2=1e-4)
    >>> keras.Model(x, y).output_shape
    (None, 3)
    """
    x = features
    rank = len(x.shape)
    if rank == 4:
        pool = keras.layers.GlobalAveragePooling2D if pooling == "avg" else keras.layers.GlobalMaxPooling2D
        x = pool(name=HEAD_POOL)(x)
    elif rank == 3:
        pool = keras.layers.GlobalAveragePooling1D if pooling == "avg" else keras.layers.GlobalMaxPooling1D
        x = pool(name=HEAD_POOL)(x)
    elif rank != 2:
        raise ValueError(f"backbone features must be a feature map or vector, got shape {x.shape}")
    regularizer = keras.regularizers.L2(l2) if l2 > 0 else None
    for i, width in enumerate(hidden_units):
        if dropout > 0:
            x = keras.layers.Dropout(dropout, name=f"{HEAD_PREFIX}dropout_{i}")(x)
        x = keras.layers.Dense(width, activation="relu", kernel_regularizer=regularizer, name=f"{HEAD_PREFIX}dense_{i}")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name=f"{HEAD_PREFIX}dropout")(x)
    if output is not None:
        return output(regularizer, OUTPUT_LAYER)(x)
    return keras.layers.Dense(
        units,
        activation=activation,
        kernel_regularizer=regularizer,
        dtype="float32",
        name=OUTPUT_LAYER,
    )(x)


def set_head_dropout(model, rate: float) -> None:
    """Set the rate of the head's Dropout before its output layer (a search's trials share one model; a rate, not
    a layer, so the model stays the same; rate 0 passes its inputs as they are)."""
    for layer in model.layers:
        if layer.name == f"{HEAD_PREFIX}dropout":
            layer.rate = float(rate)
