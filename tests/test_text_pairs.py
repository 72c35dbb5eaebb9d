"""Sentence pairs (`text_column: [question1, question2]`) on a BERT-class KerasHub preset: packed as
the encoder packs two segments, two string inputs in the export, pairs counted when cut, `predict`
and `evaluate` on them, and the errors a user meets."""

import csv
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

import contract
import tlkeras
from conftest import TEXT_WORDS
from tlkeras import cli
from tlkeras.config import FinetuneConfig
from tlkeras.data.text import load_text_examples
from tlkeras.errors import ConfigError, DataError

RUN = {"batch_size": 8, "report": False, "tensorboard": False, "verbose": 0}
COLUMNS = ["question1", "question2"]
OPTIONS = {"sequence_length": 12, "pooling": "mean"}
PAIRS = [("red fire", "blue sky sea"), ("", "apple cherry"), ("sky", ""), ("words never seen", "grass leaf the rest")]


def pair_rows(count: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """(question1, question2, label) rows: the label is the class of the second text's words; the
    first text mixes both classes' words (it alone says nothing about the label)."""
    rng = np.random.default_rng(seed)
    mixed = [w for words in TEXT_WORDS.values() for w in words]
    rows = []
    for i in range(count):
        label = list(TEXT_WORDS)[i % 2]
        first = " ".join(rng.choice(mixed, 2 + i % 5))
        rows.append((first, " ".join(rng.choice(TEXT_WORDS[label], 2 + i % 4)), label))
    return rows


def write_pairs(path, rows) -> str:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*COLUMNS, "label"])
        writer.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    return write_pairs(folder / "train.csv", pair_rows(40)), write_pairs(folder / "val.csv", pair_rows(12, seed=1))


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory, bert_preset, pairs):
    train, val = pairs
    return tlkeras.build_and_finetune(
        train, val_data=val, backbone=f"kerashub:{bert_preset}", text_column=COLUMNS, **RUN,
        backbone_options=OPTIONS, stage1={"epochs": 10, "learning_rate": 0.05},
        stage2={"epochs": 1, "unfreeze": "blocks:1"}, output_dir=str(tmp_path_factory.mktemp("pairs") / "run"))


def test_a_pair_is_packed_as_bert_packs_two_segments(pair_run, bert_preset):
    import keras_hub

    tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(bert_preset)
    red, fire, sky, sea = (tokenizer.token_to_id(w) for w in ("red", "fire", "sky", "sea"))
    packed = pair_run.model.get_layer("preprocess")((tf.constant(["red fire", ""]), tf.constant(["sky sea", "sky"])))
    # [CLS] a [SEP] b [SEP], then padding; segment ids 0 for the first text, 1 for the second
    assert packed["token_ids"].numpy().tolist() == [[2, red, fire, 3, sky, sea, 3, 0, 0, 0, 0, 0],
                                                    [2, 3, sky, 3, 0, 0, 0, 0, 0, 0, 0, 0]]
    assert packed["segment_ids"].numpy().tolist() == [[0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0],
                                                      [0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]]
    info = tlkeras.model.model_info(pair_run.model)
    assert info.inputs == "token_pairs" and [t.name for t in pair_run.model.inputs] == ["text_a", "text_b"]


def test_a_pair_run_keeps_the_contract_and_reads_both_texts(pair_run):
    with open(os.path.join(pair_run.run_dir, "stage2_trainable_layers.txt"), encoding="utf-8") as f:
        assert f.read().split() == ["transformer_layer_1"]
    # the label is in the second text only: a model that dropped it would be at chance
    assert pair_run.metrics["accuracy"] >= 0.75, pair_run.metrics
    model_inputs = tuple(tf.constant(column) for column in zip(*PAIRS))
    contract.check_reload_predicts_identically(pair_run, model_inputs)
    served = contract.check_export_answers_as_the_model(
        pair_run, {"text_a": model_inputs[0], "text_b": model_inputs[1]}, model_inputs)
    assert served["probabilities"].shape == (4, 2)
    # swapping the two texts changes the answer: the encoder sees which text is which
    swapped = pair_run.model.predict((model_inputs[1], model_inputs[0]), verbose=0)
    assert np.max(np.abs(swapped - pair_run.model.predict(model_inputs, verbose=0))) > 1e-3
    with open(os.path.join(pair_run.export_dir, "assets", "model_card.json"), encoding="utf-8") as f:
        card = json.load(f)
    assert card["task"] == "text-pair classification"
    assert card["inputs"]["serving_default"].startswith("text_a, text_b: tf.string [N] each")
    assert "12 tokens per pair" in card["preprocessing"]


def test_pairs_longer_than_the_sequence_length_are_counted(pair_run):
    # one WordPiece token per word; [CLS] and two [SEP] take 3 of the 12 places
    expected = sum(len(a.split()) + len(b.split()) > 9 for a, b, _ in pair_rows(40))
    assert 0 < expected < 40
    with open(os.path.join(pair_run.run_dir, "run.json"), encoding="utf-8") as f:
        facts = json.load(f)["inputs"]
    assert facts == {"sequence_length": 12, "truncated_train_texts": expected, "train_texts": 40}


def test_predict_reads_a_pair_per_argument_or_line_with_a_tab(pair_run, tmp_path):
    lines = tmp_path / "pairs.txt"
    lines.write_text("sky\tred fire apple\n\nno tab on this line\nred\tsea leaf grass\n", encoding="utf-8")
    result = CliRunner().invoke(cli.main, ["predict", pair_run.export_dir, "blue\tcherry apple", str(lines),
                                           "--format", "json", "--top-k", "1"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["source"], r["text_a"], r["text_b"]) for r in rows] == [
        ("blue\tcherry apple", "blue", "cherry apple"), (f"{lines}:1", "sky", "red fire apple"),
        (f"{lines}:4", "red", "sea leaf grass")]
    texts = [(r["text_a"], r["text_b"]) for r in rows]
    probs = pair_run.model.predict(tuple(tf.constant(c) for c in zip(*texts)), verbose=0)
    assert [r["classes"][0] for r in rows] == ["warm" if p[0] >= 0.5 else "cool" for p in probs]  # sigmoid: p(warm)
    assert f"skipped {lines}:3: not a pair: put a tab between the two texts" in result.stderr


def test_evaluate_a_pair_run_and_its_export(pair_run):
    for path in (pair_run.run_dir, pair_run.export_dir):
        result = CliRunner().invoke(cli.main, ["evaluate", path, "--format", "json"])
        assert result.exit_code == 0, result.output
        metrics = json.loads(result.output)
        assert metrics["count"] == 12 and metrics["accuracy"] == pytest.approx(pair_run.metrics["accuracy"])


def test_pairs_from_arrays_and_the_errors_a_user_meets(tmp_path, hub_text_module):
    examples, names, _ = load_text_examples(([["a", "b"], ["c", "d"]], ["x", "y"]), "data", text_column=COLUMNS)
    assert examples.texts == [("a", "b"), ("c", "d")] and names == ["x", "y"]
    with pytest.raises(DataError, match=r"data: sentence pairs \('question1' and 'question2'\) need an \[N, 2\] "
                                        r"array of texts \(first, second\); got shape \[2, 3\]"):
        load_text_examples(([["a", "b", "c"], ["d", "e", "f"]], ["x", "y"]), "data", text_column=COLUMNS)
    (tmp_path / "texts" / "warm").mkdir(parents=True)
    with pytest.raises(DataError, match=r"is a folder of single texts, but text_column names two columns"):
        load_text_examples(str(tmp_path / "texts"), "data", text_column=COLUMNS)
    for bad in (["a", "b", "c"], ["a", "a"], ["a", ""]):
        with pytest.raises(ConfigError, match=r"text_column: .* is not valid: use the name of a column of the CSV, "
                                              r"or a list of two different columns for sentence pairs"):
            FinetuneConfig(text_column=bad).validate()
    assert FinetuneConfig().with_overrides(["text_column=[q1, q2]"]).text_column == ["q1", "q2"]
    path = write_pairs(tmp_path / "pairs.csv", pair_rows(8))
    with pytest.raises(ConfigError, match=r"text_column: \['question1', 'question2'\] names two columns \(sentence "
                                          r"pairs\), but a text-embedding module reads one text"):
        tlkeras.build_and_finetune(path, backbone=f"hub:{hub_text_module}", text_column=COLUMNS, **RUN,
                                   output_dir=str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")  # refused before any work
