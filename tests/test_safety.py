"""Safe loading: no code from model files unless asked, class names never become paths."""

import os

import keras
import numpy as np
import pytest
from click.testing import CliRunner

import tlkeras
from tlkeras import cli
from tlkeras.errors import DataError, TlkerasError
from tlkeras.rundir import load_run


@pytest.fixture
def lambda_run(tmp_path):
    """A run directory whose model.keras holds a Lambda layer (code that safe mode refuses)."""
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Lambda(lambda x: x * 2.0)(inputs))
    keras.Model(inputs, outputs).save(tmp_path / "model.keras")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    return str(tmp_path)


def test_a_model_file_with_code_is_refused_unless_trusted(lambda_run):
    with pytest.raises(TlkerasError, match=r"holds code \(a Lambda layer\) that safe mode does not run.*--unsafe-load"):
        load_run(lambda_run)
    model, names, _ = load_run(lambda_run, safe_mode=False)
    np.testing.assert_allclose(model.layers[1](np.ones((1, 4), "float32")), 2.0)
    assert names == ["a", "b"]


def test_cli_says_how_to_trust_a_model_file(lambda_run):
    result = CliRunner().invoke(cli.main, ["export", lambda_run])
    assert result.exit_code == 1
    assert "safe mode does not run" in result.output and "--unsafe-load" in result.output
    assert "Traceback" not in result.output


def test_class_names_cannot_write_outside_the_run_dir(tmp_path, tiny):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (16, 32, 32, 3)).astype("uint8")
    names = ["../../escaped", "/etc/passwd"]
    y = np.array(names * 8)
    run_dir = tmp_path / "a" / "b" / "run"
    result = tlkeras.build_and_finetune(
        (x, y), **{**tiny, "report": True}, output_dir=str(run_dir), stage1={"epochs": 1}, stage2={"epochs": 0},
        verbose=0,
    )
    written = {os.path.relpath(os.path.join(d, f), tmp_path) for d, _, files in os.walk(tmp_path) for f in files}
    assert all(path.startswith(os.path.join("a", "b", "run") + os.sep) for path in written), sorted(written)
    assert result.class_names == sorted(names)
    assert (run_dir / "labels.txt").read_text().splitlines() == sorted(names)
    with open(os.path.join(result.export_dir, "assets", "labels.txt"), encoding="utf-8") as f:
        assert f.read().splitlines() == sorted(names)


@pytest.mark.parametrize("bad", ["two\nlines", "tab\there", "   "])
def test_class_names_that_would_break_labels_txt_are_refused(bad, tiny):
    x = np.zeros((8, 32, 32, 3), "uint8")
    y = np.array(["fine", bad] * 4)
    with pytest.raises(DataError, match=r"class name .* (holds a line break or control character|is empty); .* rename it"):
        tlkeras.build_and_finetune((x, y), **tiny, verbose=0)
