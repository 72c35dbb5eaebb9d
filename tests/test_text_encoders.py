"""BERT-class text encoders (a KerasHub preset with its tokenizer): raw strings in, the preset's tokenizer
inside the model and its export, the shared contract, truncation counted, the errors a user meets."""

import csv
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

import contract
import tlkeras
from conftest import TEXT_WORDS
from tlkeras import backbones, cli
from tlkeras.config import FinetuneConfig
from tlkeras.errors import BackboneError, ExportError

RUN = {"batch_size": 8, "report": False, "tensorboard": False, "verbose": 0}
STRINGS = ["red fire apple", "blue sky and the sea", "", "words the tokenizer never saw", "CHERRY Fire"]


def review_rows(count: int, seed: int = 0, multi_label: bool = False) -> list[tuple[str, str]]:
    """(text, label) rows of 4 to 9 words: a class's words and filler (multi-label: both classes' words
    in some rows, "|"-separated labels)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        labels = [["warm"], ["cool"], ["cool", "warm"]][i % 3] if multi_label else [list(TEXT_WORDS)[i % 2]]
        words = [str(w) for label in labels for w in rng.choice(TEXT_WORDS[label], 2 + i % 6)]
        rows.append((" ".join(words[:8]) + " the rest", "|".join(labels)))
    return rows


def write_reviews(path, rows) -> str:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reviews")
    return (write_reviews(folder / "train.csv", review_rows(40)),
            write_reviews(folder / "val.csv", review_rows(12, seed=1)))


@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory, bert_preset, reviews):
    """Stage 1 on the frozen encoder (mean over tokens), stage 2 with its top transformer layer."""
    train, val = reviews
    return tlkeras.build_and_finetune(
        train, val_data=val, backbone=f"kerashub:{bert_preset}", **RUN,
        backbone_options={"sequence_length": 8, "pooling": "mean"},
        stage1={"epochs": 10, "learning_rate": 0.05}, stage2={"epochs": 1, "unfreeze": "blocks:1"},
        output_dir=str(tmp_path_factory.mktemp("encoder") / "run"),
    )


def test_the_model_takes_strings_and_tokenises_them_with_the_preset_s_tokenizer(bert_preset):
    import keras_hub

    model = tlkeras.build_model(f"kerashub:{bert_preset}", 2, backbone_options={"sequence_length": 8})
    info = tlkeras.model.model_info(model)
    assert (info.inputs, info.backbone, model.input.dtype) == ("tokens", f"kerashub:{bert_preset}", "string")
    ids = model.get_layer("preprocess")(tf.constant(["red fire the rest", "sky"]))["token_ids"].numpy()
    tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(bert_preset)
    red, fire, sky = (tokenizer.token_to_id(w) for w in ("red", "fire", "sky"))
    the, rest = tokenizer.token_to_id("the"), tokenizer.token_to_id("rest")
    assert ids.tolist() == [[2, red, fire, the, rest, 3, 0, 0], [2, sky, 3, 0, 0, 0, 0, 0]]  # [CLS] ... [SEP] pad
    # the encoder's own weights, loaded from the preset
    preset = keras_hub.models.Backbone.from_preset(bert_preset)
    np.testing.assert_array_equal(model.get_layer("backbone").get_layer("transformer_layer_1").weights[0].numpy(),
                                  preset.get_layer("transformer_layer_1").weights[0].numpy())


def test_a_text_encoder_run_keeps_the_contract(encoder_run, bert_preset, reviews):
    train, val = reviews
    keras.utils.set_random_seed(0)
    initial = contract.backbone_arrays(tlkeras.build_model(f"kerashub:{bert_preset}", 2,
                                                           backbone_options={"sequence_length": 8, "pooling": "mean"}))
    # stage 2 trained exactly the top transformer layer (mean pooling: BERT's pooler is not in the model)
    check_only_the_top_layer_trained(encoder_run, initial)
    contract.check_reload_predicts_identically(encoder_run, tf.constant(STRINGS))
    contract.check_export_answers_as_the_model(encoder_run, {"text": tf.constant(STRINGS)}, tf.constant(STRINGS))


def test_a_distilbert_run_keeps_the_contract(tmp_path, distilbert_preset, reviews):
    """DistilBERT: no segment ids and no pooler; stage 2 trains exactly its top transformer layer (mean pooling,
    as the BERT run: a random tiny encoder's first token carries too little), the export takes raw strings."""
    train, val = reviews
    options = {"sequence_length": 8, "pooling": "mean"}
    keras.utils.set_random_seed(0)
    initial = contract.backbone_arrays(tlkeras.build_model(f"kerashub:{distilbert_preset}", 2,
                                                           backbone_options=options))
    result = tlkeras.build_and_finetune(
        train, val_data=val, backbone=f"kerashub:{distilbert_preset}", **RUN, backbone_options=options,
        stage1={"epochs": 10, "learning_rate": 0.05}, stage2={"epochs": 1, "unfreeze": "blocks:1"},
        restore_best=False, output_dir=str(tmp_path / "run"))
    packed = result.model.get_layer("preprocess")(tf.constant(["red fire"]))
    assert sorted(packed) == ["padding_mask", "token_ids"]  # what DistilBERT takes
    check_only_the_top_layer_trained(result, initial)
    contract.check_export_answers_as_the_model(result, {"text": tf.constant(STRINGS)}, tf.constant(STRINGS))


def check_only_the_top_layer_trained(result, initial):
    """Stage 2 with blocks:1 listed and changed exactly the top transformer layer, and the run learned the task."""
    with open(os.path.join(result.run_dir, "stage2_trainable_layers.txt"), encoding="utf-8") as f:
        assert f.read().split() == ["transformer_layer_1"]
    moved = contract.changed_weights(initial, contract.backbone_arrays(result.model))
    units = contract.trainable_units(result.model)
    assert {units[path] for path in moved} == {"transformer_layer_1"}
    assert result.metrics["accuracy"] >= 0.75, result.metrics


def test_stage_1_leaves_the_encoder_bit_identical_and_pairs_with_multi_label(tmp_path, bert_preset):
    path = write_reviews(tmp_path / "tags.csv", review_rows(36, multi_label=True))
    keras.utils.set_random_seed(0)
    initial = contract.backbone_arrays(tlkeras.build_model(f"kerashub:{bert_preset}", 2, task="multi_label"))
    result = tlkeras.build_and_finetune(path, backbone=f"kerashub:{bert_preset}", **RUN, label_separator="|",
                                        stage1={"epochs": 2, "learning_rate": 0.05}, stage2={"epochs": 0},
                                        output_dir=str(tmp_path / "run"))
    info = tlkeras.model.model_info(result.model)
    assert (info.task, info.inputs, info.class_names) == ("multi_label", "tokens", ["cool", "warm"])
    contract.check_stage1_leaves_backbone(initial, result)
    served = contract.check_export_answers_as_the_model(result, {"text": tf.constant(STRINGS)}, tf.constant(STRINGS))
    assert served["labels"].shape == (5, 2)


def test_texts_longer_than_the_sequence_length_are_counted(encoder_run, reviews, caplog):
    import logging
    from types import SimpleNamespace

    from tlkeras.inputs.tokens import TokenizedTextInputs

    texts = [row[0] for row in review_rows(40)]
    # every word is one WordPiece token; [CLS] and [SEP] take 2 of the 8 places
    expected = sum(len(text.split()) > 6 for text in texts)
    assert 0 < expected < len(texts)
    with open(os.path.join(encoder_run.run_dir, "run.json"), encoding="utf-8") as f:
        facts = json.load(f)["inputs"]
    assert facts == {"sequence_length": 8, "truncated_train_texts": expected, "train_texts": 40}
    logging.getLogger("tlkeras").propagate = True
    with caplog.at_level(logging.INFO, logger="tlkeras"):
        again = TokenizedTextInputs().data_facts(encoder_run.model, SimpleNamespace(train_examples=SimpleNamespace(
            texts=texts)))
    assert again == facts
    assert f"data: {expected} of 40 training texts are longer than 8 tokens and are cut" in caplog.text


def test_a_text_encoder_trains_with_its_own_defaults_where_the_config_is_silent(encoder_run):
    """ENCODER_TRAINING_DEFAULTS fill what the run was not given; what it was given (stage 1's epochs and rate,
    the stage 2 extent) is kept; run.json says what ran, and the pooling default is the mean over tokens."""
    from tlkeras.text_layers import DEFAULT_POOLING, ENCODER_TRAINING_DEFAULTS

    with open(os.path.join(encoder_run.run_dir, "run.json"), encoding="utf-8") as f:
        config = json.load(f)["config"]
    assert (config["stage1"]["epochs"], config["stage1"]["learning_rate"]) == (10, 0.05)  # given: kept
    assert config["stage2"]["unfreeze"] == "blocks:1" and config["stage2"]["epochs"] == 1
    assert config["stage2"]["learning_rate"] == ENCODER_TRAINING_DEFAULTS["stage2.learning_rate"]  # not given
    assert config["stage2"]["optimizer"] == "adam"  # no text default: the general one
    assert ENCODER_TRAINING_DEFAULTS["stage2.learning_rate"] != FinetuneConfig().stage2_learning_rate
    assert DEFAULT_POOLING == "mean"
    assert backbones.resolve(encoder_run.config.backbone, {"sequence_length": 8}).options["pooling"] == "mean"


def test_the_export_carries_the_tokenizer_and_says_what_loading_it_needs(encoder_run, uninstalled):
    with open(os.path.join(encoder_run.export_dir, "assets", "model_card.json"), encoding="utf-8") as f:
        card = json.load(f)
    assert card["serving_imports"] == ["tensorflow_text"]
    assert "TF Serving's model server links them" in card["serving_note"]
    assert "BertTokenizer" in card["preprocessing"] and "8 tokens per text" in card["preprocessing"]
    # predict on the export answers as the model
    rows = tlkeras.predict(encoder_run.export_dir, STRINGS[:2]).rows
    expected = encoder_run.model.predict(tf.constant(STRINGS[:2]), verbose=0)[:, 0] >= 0.5  # sigmoid: p(warm)
    assert [row["classes"][0] for row in rows] == ["warm" if e else "cool" for e in expected]
    uninstalled("tensorflow_text")
    with pytest.raises(ExportError, match=r"tokenises text with tensorflow-text ops, which are not installed: "
                                          r"pip install \"tlkeras\[text\]\""):
        tlkeras.predict(encoder_run.export_dir, STRINGS[:1])


def test_tflite_and_onnx_are_refused_for_a_text_encoder(encoder_run):
    result = CliRunner().invoke(cli.main, ["export", encoder_run.run_dir, "--format", "tflite"])
    assert result.exit_code != 0
    assert "a text classifier exports as a SavedModel only" in result.output


def test_text_encoder_errors_say_what_to_do(tmp_path, bert_preset):
    import keras_hub

    with pytest.raises(BackboneError, match=r"backbone_options.sequence_length: 64 is not valid; use an integer "
                                            r"from 3 to 32, the encoder's maximum"):
        backbones.resolve(f"kerashub:{bert_preset}", {"sequence_length": 64})
    with pytest.raises(BackboneError, match=r"backbone_options.pooling: 'max' is not one of pooled, first, mean"):
        backbones.resolve(f"kerashub:{bert_preset}", {"pooling": "max"})
    with pytest.raises(BackboneError, match=r"backbone_options: alpha do not apply to a KerasHub text encoder"):
        backbones.resolve(f"kerashub:{bert_preset}", {"alpha": 1})
    bare = keras_hub.models.BertBackbone(vocabulary_size=10, num_layers=1, num_heads=1, hidden_dim=4,
                                         intermediate_dim=4, max_sequence_length=8)
    bare.save_to_preset(str(tmp_path / "bare"))
    with pytest.raises(BackboneError, match=r"is a BertBackbone \(a text encoder\) but its tokenizer could not be "
                                            r"loaded .*save it to the same folder"):
        backbones.resolve(f"kerashub:{tmp_path / 'bare'}")


# === The rest of the pipeline works for text encoders as for images ===


def test_a_text_encoder_trains_on_two_replicas_as_on_one_device(tmp_path, still_bert, reviews):
    """The own tf.distribute loop (2 logical CPUs) with raw strings in the pipeline and stage 2 on the top
    transformer layer at layer-wise rates: the same global batch (one batch per epoch) as on one device, the
    same run (no dropout, whose draws differ between replicas)."""
    train, val = reviews
    options = {**RUN, "data": train, "val_data": val, "backbone": f"kerashub:{still_bert}", "export": False,
               "backbone_options": {"sequence_length": 8, "pooling": "mean"}, "head": {"dropout": 0.0},
               "stage1": {"epochs": 2, "learning_rate": 0.05}, "stage2": {"epochs": 2, "unfreeze": "blocks:1"}}
    one = tlkeras.build_and_finetune(**{**options, "batch_size": 40}, strategy="default", output_dir=str(tmp_path / "a"))
    two = tlkeras.build_and_finetune(**{**options, "batch_size": 20}, strategy="mirrored",
                                     output_dir=str(tmp_path / "b"))
    with open(os.path.join(two.run_dir, "run.json"), encoding="utf-8") as f:
        assert json.load(f)["devices"]["replicas"] == 2
    assert two.history["epoch"] == [1, 2, 3, 4] and two.history["stage"] == [1, 1, 2, 2]
    np.testing.assert_allclose(two.history["val_loss"], one.history["val_loss"], rtol=1e-4)
    for x, y in zip(one.model.get_weights(), two.model.get_weights()):
        np.testing.assert_allclose(y, x, atol=1e-4)


def test_mixed_precision_the_report_and_the_lr_finder_on_a_text_encoder(tmp_path, bert_preset, reviews):
    train, val = reviews
    options = {"backbone": f"kerashub:{bert_preset}", "backbone_options": {"sequence_length": 8, "pooling": "mean"}}
    result = tlkeras.build_and_finetune(
        train, val_data=val, **options, **{**RUN, "report": True}, mixed_precision="mixed_bfloat16",
        stage1={"epochs": 2, "learning_rate": 0.05}, stage2={"epochs": 1, "unfreeze": "blocks:1"},
        output_dir=str(tmp_path / "mp"))
    encoder = result.model.get_layer("backbone")
    assert encoder.get_layer("transformer_layer_1").compute_dtype == "bfloat16"
    assert result.model.get_layer("predictions").compute_dtype == "float32"
    assert np.isfinite(result.history["loss"]).all() and result.history["stage"] == [1, 1, 2]
    contract.check_export_answers_as_the_model(result, {"text": tf.constant(STRINGS)}, tf.constant(STRINGS))
    for name in ("training_curves.png", "confusion_matrix.png", "report.html"):
        assert os.path.getsize(os.path.join(result.run_dir, name)) > 1000, name
    with open(os.path.join(result.run_dir, "report.html"), encoding="utf-8") as f:
        assert "truncated_train_texts" in f.read()  # the encoder's input facts are in the report
    found = tlkeras.find_learning_rate(train, **options, batch_size=8, stage=1, steps=20, min_lr=1e-5, max_lr=1.0,
                                       output=str(tmp_path / "lr.png"))
    assert 1e-5 <= found.suggestion <= 1.0 and os.path.isfile(found.plot)
    assert np.isfinite(found.losses).all() and max(found.losses) - min(found.losses) > 0.01, found.losses
