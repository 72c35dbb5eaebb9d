"""Text classification on a hub text-embedding module: data, two stages, export, predict, evaluate."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

import tlkeras
from conftest import text_rows
from test_hub import changed, module_values
from tlkeras import cli, freezing
from tlkeras.data.text import load_text_examples
from tlkeras.errors import DataError
from tlkeras.export.serving_client import signature_def

TEXT_RUN = {"batch_size": 8, "text_column": "review", "label_column": "sentiment", "report": False,
            "tensorboard": False, "verbose": 0}


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, hub_text_module, text_csv):
    """Stage 1 on the frozen module, stage 2 with its last 2 trainable variables (the Dense layer)."""
    return tlkeras.build_and_finetune(
        text_csv, backbone=f"hub:{hub_text_module}", **TEXT_RUN, stage1={"epochs": 6, "learning_rate": 0.05},
        stage2={"epochs": 2, "unfreeze": 2}, output_dir=str(tmp_path_factory.mktemp("text") / "run"),
    )


def test_a_text_run_trains_the_head_then_what_unfreeze_says(text_run, hub_text_module):
    assert text_run.class_names == ["cool", "warm"] and text_run.history["stage"] == [1] * 6 + [2, 2]
    assert text_run.model.input.dtype == "string"
    moved = changed(module_values(hub_text_module), module_values(freezing.hub_module(text_run.model)))
    assert moved == {"dense/kernel", "dense/bias"}  # the embedding (below the cut) did not move
    assert text_run.metrics["accuracy"] >= 0.75 and text_run.metrics["count"] == 8


def test_stage_1_leaves_the_text_module_unchanged(tmp_path, hub_text_module, text_csv):
    result = tlkeras.build_and_finetune(text_csv, backbone=f"hub:{hub_text_module}", **TEXT_RUN,
                                        stage1={"epochs": 2}, stage2={"epochs": 0}, export=False,
                                        output_dir=str(tmp_path / "run"))
    assert changed(module_values(hub_text_module), module_values(freezing.hub_module(result.model))) == set()


def test_the_text_export_takes_strings_and_answers_as_the_model(text_run):
    sig = signature_def(text_run.export_dir)
    assert sorted(sig.inputs) == ["text"] and sig.inputs["text"].dtype == tf.string.as_datatype_enum
    assert sorted(sig.outputs) == ["classes", "probabilities", "scores"]
    texts = ["red fire apple", "blue sky and sea", "", "words the module never saw", "Cherry FIRE"]
    served = tf.saved_model.load(text_run.export_dir).signatures["serving_default"](text=tf.constant(texts))
    expected = text_run.model.predict(tf.constant(texts), verbose=0)
    probabilities = served["probabilities"].numpy()
    np.testing.assert_allclose(probabilities[:, 1:], expected, atol=1e-5)  # a sigmoid unit: p(warm)
    assert [c.decode() for c in served["classes"].numpy()[:, 0]][:2] == ["warm", "cool"]
    reloaded = keras.models.load_model(os.path.join(text_run.run_dir, "model.keras"), safe_mode=True)
    np.testing.assert_allclose(reloaded.predict(tf.constant(texts), verbose=0), expected, atol=1e-6)
    with open(os.path.join(text_run.export_dir, "assets", "model_card.json"), encoding="utf-8") as f:
        card = json.load(f)
    assert card["task"] == "text classification" and card["class_names"] == ["cool", "warm"]
    with open(os.path.join(text_run.run_dir, "run.json"), encoding="utf-8") as f:
        record = json.load(f)
    assert record["data"]["train"]["kind"] == "texts" and record["data"]["train"]["texts"] == 32


def test_predict_takes_text_lines_and_files_of_lines(text_run, tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("apple cherry fire red\n\nsea sky leaf grass\n", encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(cli.main, ["predict", text_run.export_dir, "red red fire", str(lines), "-",
                                      "--format", "json", "--top-k", "1"], input="blue sea\n")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["source"] for r in rows] == ["red red fire", f"{lines}:1", f"{lines}:3", "stdin:1"]
    assert [r["classes"][0] for r in rows] == ["warm", "warm", "cool", "cool"]
    table = runner.invoke(cli.main, ["predict", text_run.export_dir, "red red fire"])
    assert table.output.splitlines()[0].split() == ["text", "prediction"]
    # a folder is not a text, and a file that is not UTF-8 is named: one line each
    folder = runner.invoke(cli.main, ["predict", text_run.export_dir, str(tmp_path)])
    assert folder.exit_code == 1 and f"'{tmp_path}' is a folder; a text classifier takes texts" in folder.output
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 red fire\n".encode("latin-1"))
    encoded = runner.invoke(cli.main, ["predict", text_run.export_dir, str(latin)])
    assert encoded.exit_code == 1 and f"'{latin}' is not UTF-8 text (byte 3: b'\\xe9')" in encoded.output
    assert "Traceback" not in folder.output + encoded.output


def test_evaluate_a_text_run_and_its_export(text_run):
    runner = CliRunner()
    for path in (text_run.run_dir, text_run.export_dir):
        result = runner.invoke(cli.main, ["evaluate", path, "--format", "json"])
        assert result.exit_code == 0, result.output
        metrics = json.loads(result.output)
        assert metrics["count"] == text_run.metrics["count"]
        assert metrics["accuracy"] == pytest.approx(text_run.metrics["accuracy"])


def test_a_folder_of_txt_files_per_class(tmp_path, hub_text_module):
    root = tmp_path / "texts"
    for i, (text, label) in enumerate(text_rows(24, seed=1)):
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / f"{i:03d}.txt").write_text(text + "\n", encoding="utf-8")
    (root / "warm" / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "warm" / "notes.md").write_text("not a .txt: ignored", encoding="utf-8")
    examples, names, skipped = load_text_examples(str(root), "data")
    assert names == ["cool", "warm"] and len(examples) == 24
    assert skipped == [(str(root / "warm" / "latin1.txt"), "not UTF-8 text (unexpected end of data at byte 3)")]
    result = tlkeras.build_and_finetune(str(root), backbone=f"hub:{hub_text_module}", batch_size=8,
                                        stage1={"epochs": 1}, stage2={"epochs": 1}, report=False, tensorboard=False,
                                        export=False, output_dir=str(tmp_path / "run"), verbose=0)
    assert result.history["stage"] == [1, 2] and len(result.skipped_files) == 1


def test_text_data_errors_say_what_to_fix(tmp_path, hub_text_module, text_csv):
    with pytest.raises(DataError, match=r"has no column 'text'\. Its columns are id, review, sentiment; set text_col"):
        load_text_examples(text_csv, "data")
    with pytest.raises(DataError, match=r"has no column 'sentimnet'. Did you mean 'sentiment'\?"):
        load_text_examples(text_csv, "data", text_column="review", label_column="sentimnet")
    with pytest.raises(DataError, match=r"augment: image augmentation does not apply to text"):
        tlkeras.build_and_finetune(text_csv, backbone=f"hub:{hub_text_module}", **TEXT_RUN,
                                   augment={"flip": "horizontal"}, output_dir=str(tmp_path / "run"))
    empty = tmp_path / "empty.csv"
    empty.write_text("review,sentiment\n" + "".join(f'"{" " * (i % 3)}",{("warm", "cool")[i % 2]}\n'
                                                     for i in range(10)), encoding="utf-8")
    # all 10 train: the copies (the same blank text) the split drew into validation are moved to training
    with pytest.raises(DataError, match=r"data: all 10 training texts are empty \(text_column 'review'\): there is "
                                        r"nothing to learn from"):
        tlkeras.build_and_finetune(str(empty), backbone=f"hub:{hub_text_module}", **TEXT_RUN,
                                   output_dir=str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "model.keras")


def test_the_lr_range_test_runs_on_a_text_module(tmp_path, hub_text_module, text_csv):
    for stage in (1, 2):  # stage 2 trains the whole module (one layer, nothing below it to cache)
        result = tlkeras.find_learning_rate(text_csv, backbone=f"hub:{hub_text_module}", stage=stage, steps=12,
                                            **{k: v for k, v in TEXT_RUN.items() if k != "verbose"},
                                            stage1={"epochs": 1}, output=str(tmp_path / f"lr{stage}.png"))
        assert len(result.learning_rates) == len(result.losses) == 12 and 1e-7 <= result.suggestion <= 1.0
        assert os.path.isfile(result.plot)


def test_a_text_run_exports_as_a_saved_model_only(text_run):
    result = CliRunner().invoke(cli.main, ["export", text_run.run_dir, "--format", "saved_model,tflite"])
    assert result.exit_code == 1
    assert "format tflite: a text classifier exports as a SavedModel only" in result.output


def test_a_text_module_runs_without_xla(hub_text_module):
    model = tlkeras.build_model(f"hub:{hub_text_module}", 2)
    model.compile("adam", "binary_crossentropy", jit_compile=True)  # string ops have no XLA kernels
    assert model.jit_compile is False
    model.fit(tf.constant(["red fire", "blue sea"]), np.array([1, 0]), epochs=1, verbose=0)


def test_the_text_run_keeps_the_shared_contract(text_run):
    """The shared contract (tests/contract.py) for single-label texts on a hub text module."""
    import contract

    texts = tf.constant(["red fire apple", "blue sky and sea", "", "words the module never saw"])
    contract.check_reload_predicts_identically(text_run, texts)
    served = contract.check_export_answers_as_the_model(text_run, {"text": texts}, texts)
    assert served["classes"].shape == (4, 2)


def test_a_semicolon_csv_is_read_by_its_separator(tmp_path, caplog):
    # a spreadsheet's export in many locales: the advice "did you mean 'review;sentiment'" looped before
    path = tmp_path / "semicolons.csv"
    path.write_text("review;sentiment\nred fire, apple;warm\nblue sea;cool\n", encoding="utf-8")
    with caplog.at_level("INFO", logger="tlkeras"):
        examples, names, _ = load_text_examples(str(path), "data", text_column="review", label_column="sentiment")
    assert examples.texts == ["red fire, apple", "blue sea"] and names == ["cool", "warm"]
    assert "its columns are separated by ';', not ','" in caplog.text
    # a comma CSV whose columns are right is read as it always was, commas in quotes included
    plain = tmp_path / "plain.csv"
    plain.write_text('review,sentiment\n"red; fire",warm\nsea,cool\n', encoding="utf-8")
    assert load_text_examples(str(plain), "data", text_column="review", label_column="sentiment")[0].texts == [
        "red; fire", "sea"]


def test_a_semicolon_csv_whose_columns_have_other_names_is_told_them_split(tmp_path):
    # the header read as one column "text;stars" gave "did you mean 'text;stars'", and setting that looped
    path = tmp_path / "semicolons.csv"
    path.write_text("review;stars\nred fire;warm\nblue sea;cool\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_text_examples(str(path), "data", text_column="text", label_column="stars")
    message = str(caught.value)
    assert "Its columns, separated by ';', are review, stars" in message and "--set text_column=review" in message
    assert "did you mean" not in message.lower() and "\n" not in message
