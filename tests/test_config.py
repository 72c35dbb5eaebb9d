import pytest

from tlkeras.config import FinetuneConfig, load_config
from tlkeras.errors import ConfigError


def test_defaults_match_the_documented_api():
    cfg = FinetuneConfig()
    assert cfg.backbone == "efficientnetb0" and cfg.weights == "imagenet"
    assert (cfg.val_split, cfg.batch_size, cfg.seed, cfg.export) == (0.2, 32, 0, True)
    assert (cfg.head.hidden_units, cfg.head.dropout, cfg.head.l2, cfg.head.pooling) == ([], 0.2, 0.0, "avg")
    # issues 9 and 38 chose these from measurements (benchmarks/RESULTS.md); epochs "auto" fit the data's size
    assert (cfg.stage1.epochs, cfg.stage1.learning_rate, cfg.stage1.schedule) == ("auto", 1e-2, "constant")
    assert (cfg.stage2.epochs, cfg.stage2.learning_rate, cfg.stage2.unfreeze) == ("auto", None, "all")
    assert (cfg.stage2.layer_decay, cfg.stage2.schedule, cfg.stage2.warmup_epochs) == (0.7, "cosine", 1.0)
    assert cfg.stage2_learning_rate == pytest.approx(1e-2 / 3)  # stage-1 rate / 3
    assert not cfg.augment.enabled


def test_nested_values_merge_over_defaults_without_touching_the_original():
    base = FinetuneConfig()
    cfg = base.merged({"stage2": {"epochs": 3}, "head": {"hidden_units": [64]}})
    assert cfg.stage2.epochs == 3 and cfg.stage2.unfreeze == "all"
    assert cfg.head.hidden_units == [64]
    assert base.stage2.epochs == "auto" and base.head.hidden_units == []


def test_unknown_top_level_key_names_the_closest_keys():
    with pytest.raises(ConfigError, match=r"Unknown config key 'batchsize'\. Did you mean 'batch_size'"):
        FinetuneConfig.from_dict({"batchsize": 8})


def test_unknown_nested_key_names_the_closest_keys():
    with pytest.raises(ConfigError, match=r"Unknown config key 'stage2.unfreze'\. Did you mean 'stage2.unfreeze'"):
        FinetuneConfig.from_dict({"stage2": {"unfreze": 3}})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"stage2": {"unfreeze": 1.5}}, r"stage2.unfreeze: 1.5 is not valid: a fraction must be in \(0, 1\]"),
        ({"stage2": {"unfreeze": "blocks:x"}}, r"'blocks:N' needs a positive integer N"),
        ({"stage1": {"unfreeze": 3}}, r"stage1.unfreeze: stage 1 always trains the head only"),
        ({"stage1": {"epochs": -1}}, r"stage1.epochs: -1 is not valid: use an integer >= 0"),
        ({"stage1": {"optimizer": "adan"}}, r"stage1.optimizer: 'adan' is not valid: use one of adam, adamw, sgd\. Did you mean 'adam'"),
        ({"val_split": 1.0}, r"val_split: 1.0 is not valid: use a number in \[0.0, 1.0\)"),
        ({"batch_size": 0}, r"batch_size: 0 is not valid"),
        ({"head": {"pooling": "mean"}}, r"head.pooling: 'mean' is not valid: use one of avg, max"),
        ({"head": {"hidden_units": [0]}}, r"head.hidden_units"),
        ({"image_size": [32, 32, 3]}, r"image_size: \[32, 32, 3\] is not valid"),
        ({"augment": {"flip": "sideways"}}, r"augment.flip: 'sideways' is not valid"),
        ({"stage1": {"warmup_epochs": 9, "epochs": 2}}, r"longer than the stage"),
        ({"class_weight": "auto-ish"}, r"class_weight: 'auto-ish' is not valid"),
        ({"stage1": {"learning_rate": "fast"}}, r"stage1.learning_rate: 'fast' is not a number"),
        ({"stage2": {"recompute": "often"}}, r"stage2.recompute: 'often' is not valid: use true or false"),
        ({"stage1": {"recompute": True}}, r"stage1.recompute: stage 1 always trains the head only; set stage2.recompute"),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_valid(values, message):
    with pytest.raises(ConfigError, match=message):
        FinetuneConfig.from_dict(values)


def test_set_overrides_parse_types_like_yaml():
    cfg = FinetuneConfig().with_overrides(
        [
            "stage2.learning_rate=1e-4",  # YAML 1.1 reads this as a string; the float field converts it
            "stage2.unfreeze=blocks:2",
            "stage1.epochs=0",
            "head.hidden_units=[128, 64]",
            "weights=null",
            "image_size=96",
            "augment.flip=horizontal",
            "backbone_options.alpha=0.5",
        ]
    )
    assert cfg.stage2.learning_rate == pytest.approx(1e-4)
    assert cfg.stage2.unfreeze == "blocks:2"
    assert cfg.stage1.epochs == 0
    assert cfg.head.hidden_units == [128, 64]
    assert cfg.weights is None
    assert cfg.image_size == 96
    assert cfg.augment.flip == "horizontal" and cfg.augment.enabled
    assert cfg.backbone_options == {"alpha": 0.5}


def test_set_override_without_equals_sign_is_explained():
    with pytest.raises(ConfigError, match=r"not of the form key=value \(e.g. --set stage2.epochs=3\)"):
        FinetuneConfig().with_overrides(["stage2.epochs"])


def test_set_override_with_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match=r"Unknown config key 'stage2.learning_rte'\. Did you mean 'stage2.learning_rate'"):
        FinetuneConfig().with_overrides(["stage2.learning_rte=0.1"])


def test_yaml_round_trip(tmp_path):
    cfg = FinetuneConfig.from_dict(
        {"data": "photos", "backbone": "resnet50", "stage2": {"unfreeze": "conv5_block1_1_conv"}, "augment": {"zoom": 0.1}}
    )
    path = tmp_path / "config.yaml"
    cfg.to_yaml(path)
    again = load_config(path)
    assert again.to_dict() == cfg.to_dict()


def test_in_memory_data_is_written_as_null_with_a_comment(tmp_path):
    import numpy as np

    cfg = FinetuneConfig.from_dict({"data": (np.zeros((4, 8, 8)), np.zeros(4))})
    text = cfg.to_yaml()
    assert text.startswith("# data: in-memory arrays (4, 8, 8)")
    assert "\ndata: null\n" in text


def test_yaml_errors_are_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage1: {epochs: 2\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML at line"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"must hold a mapping"):
        load_config(listy)
    with pytest.raises(ConfigError, match=r"does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("backbone: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(evil)


# === A backbone's own defaults apply where the user set nothing ===


def test_the_config_knows_which_keys_it_was_given():
    from tlkeras.config import StageConfig

    cfg = FinetuneConfig.from_dict({"batch_size": 8, "stage1": {"epochs": 3}, "backbone_options": {"alpha": 0.5}})
    cfg = cfg.with_overrides(["stage2.learning_rate=0.001"])
    assert cfg.given_keys() == {"batch_size", "stage1.epochs", "backbone_options.alpha", "stage2.learning_rate"}
    # a config built directly: what differs from the defaults counts as given
    direct = FinetuneConfig(stage1=StageConfig(epochs=3, learning_rate=1e-2))
    assert direct.given_keys() == {"stage1.epochs"}


def test_backbone_defaults_fill_only_what_was_not_given(tmp_path):
    defaults = {"stage1.epochs": 20, "stage1.learning_rate": 0.01, "backbone_options.pooling": "mean"}
    cfg = FinetuneConfig.from_dict({"stage1": {"learning_rate": 0.05}}).with_defaults(defaults)
    assert (cfg.stage1.epochs, cfg.stage1.learning_rate, cfg.backbone_options) == (20, 0.05, {"pooling": "mean"})
    assert cfg.given_keys() == {"stage1.learning_rate"}  # defaults stay defaults
    # a backbone option default joins the options given; one given is kept
    options = FinetuneConfig.from_dict({"backbone_options": {"sequence_length": 16}}).with_defaults(defaults)
    assert options.backbone_options == {"sequence_length": 16, "pooling": "mean"}
    kept = FinetuneConfig.from_dict({"backbone_options": {"pooling": "first"}}).with_defaults(defaults)
    assert kept.backbone_options == {"pooling": "first"}
    # a saved config (config.yaml, what resume reads) holds every key: nothing is replaced on the way back
    cfg.to_yaml(tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again.with_defaults({"stage1.epochs": 99}).stage1.epochs == 20
