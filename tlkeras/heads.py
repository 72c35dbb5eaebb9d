"""The new classification head attached to a backbone's features."""

from __future__ import annotations

from typing import Sequence

import keras

HEAD_PREFIX = "head_"


def build_head(
    features,
    num_classes: int,
    *,
    hidden_units: Sequence[int] = (),
    dropout: float = 0.2,
    l2: float = 0.0,
    pooling: str = "avg",
):
    """Pool `features`, then optional hidden Dense layers, dropout and the output layer.

    Multi-class heads end in a softmax over `num_classes`; binary heads (num_classes == 2)
    in one sigmoid unit. The output layer always computes in float32, so the probabilities
    stay exact under a mixed-precision policy. Layer names start with "head_" except the
    output, "predictions".

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
        x = pool(name=f"{HEAD_PREFIX}pool")(x)
    elif rank == 3:
        pool = keras.layers.GlobalAveragePooling1D if pooling == "avg" else keras.layers.GlobalMaxPooling1D
        x = pool(name=f"{HEAD_PREFIX}pool")(x)
    elif rank != 2:
        raise ValueError(f"backbone features must be a feature map or vector, got shape {x.shape}")
    regularizer = keras.regularizers.L2(l2) if l2 > 0 else None
    for i, units in enumerate(hidden_units):
        if dropout > 0:
            x = keras.layers.Dropout(dropout, name=f"{HEAD_PREFIX}dropout_{i}")(x)
        x = keras.layers.Dense(units, activation="relu", kernel_regularizer=regularizer, name=f"{HEAD_PREFIX}dense_{i}")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name=f"{HEAD_PREFIX}dropout")(x)
    binary = num_classes == 2
    return keras.layers.Dense(
        1 if binary else num_classes,
        activation="sigmoid" if binary else "softmax",
        kernel_regularizer=regularizer,
        dtype="float32",
        name="predictions",
    )(x)
