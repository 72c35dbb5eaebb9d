"""Multi-label classification: each example carries any number of C labels (none included); one
sigmoid per class, binary cross-entropy, and per-class thresholds chosen on the validation split.

The thresholds are the task's `decision`: chosen after training to maximise each class's F1 on
the validation split (`threshold: per_class`, the default), one threshold maximising micro-F1
(`global`), or a fixed number. They are stored with the model, written to the model card and
built into the export, whose `labels` output names the classes at or above them.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from tlkeras._logging import get_logger
from tlkeras.errors import DataError
from tlkeras.tasks import labels as raw_labels
from tlkeras.tasks.single_label import AUTO_IMBALANCE_RATIO, named_weights
from tlkeras.tasks.task import Task

DEFAULT_THRESHOLD = 0.5
THRESHOLD_CHOICES = ("per_class", "global")


class MultiLabel(Task):
    """Any number of labels per example.

    >>> task = MultiLabel()
    >>> task.output_units(3), task.activation(3)
    (3, 'sigmoid')
    >>> labels, names = task.encode_labels([["sea", "sun"], [], ["sun"]], "data", None)
    >>> names, labels.tolist()
    (['sea', 'sun'], [[1.0, 1.0], [0.0, 0.0], [0.0, 1.0]])
    """

    name = "multi_label"
    description = "multi-label classification"
    accuracy_key = "binary_accuracy"
    # The best epoch by the loss: the binary accuracy logged each epoch counts every absent label (mostly right), and
    # the headline micro-F1 needs the thresholds chosen after training.
    best_epoch_by = "loss"
    headline_key = "micro_f1"
    headline_name = "micro-F1"
    qualifier = "multi-label"
    min_classes = 1
    agreement_measure = "each label at its threshold"
    pictures = "labels"

    # === Model ===

    def output_units(self, num_classes: int) -> int:
        return num_classes

    def activation(self, num_classes: int) -> str:
        return "sigmoid"

    # === Training ===

    def loss(self, units: int, label_smoothing: float = 0.0, class_weight: Optional[dict] = None,
             soft: bool = False, options: Optional[dict] = None):  # binary cross-entropy takes soft targets as they are
        positive = None
        if class_weight:
            positive = [float(class_weight.get(c, 1.0)) for c in range(units)]
        from tlkeras.tasks.losses import MultiLabelCrossentropy

        return MultiLabelCrossentropy(positive_weights=positive, label_smoothing=label_smoothing)

    def fit_class_weight(self, class_weight):
        return None  # the loss weighs each label's positives; fit's class_weight is for one class per example

    def soft_targets(self, labels, units: int):
        import tensorflow as tf

        return tf.cast(labels, tf.float32)

    def training_metrics(self, soft: bool = False) -> list:
        import keras

        if soft:
            from tlkeras.tasks.losses import LabelAccuracy

            return [LabelAccuracy(name=self.accuracy_key, threshold=DEFAULT_THRESHOLD)]
        return [keras.metrics.BinaryAccuracy(name=self.accuracy_key, threshold=DEFAULT_THRESHOLD)]

    def correct(self, labels, probabilities):
        import tensorflow as tf

        present = tf.cast(tf.cast(labels, tf.float32) >= 0.5, tf.float32)  # a soft target's labels: at least half
        hits = tf.equal(tf.cast(probabilities >= DEFAULT_THRESHOLD, tf.float32), present)
        return tf.reduce_mean(tf.cast(hits, tf.float32), axis=-1)

    # === Labels ===

    def label_shape(self, num_classes: int) -> tuple:
        return (num_classes,)

    def label_dtype(self) -> str:
        return "float32"

    def encode_labels(self, raw, key: str, class_names):
        """(multi-hot float32 [N, C], class names) from a 0/1 matrix, label sets (names sorted into
        class names, or class indices) or one label per example."""
        if raw_labels.is_matrix(raw):
            matrix = raw_labels.check_multi_hot(raw, key, class_names)
            names = list(class_names) if class_names is not None else [str(i) for i in range(matrix.shape[1])]
            return matrix, names
        sets = raw if raw_labels.is_label_sets(raw) else [[v] for v in np.asarray(raw).reshape(-1).tolist()]
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for s in sets for v in s):
            size = len(class_names) if class_names is not None else 1 + max((int(v) for s in sets for v in s),
                                                                             default=-1)
            names = list(class_names) if class_names is not None else [str(i) for i in range(size)]
            lookup = {i: i for i in range(size)}
        else:
            found = sorted({str(v) for s in sets for v in s})
            names = list(class_names) if class_names is not None else found
            lookup = {name: i for i, name in enumerate(names)}
            sets = [[str(v) for v in s] for s in sets]
        unknown = sorted({v for s in sets for v in s if v not in lookup}, key=str)
        if unknown:
            raise DataError(f"{key}: labels {', '.join(map(str, unknown[:5]))} are not among the classes "
                            f"{', '.join(names)}.")
        matrix = np.zeros((len(sets), len(names)), dtype=np.float32)
        for row, labels in enumerate(sets):
            for v in labels:
                matrix[row, lookup[v]] = 1.0
        return matrix, names

    def class_counts(self, labels, num_classes):
        labels = np.asarray(labels)
        if labels.ndim != 2:
            return np.zeros(num_classes, dtype=np.int64)
        return labels.sum(axis=0).astype(np.int64)

    def has_class(self, labels, c):
        return np.asarray(labels)[:, c] > 0

    def _num_classes(self, labels):
        return int(np.asarray(labels).shape[1])

    def strata(self, labels: np.ndarray) -> np.ndarray:
        """Each example's rarest label (-1 for none): the rare labels spread over the folds first.

        >>> MultiLabel().strata(np.array([[1, 1], [1, 0], [0, 0]])).tolist()
        [1, 0, -1]
        """
        positive = np.asarray(labels) > 0.5
        counts = positive.sum(axis=0)
        rarity = np.where(positive, counts[None, :], np.iinfo(np.int64).max)
        return np.where(positive.any(axis=1), rarity.argmin(axis=1), -1).astype(np.int64)

    def split(self, labels, fraction, seed):
        return iterative_stratification(np.asarray(labels) > 0, fraction, seed)

    def class_weight(self, setting, labels, class_names):
        """Per-label weights of the positive examples in the loss: "balanced" gives label c the weight
        n_negative / n_positive (positives and negatives of each label then weigh alike), "auto" does
        so when some label's negatives outnumber its positives by more than AUTO_IMBALANCE_RATIO
        (logged); a mapping sets {class: weight} (others 1).

        >>> MultiLabel().class_weight("balanced", np.array([[1, 0], [1, 1], [0, 0], [1, 0]]), ["a", "b"])
        {0: 0.3333333333333333, 1: 3.0}
        """
        if setting is None:
            return None
        labels = np.asarray(labels)
        positives = labels.sum(axis=0).astype(np.float64)
        negatives = len(labels) - positives
        if setting == "auto":
            ratio = float(np.max(negatives / np.maximum(positives, 1))) if len(positives) else 0.0
            on = ratio > AUTO_IMBALANCE_RATIO
            get_logger().info("class_weight=auto: the rarest label has %.1fx as many negative as positive examples "
                              "(threshold %.1fx): %s", ratio, AUTO_IMBALANCE_RATIO,
                              "per-label positive weights on" if on else "no weights")
            return self.class_weight("balanced", labels, class_names) if on else None
        if setting == "balanced":
            return {c: float(negatives[c] / positives[c]) if positives[c] else 1.0 for c in range(len(class_names))}
        return named_weights(setting, class_names, 1.0)

    # === Answers ===

    def choose_decision(self, probabilities, labels, setting, class_names=None):
        k = probabilities.shape[1] if probabilities.ndim == 2 else 0
        if setting is None:
            setting = "per_class"
        if isinstance(setting, (int, float)) and not isinstance(setting, bool):
            return {"thresholds": [float(setting)] * k, "chosen": f"fixed at {float(setting):g}"}
        if len(labels) == 0:
            return {"thresholds": [DEFAULT_THRESHOLD] * k, "chosen": "default (no validation examples)"}
        positive = np.asarray(labels) > 0
        if setting == "global":
            t = best_f1_threshold(probabilities.reshape(-1), positive.reshape(-1))
            return {"thresholds": [t] * k, "chosen": "one threshold maximising micro-F1 on the validation split"}
        thresholds = [best_f1_threshold(probabilities[:, c], positive[:, c]) for c in range(k)]
        chosen = "per class, maximising F1 on the validation split"
        unseen = [c for c in range(k) if not positive[:, c].any()]
        if unseen:  # no F1 to maximise: the default, and the decision says whose it is
            chosen += (f"; {DEFAULT_THRESHOLD:g} for the {len(unseen)} class(es) with no validation example "
                       f"({', '.join(str(class_names[c] if class_names else c) for c in unseen[:10])}"
                       f"{' ...' if len(unseen) > 10 else ''})")
        return {"thresholds": thresholds, "chosen": chosen, **({"defaulted": unseen} if unseen else {})}

    def answers(self, probabilities, class_names, decision, top_k):
        thresholds = _thresholds(decision, len(class_names))
        rows = []
        for p in np.asarray(probabilities):
            above = [i for i in np.argsort(-p, kind="stable") if p[i] >= thresholds[i]]
            rows.append({"labels": [class_names[i] for i in above], "scores": [float(p[i]) for i in above],
                         "probabilities": {name: float(v) for name, v in zip(class_names, p)}})
        return rows

    def serving_outputs(self, probabilities, class_names, decision, top_k):
        import tensorflow as tf

        thresholds = tf.constant(_thresholds(decision, int(class_names.shape[0])), tf.float32)
        above = probabilities >= thresholds
        names = tf.broadcast_to(class_names, tf.shape(probabilities))
        return {
            "probabilities": probabilities,
            "labels": tf.where(above, names, tf.zeros_like(names)),
            "label_count": tf.reduce_sum(tf.cast(above, tf.int32), axis=-1),
        }

    def output_description(self, class_names, decision, top_k):
        c = len(class_names)
        return {"probabilities": f"[N, {c}] one sigmoid per class",
                "labels": f"[N, {c}] tf.string: the class name where its probability is at or above its threshold, "
                          "else ''", "label_count": "[N] int32: how many labels are on",
                "thresholds": [round(t, 6) for t in _thresholds(decision, c)]}

    def agreement(self, expected, got, decision):
        """Each label's decision agrees; a probability within TIE of its threshold may fall either way."""
        from tlkeras.tasks.task import TIE

        expected, got = np.asarray(expected, np.float64), np.asarray(got, np.float64)
        thresholds = np.asarray(_thresholds(decision, expected.shape[1]))
        near = (np.abs(expected - thresholds) < TIE) | (np.abs(got - thresholds) < TIE)
        return float((((expected >= thresholds) == (got >= thresholds)) | near).mean())

    def ties(self, probabilities, decision):
        from tlkeras.tasks.task import TIE

        probabilities = np.asarray(probabilities, np.float64)
        thresholds = np.asarray(_thresholds(decision, probabilities.shape[1]))
        return int((np.abs(probabilities - thresholds) < TIE).any(axis=1).sum())

    # === Metrics ===

    def metrics(self, probabilities, labels, class_names, *, top_k=5, decision=None):
        from tlkeras.metrics import multilabel_metrics

        return multilabel_metrics(probabilities, labels, class_names, _thresholds(decision, len(class_names)))

    def format_metrics(self, metrics, noun="images"):
        from tlkeras.metrics import format_multilabel_metrics

        return format_multilabel_metrics(metrics, noun)

    def chance(self, metrics, labels):
        """Mean average precision no better than ranking at random (each label's prevalence).

        >>> MultiLabel().chance({"mean_average_precision": 0.5}, np.array([[1, 0], [0, 1]]))
        ('mean average precision', 0.5, 0.5, 'ranking the examples at random')
        """
        from tlkeras.tasks.task import CHANCE_MARGIN

        truth = np.asarray(labels) > 0
        if truth.ndim != 2 or not len(truth) or metrics.get("mean_average_precision") is None:
            return None
        present = truth.any(axis=0)
        guess = float(truth[:, present].mean(axis=0).mean())
        value = float(metrics["mean_average_precision"])
        if value <= guess + CHANCE_MARGIN:
            return "mean average precision", value, guess, "ranking the examples at random"
        return None


def _thresholds(decision: Optional[dict], k: int) -> list[float]:
    values = (decision or {}).get("thresholds")
    return [float(v) for v in values] if values and len(values) == k else [DEFAULT_THRESHOLD] * k


def best_f1_threshold(scores: np.ndarray, positive: np.ndarray) -> float:
    """The threshold maximising F1 of `scores >= t` against `positive`: halfway between the lowest
    score taken and the next one below (so a slightly lower score on new data still counts);
    DEFAULT_THRESHOLD when there are no positives.

    >>> best_f1_threshold(np.array([0.9, 0.7, 0.4, 0.1]), np.array([1, 1, 0, 0]))
    0.55
    """
    positive = np.asarray(positive, dtype=bool)
    if not positive.any():
        return DEFAULT_THRESHOLD
    order = np.argsort(-scores, kind="mergesort")
    s, hits = np.asarray(scores, dtype=np.float64)[order], positive[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last index of each run of equal scores
    tp = np.cumsum(hits)[last]
    taken = last + 1
    f1 = 2 * tp / (taken + positive.sum())
    best = int(np.argmax(f1))  # the first maximum: the highest threshold of the best F1
    cut = last[best]
    lower = s[cut + 1] if cut + 1 < len(s) else 0.0
    return float(round((s[cut] + lower) / 2, 6))


def iterative_stratification(positive: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows) keeping every label's share in both parts: Sechidis, Tsoumakas
    and Vlahavas 2011 ("On the stratification of multi-label data"). The rarest label's examples
    are placed first, each into the part that most lacks that label (ties: the part that lacks
    more examples, then a seeded coin); examples without labels fill the parts to their sizes.

    >>> y = np.array([[1, 0]] * 8 + [[0, 1]] * 4 + [[1, 1]] * 4)
    >>> train, val = iterative_stratification(y, 0.25, 0)
    >>> len(val), y[val].sum(axis=0).tolist(), y[train].sum(axis=0).tolist()
    (4, [3, 2], [9, 6])
    """
    positive = np.asarray(positive, dtype=bool)
    n, k = positive.shape
    rng = np.random.default_rng(seed)
    ratios = np.array([1.0 - fraction, fraction])
    want_rows = n * ratios
    room = int(round(n * fraction))  # validation never grows past the asked share
    want_labels = positive.sum(axis=0)[None, :] * ratios[:, None]  # [part, label]
    trained = np.zeros(k, dtype=bool)  # labels with a training example: every label gets one first
    part = np.full(n, -1)
    left = positive.copy()
    while True:
        counts = left[part < 0].sum(axis=0) if (part < 0).any() else np.zeros(k)
        remaining = np.flatnonzero(counts > 0)
        if not len(remaining):
            break
        label = remaining[np.argmin(counts[remaining])]
        rows = np.flatnonzero((part < 0) & left[:, label])
        rng.shuffle(rows)
        for row in rows:
            need = want_labels[:, label]
            best = np.flatnonzero(need == need.max())
            if len(best) > 1:
                best = best[want_rows[best] == want_rows[best].max()]
            j = int(best[rng.integers(len(best))]) if len(best) > 1 else int(best[0])
            if j == 1 and (room == 0 or not trained[positive[row]].all()):
                j = 0  # validation is full, or one of the row's labels has no training example yet
            part[row] = j
            room -= j
            trained |= positive[row] & (j == 0)
            want_labels[j] -= positive[row]
            want_rows[j] -= 1
    unlabelled = np.flatnonzero(part < 0)
    rng.shuffle(unlabelled)
    for row in unlabelled:
        j = int(np.argmax(want_rows)) if room > 0 else 0
        part[row] = j
        room -= j
        want_rows[j] -= 1
    unvalidated = int((positive.sum(axis=0) > 0).sum() - (positive[part == 1].sum(axis=0) > 0).sum())
    if unvalidated and fraction > 0:
        rare = int(((positive.sum(axis=0) > 0) & (positive.sum(axis=0) < 2)).sum())
        get_logger().warning(
            "multi-label split: %d of %d labels have no validation example (%d of them have a single example, which "
            "trains; validation holds %d of the %d rows asked, as a row trains while one of its labels has no "
            "training example): their thresholds cannot be chosen on validation and take the default; give each "
            "label a few more examples (5+), or pass val_data, or set threshold: global", unvalidated,
            int((positive.sum(axis=0) > 0).sum()), rare, int((part == 1).sum()), int(round(n * fraction)))
    return np.flatnonzero(part == 0).astype(np.int64), np.flatnonzero(part == 1).astype(np.int64)
