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


def test_crops_are_the_named_boxes_resized_back_and_averaged(tiny_model):
    rows, cols = np.meshgrid(np.arange(32.0), np.arange(32.0), indexing="ij")
    ramps = np.stack([rows, cols, rows + cols], axis=-1).astype("float32")[None]  # bilinear sampling keeps ramps
    views = get_inputs("image").tta_views("crops:2")
    centre, corner = (view(tf.constant(ramps)).numpy()[0] for view in views)
    # the centre box spans 1/16 .. 15/16 of the image (7/8 of each side), the first corner 0 .. 7/8
    np.testing.assert_allclose(centre[:, 0, 0], np.linspace(31 / 16, 31 * 15 / 16, 32), atol=1e-3)
    np.testing.assert_allclose(centre[0, :, 1], np.linspace(31 / 16, 31 * 15 / 16, 32), atol=1e-3)
    np.testing.assert_allclose(corner[:, 0, 0], np.linspace(0, 31 * 7 / 8, 32), atol=1e-3)
    assert views[0](tf.constant(ramps)).dtype == tf.float32 and centre.shape == ramps.shape[1:]
    x = np.random.default_rng(1).uniform(0, 255, (5, 32, 32, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, np.arange(5) % 3)).batch(4)
    made = [tiny_model.predict(view(tf.constant(x)), verbose=0) for view in views]
    expected = (tiny_model.predict(x, verbose=0) + made[0] + made[1]) / 3
    np.testing.assert_allclose(predict_probabilities(tiny_model, ds, views=views)[0], expected, atol=1e-5)


def test_a_bad_crops_count_is_one_line_before_any_work(tmp_path, trained_run):
    runner = CliRunner()
    for value, message in (("crops:12", "crops:N takes N from 1 to 8"), ("crops:x", "is not valid: use one of")):
        ran = runner.invoke(cli.main, ["predict", trained_run.run_dir, "x.png", "--tta", value])
        assert ran.exit_code == 2 and message in ran.output, ran.output
    with pytest.raises(ConfigError, match=r"^tta: 'crops:0': crops:N takes N from 1 to 8\.$"):
        tlkeras.build_and_finetune(str(tmp_path), tta="crops:0", verbose=0)


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


def test_an_export_with_tta_averages_the_views_inside_its_graph(tmp_path, image_folder, tiny):
    """The SavedModel made with export_tta answers each image with the views averaged: what the Keras model's
    own average gives (within the export check's 1e-5), and not what the plain export gives; predict --tta on the run
    directory agrees with it."""
    import glob
    import os

    from tlkeras.predict import load_export, predict

    out = str(tmp_path / "run")
    result = tlkeras.build_and_finetune(image_folder, **tiny, tta="flip", export_tta=True, output_dir=out, verbose=0,
                                        stage1={"epochs": 1}, stage2={"epochs": 0})
    card = json.load(open(os.path.join(result.export_dir, "assets", "model_card.json")))
    assert card["tta"] == "flip"
    plain_dir = tlkeras.export.export_run(out)["saved_model"]  # the same model exported without the views
    images = sorted(glob.glob(os.path.join(image_folder, "*", "*")))[:4]
    pixels = np.stack([get_inputs("image").model_batch([open(p, "rb").read()], result.model)[0] for p in images])
    plain = result.model.predict(pixels, verbose=0)
    both = (plain + result.model.predict(pixels[:, :, ::-1], verbose=0)) / 2
    with_views = np.stack([r["probabilities"] for r in _served(load_export(result.export_dir), images)])
    without = np.stack([r["probabilities"] for r in _served(load_export(plain_dir), images)])
    np.testing.assert_allclose(with_views, both, atol=1e-5)
    np.testing.assert_allclose(without, plain, atol=1e-5)
    assert np.abs(both - plain).max() > 1e-4  # the views do change the answer here
    rows = predict(out, images, tta="flip", top_k=3).rows
    served = _served(load_export(result.export_dir), images)
    assert [r["classes"] for r in rows] == [[c for c in np.asarray(result.class_names)[np.argsort(-p)][:3]]
                                            for p in (s["probabilities"] for s in served)]


def _served(export, paths):
    out = export.serve(image_bytes=tf.constant([open(p, "rb").read() for p in paths]))
    return [{"probabilities": p} for p in out["probabilities"].numpy()]


def test_tta_in_exports_and_predict_is_refused_where_it_cannot_go(tmp_path, trained_run):
    with pytest.raises(ConfigError, match="export_tta: true puts the views of `tta` inside the export, and tta is"):
        tlkeras.config.resolve_config(None, None, {"export_tta": True})
    runner = CliRunner()
    ran = runner.invoke(cli.main, ["export", trained_run.run_dir, "--format", "saved_model,tflite", "--tta", "flip"])
    assert ran.exit_code != 0
    assert "tta: flip goes inside a SavedModel only; tflite answer each input alone" in ran.output
    ran = runner.invoke(cli.main, ["predict", trained_run.export_dir, trained_run.run_dir, "--tta", "flip"])
    assert ran.exit_code != 0 and "is an export or a model file, which answers each input as it was exported" in \
        ran.output
