import json
import os

import numpy as np
import pytest
import tensorflow as tf
import yaml
from click.testing import CliRunner

from conftest import COLORS, TINY, make_image
from tlkeras import cli
from tlkeras.inputs import get_inputs


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def captured(monkeypatch, tmp_path):
    """Replace the library call of `train` and keep the config that reached it (in a folder that
    has the `photos` folder the tests name: paths are checked before the library is called)."""
    seen = {}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()

    class _Result:
        metrics = {"split": "val", "accuracy": 0.5, "count": 2}
        run_dir = "runs/x"
        export_dir = "runs/x/export/1"
        inputs = get_inputs("image")

    def fake(config=None, **kwargs):
        seen["config"] = config
        return _Result()

    monkeypatch.setattr("tlkeras.workflow.build_and_finetune", fake)
    return seen


def test_precedence_defaults_yaml_flags_set(runner, captured, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"backbone": "resnet50", "batch_size": 16, "stage2": {"epochs": 7, "unfreeze": 10}}))
    result = runner.invoke(cli.main, [
        "train", "--config", str(config), "--data", "photos", "--backbone", "mobilenetv2",
        "--set", "stage2.epochs=3", "--set", "stage2.learning_rate=1e-4", "--weights", "none",
    ])
    assert result.exit_code == 0, result.output
    cfg = captured["config"]
    assert cfg.data == "photos" and cfg.backbone == "mobilenetv2"  # flags over YAML
    assert cfg.batch_size == 16 and cfg.stage2.unfreeze == 10  # YAML over defaults
    assert cfg.stage2.epochs == 3 and cfg.stage2.learning_rate == pytest.approx(1e-4)  # --set over YAML
    assert cfg.weights is None
    assert cfg.stage1.epochs == "auto"  # default
    assert "val accuracy: 0.5000 (2 images)" in result.output
    assert "tlkeras predict runs/x/export/1 IMAGE_OR_FOLDER" in result.output


def test_unknown_set_key_is_one_clear_line(runner, captured):
    result = runner.invoke(cli.main, ["train", "--data", "photos", "--set", "stage2.unfrezee=2"])
    assert result.exit_code == 1
    assert result.output == "Error: Unknown config key 'stage2.unfrezee'. Did you mean 'stage2.unfreeze'?\n"
    assert "config" not in captured


def test_unknown_yaml_key_is_one_clear_line(runner, captured, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("backbone: mobilenetv2\nlearning_rate: 0.1\n")
    result = runner.invoke(cli.main, ["train", "--config", str(config)])
    assert result.exit_code == 1
    assert result.output.startswith("Error: Unknown config key 'learning_rate'.")
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback(runner, captured):
    result = runner.invoke(cli.main, ["--debug", "train", "--set", "nope=1"])
    assert result.exit_code == 1
    assert type(result.exception).__name__ == "ConfigError"


def test_backbones_lists_every_family(runner):
    result = runner.invoke(cli.main, ["backbones"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split()[:2] == ["name", "source"]
    rows = [line.split() for line in lines[1 : lines.index("")]]  # the table ends at the first blank line
    assert len(rows) == 40
    schemes = [line.split()[0] for line in lines[lines.index("Other backbones, by scheme:") + 1:]]
    assert schemes == ["hub:<handle>", "kerashub:<preset>", "path/to/model.keras", "path/to/saved_model/", "auto:A,B,..."]
    assert 'pip install "tlkeras[hub]"' in result.output and 'pip install "tlkeras[kerashub]"' in result.output
    assert ["mobilenetv2", "keras.applications", "224", "32", "tf"] in rows
    assert ["inceptionv3", "keras.applications", "299", "75", "tf"] in rows


def _images(folder, n=4):
    rng = np.random.default_rng(5)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, color in enumerate(list(COLORS.values())[:n] + [COLORS["red"]] * max(0, n - 3)):
        path = os.path.join(folder, f"img{i}.png")
        tf.io.write_file(path, tf.io.encode_png(make_image(rng, color)))
        paths.append(path)
    return paths


def test_predict_formats(runner, trained_run, tmp_path):
    folder = str(tmp_path / "imgs")
    paths = _images(folder, 3)
    table = runner.invoke(cli.main, ["predict", trained_run.export_dir, folder, "--top-k", "2"])
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split() == ["path", "prediction"] and len(lines) == 4
    as_json = runner.invoke(cli.main, ["predict", trained_run.export_dir, *paths, "--format", "json"])
    rows = [json.loads(line) for line in as_json.output.splitlines()]
    assert [r["path"] for r in rows] == paths
    # default --top-k 3 over 3 classes: every class, best first, probabilities summing to 1
    assert all(sorted(r["classes"]) == trained_run.class_names for r in rows)
    assert all(r["scores"] == sorted(r["scores"], reverse=True) for r in rows)
    assert all(sum(r["scores"]) == pytest.approx(1.0, abs=1e-5) for r in rows)
    as_csv = runner.invoke(cli.main, ["predict", trained_run.export_dir, paths[0], "--format", "csv", "--top-k", "1"])
    assert as_csv.output.splitlines()[0] == "path,class_1,score_1"
    assert as_csv.output.splitlines()[1].startswith(paths[0] + ",")


def test_predict_skips_a_broken_file_and_says_so(runner, trained_run, tmp_path):
    paths = _images(str(tmp_path / "imgs"), 2)
    broken = str(tmp_path / "imgs" / "broken.png")
    with open(broken, "wb") as f:
        f.write(b"\x89PNG not really")
    result = runner.invoke(cli.main, ["predict", trained_run.export_dir, *paths, broken, "--format", "json"])
    assert result.exit_code == 0
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in rows] == paths
    assert f"skipped {broken}: not a decodable PNG image (damaged or cut short)" in result.stderr


def test_predict_on_a_folder_without_saved_model_is_explained(runner, tmp_path):
    result = runner.invoke(cli.main, ["predict", str(tmp_path), "x.png"])
    assert result.exit_code == 1
    assert "holds no SavedModel" in result.output


def test_a_batch_size_below_1_is_one_line_not_silence(runner, trained_run, tmp_path):
    for command in (["predict", trained_run.export_dir, str(tmp_path)], ["evaluate", trained_run.run_dir]):
        for size in ("-1", "0"):
            result = runner.invoke(cli.main, [*command, "--batch-size", size])
            assert result.exit_code == 2, result.output
            assert f"Invalid value for '--batch-size': {size} is not in the range x>=1." in result.output


def test_export_writes_the_next_version(runner, trained_run):
    result = runner.invoke(cli.main, ["export", trained_run.run_dir])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == os.path.join(trained_run.run_dir, "export", "2")


def test_evaluate_a_run_on_its_own_validation_split_and_on_a_folder(runner, trained_run, image_folder):
    own = runner.invoke(cli.main, ["evaluate", trained_run.run_dir, "--format", "json"])
    assert own.exit_code == 0, own.output
    metrics = json.loads(own.output)
    # the rebuilt validation split is the one the run was scored on
    assert metrics["count"] == trained_run.metrics["count"]
    assert metrics["accuracy"] == pytest.approx(trained_run.metrics["accuracy"])
    assert metrics["confusion_matrix"] == trained_run.metrics["confusion_matrix"]
    on_folder = runner.invoke(cli.main, ["evaluate", trained_run.run_dir, "--data", image_folder])
    assert on_folder.exit_code == 0
    assert on_folder.output.startswith("images 24   accuracy ")
    assert {"red", "green", "blue", "macro avg", "weighted avg"} <= {
        line.split()[0] if not line.startswith(("macro", "weighted")) else " ".join(line.split()[:2])
        for line in on_folder.output.splitlines()[3:] if line.strip()
    }


def test_evaluate_an_export_from_image_bytes_agrees_with_the_run(runner, trained_run):
    """The export answers from encoded bytes through serving_default: same images, same metrics."""
    served = runner.invoke(cli.main, ["evaluate", os.path.join(trained_run.run_dir, "export"), "--format", "json"])
    assert served.exit_code == 0, served.output
    metrics = json.loads(served.output)
    assert metrics["evaluated"].startswith(os.path.join(trained_run.run_dir, "export"))
    assert metrics["count"] == trained_run.metrics["count"]
    assert metrics["confusion_matrix"] == trained_run.metrics["confusion_matrix"]
    assert metrics["loss"] == pytest.approx(trained_run.metrics["loss"], abs=2e-4)


def test_train_end_to_end_through_the_cli(runner, tmp_path, image_folder, backbone_weights):
    out = str(tmp_path / "run")
    result = runner.invoke(cli.main, [
        "train", "--data", image_folder, "--backbone", "mobilenetv2", "--image-size", "32",
        "--weights", backbone_weights, "--output-dir", out, "--batch-size", "8",
        "--set", "backbone_options.alpha=0.35", "--set", "stage1.epochs=1", "--set", "stage2.epochs=1",
        "--set", "stage2.unfreeze=blocks:1",
    ])
    assert result.exit_code == 0, result.output
    assert f"SavedModel:     {out}/export/1" in result.output
    assert os.path.isfile(os.path.join(out, "export", "1", "saved_model.pb"))
    assert TINY["backbone"] in open(os.path.join(out, "config.yaml")).read()


def test_predict_over_many_files_shows_progress_on_stderr_only(runner, trained_run, tmp_path):
    folder = str(tmp_path / "many")
    _images(folder, 12)
    result = runner.invoke(cli.main, ["predict", trained_run.export_dir, folder, "--format", "json", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "predicting" in result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]  # stdout stays pure JSON lines
    assert len(rows) == 12


def test_quiet_silences_the_progress_of_training(runner, monkeypatch, tmp_path):
    seen = {}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()

    class _Result:
        metrics, run_dir, export_dir = {"split": "val", "accuracy": 0.5, "count": 2}, "r", None
        inputs = get_inputs("image")

    def fake(config=None, **kwargs):
        seen.update(kwargs)
        return _Result()

    monkeypatch.setattr("tlkeras.workflow.build_and_finetune", fake)
    assert runner.invoke(cli.main, ["-q", "train", "--data", "photos"]).exit_code == 0
    assert seen["verbose"] == 0
    assert runner.invoke(cli.main, ["train", "--data", "photos"]).exit_code == 0
    assert seen["verbose"] == "auto"  # a bar on a terminal, one line per epoch in a log
