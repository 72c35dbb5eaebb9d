"""Edges (issue 15, the parts done so far): bad config input refused in one line before any work."""

import json
import os
import time

import pytest

import tlkeras

from tlkeras.config import FinetuneConfig, load_config
from tlkeras.errors import ConfigError


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):  # 10^9 leaves once expanded
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 10) + "]")
    lines.append("data: *i")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"bomb.yaml' uses the YAML alias \*a at line 2: aliases are not accepted"):
        load_config(path)
    assert time.monotonic() - start < 5  # refused while parsing, not after expanding (a loose bound)
    with pytest.raises(ConfigError, match=r"--set data uses the YAML alias"):
        FinetuneConfig().with_overrides(["data=[&x a, *x]"])
    # anchors without aliases, and plain YAML, still load
    path.write_text("backbone: mobilenetv2\nstage1: {epochs: 2}\n")
    assert load_config(path).stage1.epochs == 2


def test_an_image_size_no_backbone_takes_is_refused():
    with pytest.raises(ConfigError, match=r"image_size: 100000 is above 4096 pixels a side"):
        FinetuneConfig.from_dict({"image_size": 100000})
    with pytest.raises(ConfigError, match=r"image_size: \[224, 5000\] is above 4096"):
        FinetuneConfig.from_dict({"image_size": [224, 5000]})
    assert FinetuneConfig.from_dict({"image_size": 600}).image_size == 600


def test_a_stage_key_at_the_top_names_the_stages_it_belongs_to():
    with pytest.raises(ConfigError, match=r"Unknown config key 'learning_rate'. Did you mean 'stage1.learning_rate' "
                                          r"or 'stage2.learning_rate'\?"):
        FinetuneConfig().with_overrides(["learning_rate=0.01"])
    with pytest.raises(ConfigError, match=r"Did you mean 'head.dropout'\?"):
        FinetuneConfig.from_dict({"dropout": 0.3})
    with pytest.raises(ConfigError, match=r"Did you mean 'batch_size'\?"):  # other typos as before
        FinetuneConfig.from_dict({"batch_sise": 3})


def test_weights_none_means_random_initialisation_wherever_it_is_written(tmp_path):
    assert FinetuneConfig().with_overrides(["weights=none"]).weights is None
    assert FinetuneConfig.from_dict({"weights": "None"}).weights is None
    path = tmp_path / "c.yaml"
    path.write_text("weights: none\n")
    assert load_config(path).weights is None
    assert FinetuneConfig.from_dict({"weights": "imagenet"}).weights == "imagenet"
    assert os.path.basename(FinetuneConfig.from_dict({"weights": "w/none.h5"}).weights) == "none.h5"


def test_files_a_run_publishes_follow_the_umask(tmp_path):
    from tlkeras.atomic import write_json_atomic, write_text_atomic

    previous = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        write_json_atomic(tmp_path / "b.json", {"a": 1})
        os.umask(0o077)
        write_text_atomic(tmp_path / "c.txt", "x")
    finally:
        os.umask(previous)
    assert oct(os.stat(tmp_path / "a.txt").st_mode & 0o777) == oct(0o644)  # was 0o600 whatever the umask
    assert oct(os.stat(tmp_path / "b.json").st_mode & 0o777) == oct(0o644)
    assert oct(os.stat(tmp_path / "c.txt").st_mode & 0o777) == oct(0o600)


def test_a_model_at_chance_level_is_called_so_with_the_likely_causes(tmp_path, caplog):
    import logging

    import numpy as np

    import tlkeras
    from conftest import TINY

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (24, 16, 16, 3)).astype("uint8")
    y = np.array(["cat", "dog"] * 12)  # noise: nothing to learn
    with caplog.at_level(logging.WARNING, logger="tlkeras"):
        tlkeras.build_and_finetune((x, y), **{**TINY, "weights": None}, batch_size=8, stage1={"epochs": 1},
                                   stage2={"epochs": 0}, export=False, report=False, tensorboard=False,
                                   output_dir=str(tmp_path / "run"), verbose=0)
    assert "val accuracy 0.500 is at chance level (0.500 by always answering the most frequent class)" in caplog.text
    assert "random backbone weights (weights: null)" in caplog.text


@pytest.mark.slow
def test_the_best_epoch_of_the_run_is_evaluated_and_exported_not_the_last(tmp_path, image_folder, tiny):
    import json

    import keras
    import numpy as np

    import tlkeras

    # stage 2 at a rate far too high: its epochs end worse than stage 1's best
    options = {**tiny, "val_split": 0.25, "augment": "none", "stage1": {"epochs": 3, "learning_rate": 1e-2},
               "stage2": {"epochs": 2, "learning_rate": 0.5, "unfreeze": "all", "warmup_epochs": 0,
                          "schedule": "constant"}, "verbose": 0}
    best = tlkeras.build_and_finetune(image_folder, output_dir=str(tmp_path / "best"), **options)
    losses, accuracies = best.history["val_loss"], best.history["val_accuracy"]
    # the best epoch: the highest validation accuracy, the lowest loss among equals
    expected = min(range(len(losses)), key=lambda i: (-accuracies[i], losses[i])) + 1
    assert expected < len(losses)  # the setting does what the test needs
    assert best.metrics["epoch"] == expected and best.metrics["restored_best"] is True
    saved = keras.models.load_model(os.path.join(best.run_dir, "model.keras"))
    reference = tlkeras.build_model(**{k: tiny[k] for k in ("backbone", "image_size", "backbone_options")},
                                    num_classes=3, weights=None)
    reference.load_weights(os.path.join(best.run_dir, "checkpoints", "best.weights.h5"))
    for a, b in zip(saved.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)
    with open(os.path.join(best.run_dir, "metrics.json"), encoding="utf-8") as f:
        assert json.load(f)["loss"] == pytest.approx(losses[expected - 1], rel=1e-3)
    last = tlkeras.build_and_finetune(image_folder, output_dir=str(tmp_path / "last"), restore_best=False,
                                      **{**options, "export": False})  # what is kept is model.keras's to tell
    assert last.metrics["epoch"] == len(losses) and last.metrics["restored_best"] is False
    reference.load_weights(os.path.join(last.run_dir, "checkpoints", "best.weights.h5"))
    assert any(not np.array_equal(a, b) for a, b in zip(last.model.get_weights(), reference.get_weights()))


def test_text_runs_are_told_in_texts_and_rates_print_as_set(monkeypatch):
    import keras
    import numpy as np
    from click.testing import CliRunner

    from tlkeras import cli
    from tlkeras.evaluate import format_evaluation
    from tlkeras.inputs import get_inputs
    from tlkeras.metrics import classification_metrics
    from tlkeras.training import current_learning_rate

    class _Result:
        metrics = {"split": "val", "accuracy": 0.75, "count": 24}
        run_dir, export_dir, inputs = "runs/t", "runs/t/export/1", get_inputs("text")

    monkeypatch.setattr("tlkeras.workflow.build_and_finetune", lambda config=None, **kwargs: _Result())
    monkeypatch.setattr("tlkeras.preflight.check_run", lambda cfg, **kwargs: None)  # no such files here: only words
    result = CliRunner().invoke(cli.main, ["train", "--data", "reviews.csv", "--backbone", "hub:some/module"])
    assert "val accuracy: 0.7500 (24 texts)" in result.output
    assert "tlkeras predict runs/t/export/1 TEXT_OR_FILE" in result.output
    metrics = classification_metrics(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 1]), ["bad", "good"])
    assert format_evaluation({**metrics, "inputs": "text"}).startswith("texts 2   accuracy 1.0000")
    assert format_evaluation(metrics).startswith("images 2   accuracy 1.0000")  # evaluations written before
    assert current_learning_rate(keras.optimizers.Adam(0.01)) == 0.01  # not 0.009999999776482582


def test_training_output_in_a_log_is_one_plain_line_per_epoch_and_keras_does_not_warn(capfd, tiny_model):
    import warnings

    import numpy as np
    import tensorflow as tf

    import tlkeras

    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, np.arange(8) % 3)).batch(4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tlkeras.finetune(tiny_model, ds, ds, stage1={"epochs": 2}, stage2={"epochs": 0})  # verbose "auto"
    assert not [w for w in caught if "shuffle=True" in str(w.message)]
    out = capfd.readouterr().out  # not a terminal here
    assert "\x1b[" not in out and "\b" not in out
    assert len([line for line in out.splitlines() if " - loss: " in line]) == 2


@pytest.mark.slow
def test_the_from_scratch_hint_trains_a_model_that_learns(tmp_path, caplog):
    # The flags the weights=None warning gives, run as a user would paste them: a random MobileNetV2 learns the
    # colour classes (chance is 1/3). The hint before them (stage1.epochs=0, unfreeze all, train_bn) stayed at chance.
    import shlex

    from click.testing import CliRunner

    from conftest import write_image_folder
    from tlkeras import cli
    from tlkeras.workflow import FROM_SCRATCH_FLAGS

    data = write_image_folder(tmp_path / "colours", per_class=12, seed=3)
    with caplog.at_level("WARNING", logger="tlkeras"):
        tlkeras.build_and_finetune(data, backbone="mobilenetv2", backbone_options={"alpha": 0.35}, image_size=32,
                                   weights=None, stage1={"epochs": 1}, stage2={"epochs": 0}, export=False,
                                   report=False, tensorboard=False, output_dir=str(tmp_path / "warned"), verbose=0)
    assert FROM_SCRATCH_FLAGS in caplog.text
    out = tmp_path / "scratch"
    result = CliRunner().invoke(cli.main, [
        "train", "--data", data, "--backbone", "mobilenetv2", "--set", "backbone_options.alpha=0.35", "--image-size",
        "32", "--weights", "none", "--batch-size", "8", "--output-dir", str(out), "--no-export",
        "--set", "report=false", "--set", "tensorboard=false", *shlex.split(FROM_SCRATCH_FLAGS)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.75, metrics


def test_a_run_given_relative_paths_is_evaluated_exported_and_resumed_from_any_folder(tmp_path, monkeypatch,
                                                                                   image_folder, tiny):
    """config.yaml keeps the data and weights as absolute paths (saying how they were given): `evaluate` and `export`
    from another folder find them, and the same command with the same relative paths still resumes the run."""
    import shutil

    from click.testing import CliRunner

    from tlkeras import cli

    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(image_folder, work / "photos")
    shutil.copy(tiny["weights"], work / "tiny.weights.h5")
    monkeypatch.chdir(work)
    options = {**tiny, "weights": "tiny.weights.h5", "export": False}
    tlkeras.build_and_finetune("photos", **options, output_dir="run", verbose=0, stage1={"epochs": 1},
                               stage2={"epochs": 0})
    text = (work / "run" / "config.yaml").read_text()
    assert f"# data: given as 'photos' in {work}" in text and f"data: {work / 'photos'}" in text
    assert f"weights: {work / 'tiny.weights.h5'}" in text
    # the same relative spelling is the same run: resumed (here: completing nothing), not refused as another config
    with pytest.raises(tlkeras.errors.TlkerasError, match="holds a finished run"):
        tlkeras.build_and_finetune("photos", **options, output_dir="run", verbose=0, stage1={"epochs": 1},
                                   stage2={"epochs": 0})
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    ran = runner.invoke(cli.main, ["evaluate", str(work / "run"), "--format", "json"])
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.output[ran.output.index("{"):])["count"] > 0
    ran = runner.invoke(cli.main, ["export", str(work / "run")])
    assert ran.exit_code == 0 and ran.output.strip().endswith(os.path.join("run", "export", "1")), ran.output


def test_copies_of_an_example_never_land_on_both_sides_of_the_split(tmp_path, image_folder, caplog):
    """Copies by content (a file under another name) and by path (a CSV naming one file twice) stay in training:
    validation holds only images the model has not seen, and the log counts them."""
    import hashlib
    import logging
    import shutil

    from tlkeras.data.datasets import make_datasets

    root = tmp_path / "photos"
    shutil.copytree(image_folder, root)
    for folder in root.iterdir():
        for i, path in enumerate(sorted(folder.iterdir())):
            shutil.copy(path, folder / f"copy{i}.png")  # every image twice, under two names
    caplog.set_level(logging.WARNING, logger="tlkeras")
    bundle = make_datasets(FinetuneConfig.from_dict({"data": str(root), "batch_size": 8, "val_split": 0.5}), (32, 32))

    def digest(path):
        return hashlib.sha1(open(path, "rb").read()).hexdigest()

    train = {digest(p) for p in bundle.train_examples.paths}
    val = [digest(p) for p in bundle.val_examples.paths]
    assert val and not train & set(val)
    assert bundle.train_count + bundle.val_count == 48
    assert "data: 24 images are copies of others (the same file or the same content)" in caplog.text
    assert "were moved to training, so that validation holds only images the model has not seen" in caplog.text
    csv = tmp_path / "list.csv"
    files = sorted(str(p) for p in (root / "red").iterdir())[:4] + sorted(str(p) for p in (root / "blue").iterdir())[:4]
    csv.write_text("image,label\n" + "".join(f"{p},{p.split(os.sep)[-2]}\n" for p in files + files))
    bundle = make_datasets(FinetuneConfig.from_dict({"data": str(csv), "batch_size": 8, "val_split": 0.5}), (32, 32))
    assert not set(map(os.path.realpath, bundle.train_examples.paths)) & set(
        map(os.path.realpath, bundle.val_examples.paths))
