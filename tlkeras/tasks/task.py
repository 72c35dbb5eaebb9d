"""The Task role: what kind of problem a model solves, asked by every part of the pipeline.

A Task says how many output units a head has and their activation, the loss, what training
logs as its accuracy, how labels from any data source are encoded, split and weighted, how
probabilities become answers (top-k classes, or the labels above thresholds), what the export
returns and which metrics a report shows. Heads, losses, the step loop, metrics, export and
predict ask the model's Task; none of them branches on its kind.

A new kind of problem is one module with a `Task` subclass and one line in
`tlkeras.tasks.TASKS`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


class Task:
    """The interface; see `SingleLabel` and `MultiLabel` for the two kinds tlkeras has."""

    #: registry name, also the value of the `task` config key and of the model's metadata
    name: str = ""
    #: what the model card and logs call it
    description: str = ""
    #: the history key of the accuracy training logs (plotted in the report next to the loss)
    accuracy_key: str = "accuracy"
    #: what picks a run's best epoch (restore_best): "accuracy" (the logged `accuracy_key`, highest, the loss
    #: breaking ties) or "loss" (lowest)
    best_epoch_by: str = "loss"
    #: whether self-training can pseudo-label its examples (`tlkeras.self_training`: one class per example)
    self_trains: bool = False
    #: the metrics.json key logged and printed as the run's headline number
    headline_key: str = "accuracy"
    headline_name: str = "accuracy"
    #: what qualifies "image classification" and the like in logs and model cards ("" for the plain kind)
    qualifier: str = ""
    #: the fewest classes a model of this kind has
    min_classes: int = 2
    #: what `agreement` counts, as parity.json says it
    agreement_measure: str = ""
    #: what its class names name, one and several ("2 classes", "1 target")
    names_noun: tuple = ("class", "classes")
    #: what a model no better than guessing has not learned (the chance warning)
    learns: str = "to tell the classes apart"
    #: the report's pictures of the answers (`tlkeras.report.PICTURES`): "classes" (the confusion matrix and the
    #: most confidently wrong examples), "labels" (precision-recall curves at the thresholds), "values" (predicted
    #: against true values, and residuals)
    pictures: str = "classes"
    #: the export's output holding the model's own outputs (what its parity checks compare)
    output_key: str = "probabilities"

    # === Model ===

    def output_units(self, num_classes: int) -> int:
        raise NotImplementedError

    def activation(self, num_classes: int) -> str:
        raise NotImplementedError

    def options(self, labels: np.ndarray, settings: dict) -> dict:
        """What the Task fixes from the training split's encoded `labels` before the model is built (kept in the
        model's metadata as `task_options`): a regression model's target mean and standard deviation. `settings`:
        the config's task keys (`loss`, `target_range`)."""
        return {}

    def output_layer(self, num_classes: int, options: dict, kernel_regularizer=None, name: Optional[str] = None):
        """The head's output layer, computing in float32 (exact outputs under mixed precision), named `name` (the
        head's, `tlkeras.heads`); `options` are the model's `task_options`."""
        import keras

        return keras.layers.Dense(self.output_units(num_classes), activation=self.activation(num_classes),
                                  kernel_regularizer=kernel_regularizer, dtype="float32", name=name)

    def to_probabilities(self, outputs):
        """Model outputs -> per-class probabilities [N, C] (any backend tensor)."""
        return outputs

    # === Training ===

    def loss(self, units: int, label_smoothing: float = 0.0, class_weight: Optional[dict] = None,
             soft: bool = False, options: Optional[dict] = None):
        """The Keras loss of a model with `units` outputs against encoded labels; `soft`: against encoded labels
        and against `soft_targets` (mixed examples' labels) alike; `options`: the model's `task_options`."""
        raise NotImplementedError

    def soft_targets(self, labels, units: int):
        """Encoded labels (a TensorFlow batch) as float targets that can be mixed: a convex combination of two
        examples' targets is what the loss takes for the mixed example."""
        raise NotImplementedError

    def fit_class_weight(self, class_weight: Optional[dict]) -> Optional[dict]:
        """What `fit`'s own `class_weight` gets (None where the loss carries the weights)."""
        return class_weight

    def training_metrics(self, soft: bool = False) -> list:
        """Keras metrics compiled into every stage; logged under `accuracy_key`. `soft`: they also take
        `soft_targets` (counting the dominant class or the labels at or above one half)."""
        raise NotImplementedError

    def correct(self, labels, probabilities):
        """Per-example share of right answers [N] (TensorFlow), as the training metric counts them; labels
        encoded or soft targets."""
        raise NotImplementedError

    def dominant_class(self, labels):
        """Class indices [N] of encoded labels or soft targets, for class weights (as Keras's fit: the largest share);
        only Tasks whose `fit_class_weight` gives fit class weights need it."""
        raise NotImplementedError

    # === Labels ===

    def label_shape(self, num_classes: int) -> tuple:
        """The shape of one encoded label ((), or (C,) for multi-hot)."""
        return ()

    def label_dtype(self) -> str:
        return "int64"

    def names_of_columns(self, columns: list[str]) -> Optional[list[str]]:
        """The class names a table's label columns give (None: the labels' values name the classes)."""
        return None

    def encode_labels(self, raw, key: str, class_names: Optional[Sequence[str]]):
        """(encoded labels, class names) from a data source's raw labels (see `tlkeras.tasks.labels`)."""
        raise NotImplementedError

    def class_counts(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """How many examples carry each class."""
        raise NotImplementedError

    def split(self, labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(train rows, validation rows): a seeded split keeping each class's share in both parts."""
        raise NotImplementedError

    def strata(self, labels: np.ndarray) -> np.ndarray:
        """A group per example that a stratified k-fold keeps in proportion in every fold (its class)."""
        raise NotImplementedError

    def spread_rows(self, labels: np.ndarray, count: int) -> list[int]:
        """Up to `count` rows taking each class in turn (samples to check an export with)."""
        members = [list(np.flatnonzero(self.has_class(labels, c))) for c in range(self._num_classes(labels))]
        rows: list[int] = []
        seen: set[int] = set()
        while len(rows) < min(count, len(labels)) and any(members):
            for group in members:
                while group and group[0] in seen:
                    group.pop(0)
                if group and len(rows) < count:
                    row = int(group.pop(0))
                    rows.append(row)
                    seen.add(row)
        rest = [i for i in range(len(labels)) if i not in seen]  # examples with no class at all
        return rows + rest[: max(0, min(count, len(labels)) - len(rows))]

    def has_class(self, labels: np.ndarray, c: int) -> np.ndarray:
        """Boolean [N]: which examples carry class `c`."""
        raise NotImplementedError

    def _num_classes(self, labels: np.ndarray) -> int:
        raise NotImplementedError

    def class_weight(self, setting, labels: np.ndarray, class_names: list[str]) -> Optional[dict]:
        """{class index: weight} for the `class_weight` setting (None, "balanced", "auto", a mapping)."""
        raise NotImplementedError

    # === Answers ===

    def choose_decision(self, probabilities: np.ndarray, labels: np.ndarray, setting,
                        class_names: Optional[list] = None) -> Optional[dict]:
        """What turns probabilities into answers, chosen on validation data (None: nothing to choose);
        `class_names` name the classes in what it says."""
        return None

    def answers(self, probabilities: np.ndarray, class_names: list[str], decision: Optional[dict], top_k: int
                ) -> list[dict]:
        """One dict per row for `tlkeras predict` (table/JSON/CSV)."""
        raise NotImplementedError

    def serving_outputs(self, probabilities, class_names, decision: Optional[dict], top_k: int) -> dict:
        """The export's output tensors (TensorFlow) from probabilities [N, C] and a tf.string vector of names."""
        raise NotImplementedError

    def output_description(self, class_names: list[str], decision: Optional[dict], top_k: int) -> dict:
        """The model card's `outputs`: name -> what it holds."""
        raise NotImplementedError

    def agreement(self, expected: np.ndarray, got: np.ndarray, decision: Optional[dict]) -> float:
        """Share of answers two models (e.g. Keras and TFLite) agree on, for parity checks. An answer
        that is a tie (probabilities within `TIE` of each other, or of a threshold) is not a flip:
        a model unsure between two classes may name either."""
        raise NotImplementedError

    def ties(self, probabilities: np.ndarray, decision: Optional[dict]) -> int:
        """How many answers of one model are ties (`agreement`): all of them when it is at chance."""
        raise NotImplementedError

    # === Metrics ===

    def metrics(self, probabilities: np.ndarray, labels: np.ndarray, class_names: list[str], *, top_k: int = 5,
                decision: Optional[dict] = None) -> dict:
        """Everything a report shows (NumPy), numbers rounded to 4 digits."""
        raise NotImplementedError

    def format_metrics(self, metrics: dict, noun: str = "images") -> str:
        """The console report of `metrics`."""
        raise NotImplementedError

    def card_task(self, inputs_task: str) -> str:
        """What the model card calls the model, from its Inputs kind's name for it ("image classification").

        >>> Task().card_task("image classification")
        'image classification'
        """
        return f"{self.qualifier} {inputs_task}" if self.qualifier else inputs_task

    def chance(self, metrics: dict, labels: np.ndarray) -> Optional[tuple[str, float, float, str]]:
        """(metric, its value, what guessing gets, how one guesses) when the model does no better
        than guessing (within CHANCE_MARGIN), else None."""
        return None


# A model within this of what guessing scores has learned nothing worth serving.
CHANCE_MARGIN = 0.02

# Probabilities this close are a tie in parity checks: int8 outputs move in steps of 1/256, and a
# float32 conversion's rounding (~1e-6) must not turn a model's coin toss into a "flip".
TIE = 1e-3
