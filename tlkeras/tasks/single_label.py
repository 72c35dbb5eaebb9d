"""Single-label classification: each example is one of C classes; softmax (one sigmoid unit for
2 classes), cross-entropy, top-k answers."""

from __future__ import annotations

from typing import Optional

import numpy as np

from tlkeras._logging import get_logger
from tlkeras.errors import DataError
from tlkeras.tasks import labels as raw_labels
from tlkeras.tasks.task import Task

# class_weight="auto" turns balanced weights on when the largest class has more than this many
# times the training examples of the smallest: below it the weights would change little, above it
# an unweighted loss lets the large classes dominate.
AUTO_IMBALANCE_RATIO = 2.0


class SingleLabel(Task):
    """One class per example.

    >>> task = SingleLabel()
    >>> task.output_units(2), task.output_units(5), task.activation(5)
    (1, 5, 'softmax')
    >>> task.encode_labels(np.array(["dog", "cat", "dog"]), "data", None)
    (array([1, 0, 1]), ['cat', 'dog'])
    """

    name = "single_label"
    description = "single-label classification"
    accuracy_key = "accuracy"
    headline_key = "accuracy"
    best_epoch_by = "accuracy"  # the headline itself is logged every epoch
    self_trains = True
    min_classes = 2
    agreement_measure = "top-1 class"

    # === Model ===

    def output_units(self, num_classes: int) -> int:
        return 1 if num_classes == 2 else num_classes

    def activation(self, num_classes: int) -> str:
        return "sigmoid" if num_classes == 2 else "softmax"

    def to_probabilities(self, outputs):
        """A sigmoid unit p becomes [1 - p, p]."""
        from keras import ops

        if outputs.shape[-1] == 1:
            return ops.concatenate([1.0 - outputs, outputs], axis=-1)
        return outputs

    # === Training ===

    def loss(self, units: int, label_smoothing: float = 0.0, class_weight: Optional[dict] = None,
             soft: bool = False, options: Optional[dict] = None):
        import keras

        from tlkeras.optimizers import SparseCrossentropy

        if units == 1:  # a soft target is a float in [0, 1], which binary cross-entropy takes as it is
            return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
        if label_smoothing or soft:
            return SparseCrossentropy(label_smoothing)
        return keras.losses.SparseCategoricalCrossentropy()

    def soft_targets(self, labels, units: int):
        """One-hot rows (C > 2), or the label as a float (the one sigmoid unit of 2 classes).

        >>> SingleLabel().soft_targets(np.array([2, 0]), 3).numpy().tolist()
        [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
        """
        import tensorflow as tf

        if units == 1:
            return tf.cast(labels, tf.float32)
        return tf.one_hot(tf.cast(tf.reshape(labels, [-1]), tf.int32), units, dtype=tf.float32)

    def training_metrics(self, soft: bool = False) -> list:
        if soft:
            from tlkeras.tasks.losses import ClassAccuracy

            return [ClassAccuracy(name=self.accuracy_key)]
        return ["accuracy"]

    def correct(self, labels, probabilities):
        import tensorflow as tf

        probabilities = self.to_probabilities(probabilities)
        predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        return tf.cast(tf.equal(predicted, self.dominant_class(labels)), tf.float32)

    def dominant_class(self, labels):
        """Class indices [N] (int64) of encoded labels or soft targets (the largest share; a soft binary label
        rounded)."""
        from tlkeras.tasks.losses import dominant_class

        return dominant_class(labels)

    # === Labels ===

    def encode_labels(self, raw, key: str, class_names):
        """(int64 labels, class names) from class indices, names (sorted into class names), a one-hot
        matrix or label sets of exactly one label each."""
        if raw_labels.is_matrix(raw):
            matrix = raw_labels.check_multi_hot(raw, key, class_names)
            if not (matrix.sum(axis=1) == 1).all():
                raise DataError(f"{key}: task single_label needs exactly one 1 per row of the label matrix; set task: "
                                "multi_label (or auto) for several labels per example.")
            names = list(class_names) if class_names is not None else [str(i) for i in range(matrix.shape[1])]
            return matrix.argmax(axis=1).astype(np.int64), names
        if raw_labels.is_label_sets(raw):
            odd = [i for i, s in enumerate(raw) if len(s) != 1]
            if odd:
                raise DataError(f"{key}: example {odd[0] + 1} has {len(raw[odd[0]])} labels, but task single_label "
                                "takes exactly one; set task: multi_label (or auto).")
            raw = np.asarray([next(iter(s)) for s in raw])
        y = np.asarray(raw)
        if y.ndim != 1:
            raise DataError(f"{key}: labels must be a vector of class indices or names; got shape {y.shape}.")
        if y.dtype.kind in "iu":
            labels = y.astype(np.int64)
            if labels.size and labels.min() < 0:
                raise DataError(f"{key}: labels must be class indices >= 0; found {labels.min()}.")
            if class_names is None:
                class_names = [str(i) for i in range(int(labels.max()) + 1 if labels.size else 0)]
            elif labels.size and labels.max() >= len(class_names):
                raise DataError(f"{key}: label {labels.max()} is out of range for {len(class_names)} classes.")
            return labels, list(class_names)
        names = [str(v) for v in y]
        if class_names is None:
            class_names = sorted(set(names))
        lookup = {name: i for i, name in enumerate(class_names)}
        unknown = sorted(set(names) - set(lookup))
        if unknown:
            raise DataError(f"{key}: labels {', '.join(unknown[:5])} are not among the classes "
                            f"{', '.join(class_names)}.")
        return np.array([lookup[n] for n in names], dtype=np.int64), list(class_names)

    def class_counts(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)

    def strata(self, labels: np.ndarray) -> np.ndarray:
        return np.asarray(labels, dtype=np.int64)

    def has_class(self, labels: np.ndarray, c: int) -> np.ndarray:
        return np.asarray(labels) == c

    def _num_classes(self, labels: np.ndarray) -> int:
        return int(np.max(labels)) + 1 if len(labels) else 0

    def split(self, labels: np.ndarray, fraction: float, seed: int):
        """`fraction` of every class (rounded, at least 1 where a class has 2+), seeded."""
        rng = np.random.default_rng(seed)
        train_rows, val_rows = [], []
        for c in np.unique(labels):
            rows = np.flatnonzero(labels == c)
            rng.shuffle(rows)
            n_val = int(round(fraction * len(rows)))
            if len(rows) >= 2:
                n_val = min(max(n_val, 1), len(rows) - 1)
            else:
                n_val = 0
            val_rows.extend(rows[:n_val])
            train_rows.extend(rows[n_val:])
        return np.sort(np.array(train_rows, dtype=np.int64)), np.sort(np.array(val_rows, dtype=np.int64))

    def class_weight(self, setting, labels: np.ndarray, class_names: list[str]) -> Optional[dict]:
        """None, "balanced" (n / (k * n_c)), "auto" (balanced when the class counts differ by more
        than AUTO_IMBALANCE_RATIO, else None; logged) or {class name or index: weight}.

        >>> SingleLabel().class_weight("auto", np.array([0] * 9 + [1] * 3), ["a", "b"])
        {0: 0.6666666666666666, 1: 2.0}
        >>> SingleLabel().class_weight("auto", np.array([0] * 4 + [1] * 3), ["a", "b"]) is None
        True
        """
        if setting is None:
            return None
        k = len(class_names)
        if setting == "auto":
            counts = np.bincount(labels, minlength=k)
            ratio = counts.max() / max(counts.min(), 1)
            imbalanced = ratio > AUTO_IMBALANCE_RATIO
            get_logger().info(
                "class_weight=auto: the largest class has %.1fx the images of the smallest (threshold %.1fx): %s",
                ratio, AUTO_IMBALANCE_RATIO, "balanced weights on" if imbalanced else "no weights",
            )
            return self.class_weight("balanced", labels, class_names) if imbalanced else None
        if setting == "balanced":
            counts = np.bincount(labels, minlength=k).astype(np.float64)
            return {c: float(len(labels) / (k * counts[c])) if counts[c] else 0.0 for c in range(k)}
        return named_weights(setting, class_names, 1.0)

    # === Answers ===

    def answers(self, probabilities, class_names, decision, top_k):
        k = max(1, min(top_k, len(class_names)))
        rows = []
        for p in np.asarray(probabilities):
            order = np.argsort(-p, kind="stable")[:k]
            rows.append({"classes": [class_names[i] for i in order], "scores": [float(p[i]) for i in order]})
        return rows

    def serving_outputs(self, probabilities, class_names, decision, top_k):
        import tensorflow as tf

        k = min(top_k, int(class_names.shape[0]))
        scores, indices = tf.math.top_k(probabilities, k=k)
        return {"probabilities": probabilities, "classes": tf.gather(class_names, indices), "scores": scores}

    def output_description(self, class_names, decision, top_k):
        return {"probabilities": f"[N, {len(class_names)}]",
                "classes": f"[N, {min(top_k, len(class_names))}] names, best first", "scores": "their probabilities"}

    def agreement(self, expected, got, decision):
        """Top-1 agreement; where either model's top classes tie, naming any of them agrees.

        >>> SingleLabel().agreement(np.array([[0.5, 0.5], [0.9, 0.1]]), np.array([[0.4999, 0.5001], [0.1, 0.9]]), None)
        0.5
        """
        from tlkeras.tasks.task import TIE

        expected, got = np.asarray(expected, np.float64), np.asarray(got, np.float64)
        rows = np.arange(len(expected))
        mine, theirs = expected.argmax(1), got.argmax(1)
        same = (mine == theirs) | (expected[rows, theirs] >= expected.max(1) - TIE) | (
            got[rows, mine] >= got.max(1) - TIE)
        return float(same.mean()) if len(same) else 1.0

    def ties(self, probabilities, decision):
        from tlkeras.tasks.task import TIE

        top2 = np.sort(np.asarray(probabilities, np.float64), axis=1)[:, -2:]
        return int((top2[:, 1] - top2[:, 0] < TIE).sum()) if top2.shape[1] == 2 else 0

    # === Metrics ===

    def metrics(self, probabilities, labels, class_names, *, top_k=5, decision=None):
        from tlkeras.metrics import classification_metrics

        return classification_metrics(probabilities, labels, class_names, top_k=top_k)

    def format_metrics(self, metrics, noun="images"):
        from tlkeras.metrics import format_metrics

        return format_metrics(metrics, noun)

    def chance(self, metrics, labels):
        """Accuracy no better than always answering the most frequent class.

        >>> SingleLabel().chance({"accuracy": 0.5}, np.array([0, 1, 0, 1]))
        ('accuracy', 0.5, 0.5, 'always answering the most frequent class')
        >>> SingleLabel().chance({"accuracy": 0.9}, np.array([0, 1, 0, 1])) is None
        True
        """
        from tlkeras.tasks.task import CHANCE_MARGIN

        labels = np.asarray(labels)
        if not len(labels) or metrics.get("accuracy") is None:
            return None
        guess = float(np.bincount(labels).max() / len(labels))
        if metrics["accuracy"] <= guess + CHANCE_MARGIN:
            return "accuracy", float(metrics["accuracy"]), guess, "always answering the most frequent class"
        return None

def named_weights(setting: dict, class_names: list[str], default: float) -> dict:
    """{class index: weight} from a mapping of class names or indices to weights."""
    k = len(class_names)
    weights = {c: default for c in range(k)}
    for name, weight in setting.items():
        if name in class_names:
            weights[class_names.index(name)] = float(weight)
        elif isinstance(name, int) and 0 <= name < k:
            weights[name] = float(weight)
        else:
            raise DataError(f"class_weight: {name!r} is not a class; classes are {', '.join(class_names)}.")
    return weights
