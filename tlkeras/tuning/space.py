"""The search space of `tlkeras tune`: config keys and the values each may take.

A space maps dotted config keys to a range or a list of choices, as a YAML `search:` mapping or a dict:

    stage2.learning_rate: {low: 1.0e-5, high: 1.0e-2, log: true}   # a float range (log-uniform)
    stage2.epochs: {low: 2, high: 12}                               # two ints: an int range
    stage2.unfreeze: [0.25, 0.5, all]                               # choices

Every key is a config key, checked with the config's own one-line errors ("did you mean"), and every bound or choice
must be a value the key takes. Keys that would change the data or the model's layers (the backbone, image_size,
batch_size, head.hidden_units, stage2.method, ...) cannot vary: the data and the model are built once per search and
shared by its trials.

>>> space = SearchSpace.parse({"stage2.learning_rate": {"low": 1e-5, "high": 1e-2, "log": True},
...                            "stage2.unfreeze": [0.25, "all"]})
>>> [d.describe() for d in space.dimensions]
['stage2.learning_rate: 1e-05 to 0.01 (log)', 'stage2.unfreeze: one of 0.25, all']
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from tlkeras.errors import ConfigError

# What a trial may change: the stages, and what acts on the head's inputs and the loss. The model is built once
# (head.hidden_units, pooling and l2 are its layers), the data too (image_size, batch_size, the columns).
SEARCHABLE_PREFIXES = ("stage1.", "stage2.")
SEARCHABLE_KEYS = ("head.dropout", "label_smoothing", "augment.feature_mixup", "augment.mixup", "augment.cutmix",
                   "class_weight", "threshold")
# Stage-2 keys that change the model's layers (LoRA's adapters) or how it is built: one search per choice.
FIXED_STAGE_KEYS = ("stage2.method", "stage2.lora_rank", "stage2.lora_alpha", "stage2.lora_targets",
                    "stage2.lora_dropout")


@dataclass
class Dimension:
    """One searched key: a float or int range (`low`, `high`, `log`) or `choices`."""

    key: str
    low: Any = None
    high: Any = None
    log: bool = False
    choices: Optional[list] = None

    @property
    def kind(self) -> str:
        if self.choices is not None:
            return "choice"
        return "int" if isinstance(self.low, int) and isinstance(self.high, int) else "float"

    def suggest(self, trial):
        """The value an Optuna trial draws for this key."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)

    def distribution(self):
        """The Optuna distribution (for a trial enqueued or read back)."""
        import optuna

        if self.kind == "choice":
            return optuna.distributions.CategoricalDistribution(self.choices)
        if self.kind == "int":
            return optuna.distributions.IntDistribution(self.low, self.high, log=self.log)
        return optuna.distributions.FloatDistribution(float(self.low), float(self.high), log=self.log)

    def samples(self) -> list:
        """The values checked against the config before any work: the bounds, or every choice."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.key}: one of {', '.join(map(str, self.choices))}"
        return f"{self.key}: {self.low:g} to {self.high:g}{' (log)' if self.log else ''}"

    def to_dict(self):
        if self.kind == "choice":
            return list(self.choices)
        return {"low": self.low, "high": self.high, **({"log": True} if self.log else {})}


@dataclass
class SearchSpace:
    dimensions: list

    @classmethod
    def parse(cls, spec: Any) -> "SearchSpace":
        """A space from a mapping {key: range or choices}; one line for the first bad entry."""
        if not isinstance(spec, dict) or not spec:
            raise ConfigError(f"search: {spec!r} is not valid: use a mapping of config keys to a range or a list of "
                              "choices, e.g. {stage2.learning_rate: {low: 1.0e-5, high: 1.0e-2, log: true}, "
                              "stage2.unfreeze: [0.25, 0.5, all]}.")
        return cls([_dimension(str(key), value) for key, value in spec.items()])

    def keys(self) -> list[str]:
        return [d.key for d in self.dimensions]

    def check(self, cfg) -> None:
        """Each key can vary in a search and each bound or choice is a value the config takes (its own error,
        naming the key, on the first that is not)."""
        for dimension in self.dimensions:
            _check_searchable(dimension.key)
            for value in dimension.samples():
                try:
                    cfg.merged(nested({dimension.key: value}))
                except ConfigError as e:
                    raise ConfigError(f"search: {dimension.key}: {value!r} is not a value it takes ({e})") from None

    def check_against(self, model, cfg) -> None:
        """Each stage setting the space can take fits `model` (an `unfreeze` layer it has, `blocks:N` with its block
        map, ...): what a run checks before its first epoch (`tlkeras.training.check_stages`)."""
        from tlkeras.errors import TlkerasError
        from tlkeras.training import check_stages

        for dimension in self.dimensions:
            if not dimension.key.startswith(SEARCHABLE_PREFIXES):
                continue
            for value in dimension.samples():
                trial = cfg.merged(nested({dimension.key: value}))
                try:
                    check_stages(model, trial.stage1, trial.stage2)
                except TlkerasError as e:
                    raise ConfigError(f"search: {dimension.key}: {value!r} is not a value it takes ({e})") from None

    def to_dict(self) -> dict:
        return {d.key: d.to_dict() for d in self.dimensions}

    def describe(self) -> str:
        return "; ".join(d.describe() for d in self.dimensions)


def nested(flat: dict) -> dict:
    """{"stage2.epochs": 3} -> {"stage2": {"epochs": 3}}.

    >>> nested({"stage2.epochs": 3, "stage2.unfreeze": "all", "label_smoothing": 0.1})
    {'stage2': {'epochs': 3, 'unfreeze': 'all'}, 'label_smoothing': 0.1}
    """
    out: dict = {}
    for key, value in flat.items():
        node = out
        *sections, name = key.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    return out


def default_space(task, inputs: str) -> "SearchSpace":
    """What `tune` searches when not told: both stages' rates, how much of the backbone stage 2 trains and for how
    long, its layer-wise decay, the head's dropout; label smoothing for classes, feature mixup for images of one class
    each (what the few-labels benchmark found to pay).

    >>> from tlkeras.tasks import get_task
    >>> default_space(get_task("regression"), "text").keys()
    ['stage1.learning_rate', 'stage2.learning_rate', 'stage2.unfreeze', 'stage2.epochs', 'stage2.layer_decay', \
'head.dropout']
    """
    spec: dict = {
        "stage1.learning_rate": {"low": 1e-3, "high": 3e-2, "log": True},
        "stage2.learning_rate": {"low": 1e-5, "high": 3e-3, "log": True},
        "stage2.unfreeze": [0.25, 0.5, "all"],
        "stage2.epochs": {"low": 2, "high": 15},
        "stage2.layer_decay": {"low": 0.5, "high": 0.95},
        "head.dropout": {"low": 0.0, "high": 0.5},
    }
    if task.name in ("single_label", "multi_label"):
        spec["label_smoothing"] = {"low": 0.0, "high": 0.2}
    if task.name == "single_label" and inputs == "image":
        spec["augment.feature_mixup"] = {"low": 0.0, "high": 0.6}
    return SearchSpace.parse(spec)


def _dimension(key: str, value: Any) -> Dimension:
    if isinstance(value, (list, tuple)):
        choices = list(value)
        if not choices:
            raise ConfigError(f"search: {key}: an empty list of choices; give at least one value.")
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in choices):
            raise ConfigError(f"search: {key}: choices must be numbers, strings, booleans or null; got {choices!r}.")
        return Dimension(key, choices=choices)
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"low", "high", "log"})
        if unknown or "low" not in value or "high" not in value:
            raise ConfigError(f"search: {key}: {value!r} is not a range: use {{low: ..., high: ...}} (and log: true "
                              "for a log scale), or a list of choices.")
        low, high, log = value["low"], value["high"], value.get("log", False)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high))
        if not numbers or not low < high:
            raise ConfigError(f"search: {key}: low {low!r} and high {high!r} are not a range: use two numbers with "
                              "low < high.")
        if not isinstance(log, bool):
            raise ConfigError(f"search: {key}: log {log!r} is not true or false.")
        if log and low <= 0:
            raise ConfigError(f"search: {key}: a log range needs low > 0; got {low!r}.")
        return Dimension(key, low=low, high=high, log=log)
    raise ConfigError(f"search: {key}: {value!r} is neither a range ({{low: ..., high: ...}}) nor a list of choices.")


def _check_searchable(key: str) -> None:
    from tlkeras.errors import did_you_mean

    from tlkeras.config import FinetuneConfig

    flat = _flat_keys(FinetuneConfig().to_dict())
    if key not in flat:
        raise ConfigError(f"search: {key!r} is not a config key.{did_you_mean(key, flat)}")
    if key in FIXED_STAGE_KEYS:
        raise ConfigError(f"search: {key} cannot vary in one search (it changes the model's layers); run one search "
                          "per value.")
    if key.startswith(SEARCHABLE_PREFIXES) or key in SEARCHABLE_KEYS:
        return
    raise ConfigError(f"search: {key} cannot vary in a search: the data and the model are built once and shared by "
                      f"every trial; run one search per {key} (keys that can vary: stage1.*, stage2.*, "
                      f"{', '.join(SEARCHABLE_KEYS)}).")


def _flat_keys(values: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in values.items():
        if isinstance(value, dict) and key != "backbone_options":
            out += _flat_keys(value, f"{prefix}{key}.")
        else:
            out.append(prefix + key)
    return out
