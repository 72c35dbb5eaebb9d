"""Issue 8 (part): whatever a user types into a config or --set, the parser answers with a valid
config or our own one-line ConfigError - never a TypeError, KeyError or a traceback."""

import string

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tlkeras.config import FinetuneConfig  # noqa: E402
from tlkeras.errors import ConfigError  # noqa: E402

KEYS = [
    "backbone", "weights", "val_split", "image_size", "batch_size", "class_weight", "label_smoothing",
    "cache_images", "cache_features", "cache_views", "memory_budget_mb", "jit_compile", "mixed_precision",
    "seed", "export", "top_k", "report", "tensorboard", "deterministic", "class_names", "backbone_options",
    "head.hidden_units", "head.dropout", "head.l2", "head.pooling",
    "stage1.epochs", "stage1.learning_rate", "stage1.optimizer", "stage1.schedule", "stage1.warmup_epochs",
    "stage1.early_stopping", "stage1.unfreeze", "stage1.layer_decay",
    "stage2.epochs", "stage2.learning_rate", "stage2.unfreeze", "stage2.layer_decay", "stage2.gradual_unfreeze",
    "stage2.train_bn", "stage2.bn_momentum", "stage2.weight_decay", "stage2.momentum", "stage2.recompute",
    "augment.flip", "augment.rotation", "augment.zoom", "augment", "augment.preset", "augment.rand_augment",
    "augment.rand_augment_ops", "augment.erasing", "augment.augmix",
    "self_training.rounds", "self_training.threshold", "self_training.cap",
]
# scalars as YAML would give them, plus nested junk
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(string.printable, max_size=12),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                      max_leaves=6)
KEY_TEXT = st.one_of(st.sampled_from(KEYS), st.text(string.ascii_letters + "._", min_size=1, max_size=20))


def _nested(key, value):
    section, _, sub = key.partition(".")
    return {section: {sub: value}} if sub else {key: value}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(KEY_TEXT, VALUES), max_size=4))
def test_any_mapping_gives_a_config_or_our_error(items):
    values = {}
    for key, value in items:
        values.update(_nested(key, value))
    try:
        cfg = FinetuneConfig.from_dict(values)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e).strip()
    else:
        cfg.validate()  # what was accepted is valid


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(KEY_TEXT, st.text(string.printable.replace("\n", ""), max_size=15)), max_size=4))
def test_any_set_override_gives_a_config_or_our_error(pairs):
    try:
        cfg = FinetuneConfig().with_overrides([f"{k}={v}" for k, v in pairs])
    except ConfigError as e:
        assert str(e) and "\n" not in str(e).strip()
    else:
        cfg.validate()


@settings(max_examples=100, deadline=None)
@given(st.text(string.printable.replace("\n", ""), max_size=20))
def test_any_set_string_without_equals_is_explained(text):
    if "=" in text:
        return
    with pytest.raises(ConfigError, match="is not of the form key=value"):
        FinetuneConfig().with_overrides([text])


@pytest.mark.parametrize("values, message", [
    ({"stage2": {"learning_rate": float("inf")}}, r"stage2.learning_rate: inf is not valid: use a finite number > 0.0"),
    ({"class_weight": {"cat": "heavy"}}, r"class_weight: the weight of 'cat' is 'heavy'; use a positive number"),
    ({"class_weight": {"cat": -1}}, r"the weight of 'cat' is -1"),
])
def test_values_the_properties_found_accepted_are_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        FinetuneConfig.from_dict(values)
