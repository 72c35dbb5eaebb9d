import os

import numpy as np
import pytest
from click.testing import CliRunner

import tlkeras
from conftest import TINY
from tlkeras import cli
from tlkeras.errors import ConfigError
from tlkeras.lr_finder import suggest


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("stage", [1, 2])
def test_range_test_suggests_a_rate_inside_the_range_and_plots_it(tmp_path, image_folder, backbone_weights, stage):
    result = tlkeras.find_learning_rate(
        image_folder, **TINY, weights=backbone_weights, batch_size=8, stage=stage, min_lr=1e-5, max_lr=10.0,
        steps=40, stage1={"epochs": 1}, stage2={"unfreeze": "blocks:1", "layer_decay": 0.7},
        output=str(tmp_path / "lr.png"),
    )
    assert result.stage == stage
    assert 1e-5 <= result.suggestion <= 10.0
    assert result.learning_rates[0] == pytest.approx(1e-5)
    assert all(b > a for a, b in zip(result.learning_rates, result.learning_rates[1:]))  # geometric ramp
    assert len(result.learning_rates) == len(result.losses) >= 12
    assert result.plot == str(tmp_path / "lr.png") and _is_png(result.plot) and os.path.getsize(result.plot) > 5000


def test_suggestion_lies_in_the_falling_stretch_not_on_noise():
    rates = list(np.geomspace(1e-6, 1.0, 61))
    # flat up to 1e-4, falling to a bottom at 1e-2, then exploding
    losses = [2.0 if r < 1e-4 else 2.0 - 0.75 * np.log10(r / 1e-4) if r <= 1e-2 else 0.5 + (np.log10(r) + 2) * 3
              for r in rates]
    wiggles = [v + 0.03 * np.sin(i * 2.1) for i, v in enumerate(losses)]  # noise bigger than a step's fall
    for curve in (losses, wiggles):
        assert 1e-4 <= suggest(rates, curve) <= 1e-2


def test_bad_ranges_are_explained():
    with pytest.raises(ConfigError, match=r"need 0 < min_lr < max_lr"):
        tlkeras.find_learning_rate("x", min_lr=1.0, max_lr=0.1)
    with pytest.raises(ConfigError, match=r"stage 1 or 2"):
        tlkeras.find_learning_rate("x", stage=3)


def test_cli_find_lr_prints_the_suggestion(tmp_path, image_folder, backbone_weights):
    result = CliRunner().invoke(cli.main, [
        "find-lr", "--data", image_folder, "--backbone", "mobilenetv2", "--steps", "30",
        "--set", "image_size=32", "--set", f"weights={backbone_weights}", "--set", "backbone_options.alpha=0.35",
        "--set", "batch_size=8", "--plot", str(tmp_path / "p.png"),
    ])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("suggested stage1.learning_rate: ")
    assert lines[-1].startswith("use it: --set stage1.learning_rate=")
    assert _is_png(tmp_path / "p.png")


def test_find_lr_takes_the_train_flags_leaves_a_run_alone_and_calls_a_flat_curve_so(tmp_path, image_folder,
                                                                                      monkeypatch):
    from tlkeras.config import FinetuneConfig

    run = tmp_path / "run"
    run.mkdir()
    FinetuneConfig().to_yaml(run / "config.yaml")  # a run's folder
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.main, [
        "find-lr", "--data", image_folder, "--backbone", "mobilenetv2", "--weights", "none", "--image-size", "32",
        "--output-dir", str(run), "--set", "backbone_options.alpha=0.35", "--set", "batch_size=8",
        "--steps", "20", "--min-lr", "1e-9", "--max-lr", "2e-9",  # rates too small to move the loss
    ])
    assert result.exit_code == 0, result.output
    assert os.listdir(run) == ["config.yaml"]  # nothing written into the run unasked
    assert _is_png(tmp_path / "lr_finder_stage1.png")
    assert "warning: the loss hardly changed over the sweep, so this suggestion is a guess" in result.stderr
