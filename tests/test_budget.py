"""Epochs "auto" (the default): each stage's epochs fit the data's size (tlkeras.training.budget)."""

import json
import os

import pytest

import tlkeras
from tlkeras.config import FinetuneConfig, stage_configs
from tlkeras.errors import ConfigError
from tlkeras.training import budget
from tlkeras.training.budget import auto_epochs, resolve_budget, steps_per_epoch


def test_small_data_gets_the_minimum_steps_and_large_data_the_minimum_epochs():
    s1, s2 = stage_configs(None, None)
    assert (s1.epochs, s2.epochs) == ("auto", "auto")
    for examples, batch in [(40, 32), (80, 32), (200, 32), (480, 32), (722, 32), (20_000, 32), (100, 8)]:
        steps = steps_per_epoch(examples, batch)
        got = resolve_budget(s1, s2, steps, examples=examples, batch_size=batch)
        for stage, epochs in (("stage1", got.stage1.epochs), ("stage2", got.stage2.epochs)):
            assert budget.MIN_EPOCHS <= epochs <= budget.MAX_EPOCHS[stage]
            # as few epochs as reach the stage's steps, unless the bounds say otherwise
            enough = epochs * steps >= budget.MIN_STEPS[stage]
            assert enough or epochs == budget.MAX_EPOCHS[stage]
            assert epochs == budget.MIN_EPOCHS or (epochs - 1) * steps < budget.MIN_STEPS[stage]
        assert got.steps_per_epoch == steps and got.reason.startswith(
            f"{examples} training examples in batches of {batch} are {steps} optimizer step(s) per epoch: stage1 ")
    assert resolve_budget(s1, s2, steps_per_epoch(20_000, 32)).stage2.epochs == budget.MIN_EPOCHS


def test_epochs_given_are_kept_and_unknown_lengths_get_the_minimum():
    s1, s2 = stage_configs({"epochs": 3}, {"epochs": 0})
    got = resolve_budget(s1, s2, 1)
    assert (got.stage1.epochs, got.stage2.epochs, got.reason) == (3, 0, None)
    s1, s2 = stage_configs({"epochs": 7}, None)
    got = resolve_budget(s1, s2, 2)
    assert (got.stage1.epochs, got.stage2.epochs) == (7, auto_epochs("stage2", 2))
    assert "stage1" not in got.reason.split(":", 1)[1]  # only what was chosen is told
    got = resolve_budget(*stage_configs(None, None), None)
    assert (got.stage1.epochs, got.stage2.epochs) == (budget.MIN_EPOCHS, budget.MIN_EPOCHS)
    assert got.reason.startswith("the training data's length is unknown")


@pytest.mark.parametrize("value, message", [
    (-1, r"stage2.epochs: -1 is not valid: use an integer >= 0 \(0 skips the stage\) or auto"),
    ("many", r"stage2.epochs: 'many' is not valid"),
    (2.5, r"stage2.epochs: 2.5 is not valid"),
])
def test_bad_epochs_are_one_line(value, message):
    with pytest.raises(ConfigError, match=message):
        FinetuneConfig.from_dict({"stage2": {"epochs": value}})


def test_a_run_with_auto_epochs_trains_them_records_them_and_keeps_auto_in_its_config(tmp_path, image_folder, tiny,
                                                                                       caplog):
    """24 images of 3 classes, 6 kept for validation: 18 in batches of 8 are 3 steps per epoch."""
    caplog.set_level("INFO", logger="tlkeras")
    options = {**tiny, "batch_size": 8, "export": False}
    result = tlkeras.build_and_finetune(image_folder, output_dir=str(tmp_path / "run"), verbose=0, **options)
    s1, s2 = auto_epochs("stage1", 3), auto_epochs("stage2", 3)
    assert result.history["stage"] == [1] * s1 + [2] * s2
    with open(os.path.join(result.run_dir, "run.json"), encoding="utf-8") as f:
        assert json.load(f)["epochs"] == {"steps_per_epoch": 3, "stage1.epochs": s1, "stage2.epochs": s2,
                                          "auto": True}
    saved = tlkeras.load_config(os.path.join(result.run_dir, "config.yaml"))
    assert (saved.stage1.epochs, saved.stage2.epochs) == ("auto", "auto")
    told = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epochs: ")]
    assert told == [f"epochs: 18 training examples in batches of 8 are 3 optimizer step(s) per epoch: stage1 {s1} "
                    f"epochs ({3 * s1} steps), stage2 {s2} epochs ({3 * s2} steps) (epochs: auto - at least "
                    f"{budget.MIN_EPOCHS} epochs and {budget.MIN_STEPS['stage1']} / {budget.MIN_STEPS['stage2']} "
                    f"steps, at most {budget.MAX_EPOCHS['stage1']} / {budget.MAX_EPOCHS['stage2']} epochs; set "
                    "stageN.epochs to choose)"]
