"""Regression: each example has one or several numbers (an age, a price, a quality score) as its targets.

The targets are standardised on the training split: the head's output layer (`TargetOutput`) computes a value in
standard units and returns it in the user's units (times the training targets' standard deviation, plus their mean),
so `model.predict`, the export and every metric speak the user's units. The loss compares values in standard units
(Huber by default; `loss: mse | mae`), so its scale and Huber's threshold do not depend on the targets' units.
`target_range: [low, high]` bounds the output with a scaled sigmoid instead (fastai's `y_range`).

The task's `options` (mean, std, loss, range) are fixed from the training split before the model is built and kept
in the model's metadata and model card.

>>> task = Regression()
>>> labels, names = task.encode_labels(np.array(["1.5", "2", "-3e1"]), "data", ["age"])
>>> names, labels.tolist()
(['age'], [[1.5], [2.0], [-30.0]])
>>> task.options(labels, {})["mean"]
[-8.8333]
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from tlkeras.errors import DataError
from tlkeras.tasks.task import Task

LOSSES = ("huber", "mse", "mae")
DEFAULT_LOSS = "huber"
# Quantile bins the stratified split keeps in proportion (fewer for small data: at least 2 rows per bin)
SPLIT_BINS = 5
# Two models' values agree (parity checks) when each target is within this share of its spread (standard deviation)
AGREEMENT_TOLERANCE = 0.01
_DIGITS = 4


class Regression(Task):
    """One number or several per example (`class_names` name the targets: a CSV's label columns).

    >>> task = Regression()
    >>> task.output_units(2), task.activation(2), task.min_classes
    (2, 'linear', 1)
    """

    name = "regression"
    description = "regression"
    qualifier = "regression"  # the log's "data: ... (regression)"
    accuracy_key = "mae"  # training logs the mean absolute error in the targets' units
    best_epoch_by = "loss"
    self_trains = False
    headline_key = "r2"
    headline_name = "R2"
    min_classes = 1
    agreement_measure = f"each value within {AGREEMENT_TOLERANCE:.0%} of its target's standard deviation"
    output_key = "value"
    names_noun = ("target", "targets")
    pictures = "values"
    learns = "what sets the targets"

    # === Model ===

    def output_units(self, num_classes: int) -> int:
        return num_classes

    def activation(self, num_classes: int) -> str:
        return "linear"

    def options(self, labels: np.ndarray, settings: dict) -> dict:
        """The training targets' mean and standard deviation (a constant target's is 1), the loss and the range."""
        values = _matrix(labels)
        std = values.std(axis=0) if len(values) else np.ones(values.shape[1])
        std = np.where(std > 1e-12, std, 1.0)
        return {"mean": [round(float(v), _DIGITS) for v in values.mean(axis=0)] if len(values) else
                [0.0] * values.shape[1],
                "std": [float(f"{v:.6g}") for v in std], "loss": settings.get("loss") or DEFAULT_LOSS,
                "target_range": list(settings["target_range"]) if settings.get("target_range") else None}

    def output_layer(self, num_classes: int, options: dict, kernel_regularizer=None, name=None):
        from tlkeras.tasks.losses import TargetOutput

        return TargetOutput(num_classes, mean=options.get("mean"), std=options.get("std"),
                            target_range=options.get("target_range"), kernel_regularizer=kernel_regularizer,
                            dtype="float32", name=name)

    # === Training ===

    def loss(self, units: int, label_smoothing: float = 0.0, class_weight: Optional[dict] = None,
             soft: bool = False, options: Optional[dict] = None):
        from tlkeras.tasks.losses import StandardisedLoss

        options = options or {}
        return StandardisedLoss(options.get("loss") or DEFAULT_LOSS, scale=options.get("std"))

    def fit_class_weight(self, class_weight):
        return None

    def soft_targets(self, labels, units: int):
        """The targets themselves: a mixed example's target is the mix of the two targets."""
        import tensorflow as tf

        return tf.reshape(tf.cast(labels, tf.float32), [-1, units])

    def training_metrics(self, soft: bool = False) -> list:
        import keras

        return [keras.metrics.MeanAbsoluteError(name=self.accuracy_key)]

    def correct(self, labels, probabilities):
        """The absolute error of each example (averaged over its targets): what the own loop logs as `mae`."""
        import tensorflow as tf

        labels = tf.reshape(tf.cast(labels, tf.float32), tf.shape(probabilities))
        return tf.reduce_mean(tf.abs(labels - tf.cast(probabilities, tf.float32)), axis=-1)

    # === Labels ===

    def label_shape(self, num_classes: int) -> tuple:
        return (num_classes,)

    def label_dtype(self) -> str:
        return "float32"

    def names_of_columns(self, columns):
        """Each target is named after its column."""
        return list(columns)

    def encode_labels(self, raw, key: str, class_names):
        """(float32 [N, targets], target names) from numbers or cells that hold numbers (a table's)."""
        values = raw if isinstance(raw, np.ndarray) else np.asarray(raw, dtype=object)
        if values.ndim == 1:
            values = values[:, None]
        if values.ndim != 2:
            raise DataError(f"{key}: regression targets must be a vector or a [rows, targets] matrix; got shape "
                            f"{values.shape}.")
        if values.dtype.kind in "biuf":
            out = values.astype(np.float32)
        else:
            out = np.empty(values.shape, dtype=np.float32)
            for (row, column), cell in np.ndenumerate(values):
                try:
                    out[row, column] = float(str(cell).strip())
                except ValueError:
                    where = f" of {class_names[column]!r}" if class_names and column < len(class_names) else ""
                    raise DataError(f"{key}: row {row + 1}{where} holds {str(cell)!r}, which is not a number; a regression "
                                    "target must be one (fix or drop the row, or set task: single_label for "
                                    "classes).") from None
        bad = np.argwhere(~np.isfinite(out))
        if len(bad):
            row, column = bad[0]
            raise DataError(f"{key}: row {row + 1} has the target {out[row, column]}; regression targets must be "
                            "finite numbers.")
        if class_names is None:
            class_names = ["value"] if out.shape[1] == 1 else [f"value_{i}" for i in range(out.shape[1])]
        if len(class_names) != out.shape[1]:
            raise DataError(f"{key}: {out.shape[1]} target column(s) but {len(class_names)} target name(s) "
                            f"({', '.join(class_names)}).")
        return out, list(class_names)

    def class_counts(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """How many examples have each target."""
        values = _matrix(labels) if len(labels) else np.zeros((0, num_classes))
        return np.isfinite(values).sum(axis=0)

    def has_class(self, labels: np.ndarray, c: int) -> np.ndarray:
        return np.isfinite(_matrix(labels)[:, c])

    def _num_classes(self, labels: np.ndarray) -> int:
        return int(_matrix(labels).shape[1]) if len(labels) else 0

    def split(self, labels: np.ndarray, fraction: float, seed: int):
        """A seeded split keeping the first target's quantile bins in proportion (the single-label split of the bins).

        >>> train, val = Regression().split(np.arange(20, dtype=np.float32)[:, None], 0.25, 0)
        >>> len(val), sorted((np.arange(20)[val] // 4).tolist())  # one from each fifth of the range
        (5, [0, 1, 2, 3, 4])
        """
        from tlkeras.tasks.single_label import SingleLabel

        return SingleLabel().split(quantile_bins(labels), fraction, seed)

    def strata(self, labels: np.ndarray) -> np.ndarray:
        """The first target's quantile bins."""
        return quantile_bins(labels)

    def spread_rows(self, labels: np.ndarray, count: int) -> list[int]:
        """Rows spread over the first target's range, lowest to highest.

        >>> Regression().spread_rows(np.array([[5.0], [1.0], [3.0], [4.0], [2.0]]), 3)
        [1, 2, 0]
        """
        values = _matrix(labels)
        if not len(values) or count <= 0:
            return []
        order = np.argsort(values[:, 0], kind="stable")
        picks = np.unique(np.round(np.linspace(0, len(order) - 1, min(count, len(order)))).astype(int))
        return [int(order[i]) for i in picks]

    def class_weight(self, setting, labels: np.ndarray, class_names: list[str]) -> Optional[dict]:
        if setting is None:
            return None
        raise DataError(f"class_weight: {setting!r} weighs classes, and a regression task has none; drop class_weight "
                        "(or give rare targets more rows).")

    # === Answers ===

    def answers(self, probabilities, class_names, decision, top_k):
        return [{"values": {name: float(v) for name, v in zip(class_names, row)}} for row in np.asarray(probabilities)]

    def serving_outputs(self, probabilities, class_names, decision, top_k):
        return {"value": probabilities}

    def output_description(self, class_names, decision, top_k):
        return {"value": f"[N, {len(class_names)}] the values of {', '.join(class_names)}, in the targets' units"}

    def agreement(self, expected, got, decision):
        """Share of rows whose every value is within AGREEMENT_TOLERANCE of its target's spread in `expected`.

        >>> Regression().agreement(np.array([[0.0], [10.0]]), np.array([[0.01], [9.0]]), None)
        0.5
        """
        expected, got = np.asarray(expected, np.float64), np.asarray(got, np.float64)
        if not len(expected):
            return 1.0
        spread = expected.std(axis=0)
        tolerance = AGREEMENT_TOLERANCE * np.where(spread > 0, spread, 1.0)
        return float((np.abs(expected - got) <= tolerance).all(axis=1).mean())

    def ties(self, probabilities, decision):
        return 0

    # === Metrics ===

    def metrics(self, probabilities, labels, class_names, *, top_k=5, decision=None):
        from tlkeras.metrics import regression_metrics

        return regression_metrics(probabilities, labels, class_names)

    def format_metrics(self, metrics, noun="images"):
        from tlkeras.metrics import format_regression_metrics

        return format_regression_metrics(metrics, noun)

    def card_task(self, inputs_task):
        """The Inputs kind's name with regression for classification.

        >>> Regression().card_task("text-pair classification")
        'text-pair regression'
        """
        return inputs_task.replace("classification", "regression")

    def chance(self, metrics, labels):
        """R2 no better than answering the mean of the targets (0).

        >>> Regression().chance({"r2": 0.01}, np.zeros((4, 1)))
        ('R2', 0.01, 0.0, 'always answering the targets’ mean')
        """
        from tlkeras.tasks.task import CHANCE_MARGIN

        if metrics.get("r2") is None or not len(labels):
            return None
        if metrics["r2"] <= CHANCE_MARGIN:
            return "R2", float(metrics["r2"]), 0.0, "always answering the targets’ mean"
        return None

def quantile_bins(labels: np.ndarray, bins: int = SPLIT_BINS) -> np.ndarray:
    """The quantile bin of each row's first target (at most `bins`, fewer when rows are few).

    >>> quantile_bins(np.array([[3.0], [1.0], [2.0], [4.0]]), 2).tolist()
    [1, 0, 0, 1]
    """
    values = _matrix(labels)[:, 0]
    count = max(1, min(bins, len(values) // 2))
    ranks = np.argsort(np.argsort(values, kind="stable"), kind="stable")
    return (ranks * count // max(len(values), 1)).astype(np.int64)


def _matrix(labels) -> np.ndarray:
    """Targets as float64 [rows, targets] (a vector is one target)."""
    values = np.asarray(labels, dtype=np.float64)
    return values[:, None] if values.ndim == 1 else values
