"""Test-time augmentation: exactly the views it names, averaged; in the run's metrics beside the plain ones, in
`tlkeras evaluate --tta`, and refused where inputs have no views."""

import json

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

import tlkeras
from tlkeras import cli
from tlkeras.errors import ConfigError, TlkerasError
from tlkeras.evaluate import predict_probabilities
from tlkeras.inputs import get_inputs


def test_the_views_are_averaged_exactly(tiny_model):
    x = np.random.default_rng(0).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, np.arange(6) % 3)).batch(4)
    plain = tiny_model.predict(x, verbose=0)
    mirrored = tiny_model.predict(x[:, :, ::-1], verbose=0)
    upside_down = tiny_model.predict(x[:, ::-1], verbose=0)
    both = tiny_model.predict(x[:, ::-1, ::-1], verbose=0)
    views = get_inputs("image").tta_views
    np.testing.assert_allclose(predict_probabilities(tiny_model, ds)[0], plain, atol=1e-5)
    np.testing.assert_allclose(predict_probabilities(tiny_model, ds, views=views("flip"))[0],
                               (plain + mirrored) / 2, atol=1e-5)
    np.testing.assert_allclose(predict_probabilities(tiny_model, ds, views=views("flip_all"))[0],
                               (plain + mirrored + upside_down + both) / 4, atol=1e-5)


def test_a_run_with_tta_reports_both_and_evaluate_agrees(tmp_path, image_folder, tiny):
    out = str(tmp_path / "run")
    result = tlkeras.build_and_finetune(image_folder, **tiny, tta="flip", export=True, output_dir=out, verbose=0,
                                        stage1={"epochs": 2}, stage2={"epochs": 1, "unfreeze": "blocks:1"})
    assert result.metrics["tta"]["views"] == "flip" and "accuracy" in result.metrics["tta"]
    runner = CliRunner()
    ran = runner.invoke(cli.main, ["evaluate", out, "--tta", "flip", "--format", "json"])
    assert ran.exit_code == 0, ran.output
    evaluated = json.loads(ran.output)
    assert evaluated["tta"] == "flip"
    assert evaluated["accuracy"] == pytest.approx(result.metrics["tta"]["accuracy"])
    assert evaluated["loss"] == pytest.approx(result.metrics["tta"]["loss"], abs=1e-4)
    refused = runner.invoke(cli.main, ["evaluate", result.export_dir, "--tta", "flip"])
    assert refused.exit_code == 1 and "tta: an export answers each input as it was exported" in refused.output


def test_tta_on_texts_is_one_line_before_any_work(tmp_path, hub_text_module, text_csv):
    with pytest.raises(ConfigError, match=r"^tta: 'flip' does not apply to texts: they have no views to average"):
        tlkeras.build_and_finetune(text_csv, backbone=f"hub:{hub_text_module}", text_column="review",
                                   label_column="sentiment", tta="flip", output_dir=str(tmp_path / "run"), verbose=0)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"tta: 'sideways' is not valid: use one of none, flip, flip_all"):
        tlkeras.build_and_finetune(text_csv, tta="sideways", verbose=0)
    assert issubclass(ConfigError, TlkerasError)
