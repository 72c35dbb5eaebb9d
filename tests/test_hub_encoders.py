"""TF Hub's BERT pair (`backbone: hub:<encoder>` with `backbone_options.preprocessor: hub:<preprocessing
model>`): raw strings in through the preprocessing model's own tokenize and bert_pack_inputs, the encoder's
transformer layers as blocks, the shared contract, sentence pairs, and the errors a user meets."""

import json
import os
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

import contract
import tlkeras
from test_text_encoders import RUN, STRINGS, review_rows, write_reviews
from test_text_pairs import COLUMNS, PAIRS, pair_rows, write_pairs
from tlkeras import backbones, cli, freezing, lora
from tlkeras.config import StageConfig
from tlkeras.errors import BackboneError
from tlkeras.freezing import unfreeze_phases

MEAN = {"sequence_length": 16, "pooling": "mean"}
LAYER_1 = [f"transformer/layer_1/{name}" for name in (
    "self_attention/query/kernel", "self_attention/query/bias", "self_attention/key/kernel", "self_attention/key/bias",
    "self_attention/value/kernel", "self_attention/value/bias", "self_attention/attention_output/kernel",
    "self_attention/attention_output/bias", "self_attention_layer_norm/gamma", "self_attention_layer_norm/beta",
    "intermediate/kernel", "intermediate/bias", "output/kernel", "output/bias", "output_layer_norm/gamma",
    "output_layer_norm/beta")]
POOLER = ["pooler_transform/kernel", "pooler_transform/bias"]


def options(hub_bert, **extra) -> dict:
    return {"backbone": f"hub:{hub_bert['encoder']}",
            "backbone_options": {"preprocessor": f"hub:{hub_bert['preprocessor']}", **MEAN, **extra}}


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub_reviews")
    return (write_reviews(folder / "train.csv", review_rows(40)),
            write_reviews(folder / "val.csv", review_rows(12, seed=1)))


@pytest.fixture(scope="module")
def hub_run(tmp_path_factory, hub_bert, reviews):
    """Stage 1 on the frozen encoder (mean over tokens), stage 2 with its top transformer layer."""
    train, val = reviews
    return tlkeras.build_and_finetune(
        train, val_data=val, **options(hub_bert), **RUN, stage1={"epochs": 10, "learning_rate": 0.05},
        stage2={"epochs": 1, "unfreeze": "blocks:1"}, output_dir=str(tmp_path_factory.mktemp("hub_encoder") / "run"))


def test_strings_go_through_the_preprocessing_model_and_the_encoder_keeps_its_weights(hub_bert):
    model = tlkeras.build_model(num_classes=2, **options(hub_bert, pooling="pooled"))
    info = tlkeras.model.model_info(model)
    assert (info.inputs, info.source, model.input.dtype) == ("tokens", "tensorflow hub", "string")
    packed = model.get_layer("preprocess")(tf.constant(["Red fire the rest", "sky"]))
    # the preprocessing model itself, called as TF Hub's documentation calls it
    preprocessor = tf.saved_model.load(hub_bert["preprocessor"])
    expected = preprocessor.bert_pack_inputs([preprocessor.tokenize(tf.constant(["Red fire the rest", "sky"]))],
                                             seq_length=16)
    for key in ("input_word_ids", "input_mask", "input_type_ids"):
        np.testing.assert_array_equal(packed[key].numpy(), expected[key].numpy())
    vocabulary = [line.strip() for line in open(os.path.join(hub_bert["preprocessor"], "assets", "vocab.txt"))]
    assert packed["input_word_ids"].numpy()[0, :6].tolist() == [vocabulary.index(t) for t in (
        "[CLS]", "red", "fire", "the", "rest", "[SEP]")]
    # the encoder's own pooled output, from the module's own weights
    encoder = tf.saved_model.load(hub_bert["encoder"])
    np.testing.assert_allclose(model.get_layer("backbone")(packed).numpy(),
                               encoder(dict(packed), training=False)["pooled_output"].numpy(), atol=1e-6)


def test_a_hub_encoder_run_keeps_the_contract(hub_run, hub_bert):
    keras.utils.set_random_seed(0)
    initial = contract.backbone_arrays(tlkeras.build_model(num_classes=2, **options(hub_bert)))
    with open(os.path.join(hub_run.run_dir, "stage2_trainable_layers.txt"), encoding="utf-8") as f:
        trained = f.read().split()
    # blocks:1 is the top transformer layer; the pooler (unused with mean pooling) joins it
    assert trained == LAYER_1 + POOLER
    moved = contract.changed_weights(initial, contract.backbone_arrays(hub_run.model))
    units = contract.trainable_units(hub_run.model)
    assert {units[path] for path in moved} == set(LAYER_1)
    assert hub_run.metrics["accuracy"] >= 0.75, hub_run.metrics
    contract.check_reload_predicts_identically(hub_run, tf.constant(STRINGS))
    contract.check_export_answers_as_the_model(hub_run, {"text": tf.constant(STRINGS)}, tf.constant(STRINGS))
    with open(os.path.join(hub_run.export_dir, "assets", "model_card.json"), encoding="utf-8") as f:
        card = json.load(f)
    assert card["serving_imports"] == ["tensorflow_text"]
    assert f"the TF Hub preprocessing model hub:{hub_bert['preprocessor']}" in card["preprocessing"]
    # the export carries the preprocessing model's vocabulary; the run's folder of it is not needed to serve
    assert os.path.isfile(os.path.join(hub_run.export_dir, "assets", "vocab.txt"))


def test_texts_longer_than_the_sequence_length_are_counted(hub_run):
    with open(os.path.join(hub_run.run_dir, "run.json"), encoding="utf-8") as f:
        facts = json.load(f)["inputs"]
    # one word piece per word; [CLS] and [SEP] take 2 of the 16 places
    expected = sum(len(text.split()) > 14 for text, _ in review_rows(40))
    assert facts == {"sequence_length": 16, "truncated_train_texts": expected, "train_texts": 40}
    packer = hub_run.model.get_layer("preprocess")
    assert packer.truncated(["red " * 14, "red " * 15, "sky"]) == 1
    assert packer.truncated([("red " * 6, "sky " * 7), ("red " * 7, "sky " * 7)]) == 1  # [CLS] a [SEP] b [SEP]


def test_blocks_layer_wise_rates_and_gradual_unfreezing_follow_the_transformer_layers(hub_bert):
    model = tlkeras.build_model(num_classes=2, **options(hub_bert))
    units = freezing.trainable_units(model)
    blocks = units.blocks()
    assert [len(block) for block in blocks] == [5, 16, 18]  # embeddings; layer 0; layer 1 and the pooler
    assert blocks[1][0] == "transformer/layer_0/self_attention/query/kernel" and blocks[2] == LAYER_1 + POOLER
    plan = freezing.unfreeze(model, "blocks:2")
    assert plan.layers == blocks[1] + blocks[2] and plan.unit == "hub module variable"
    factors = freezing.layer_multipliers(model, 0.5)
    named = dict((name, weight) for name, weight, _ in freezing.hub_module(model).named_variables())
    assert factors[named["pooler_transform/kernel"].path] == 0.5
    assert factors[named["transformer/layer_0/output/kernel"].path] == 0.25
    assert factors[named["word_embeddings/embeddings"].path] == 0.125
    phases = unfreeze_phases(model, StageConfig(epochs=4, unfreeze="all", gradual_unfreeze=1))
    assert phases == [(18, 1), (34, 1), (39, 2)]  # one transformer layer more each epoch, then the embeddings


def test_sentence_pairs_through_the_hub_preprocessing_model_from_the_command_line(tmp_path, hub_bert):
    train = write_pairs(tmp_path / "train.csv", pair_rows(40))
    val = write_pairs(tmp_path / "val.csv", pair_rows(12, seed=1))
    run_dir = str(tmp_path / "run")
    settings = {"backbone_options.preprocessor": f"hub:{hub_bert['preprocessor']}", "backbone_options.pooling": "mean",
                "backbone_options.sequence_length": "16", "text_column": "[question1, question2]",
                "stage1.epochs": "10", "stage1.learning_rate": "0.05", "stage2.epochs": "0", "report": "false",
                "tensorboard": "false"}
    result = CliRunner().invoke(cli.main, ["train", "--data", train, "--val-data", val, "--backbone",
                                           f"hub:{hub_bert['encoder']}", "--batch-size", "8", "--output-dir", run_dir,
                                           *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")]])
    assert result.exit_code == 0, result.output
    model = tlkeras.load_model(os.path.join(run_dir, "model.keras"))
    packed = model.get_layer("preprocess")((tf.constant(["red fire"]), tf.constant(["sky"])))
    ids, types = packed["input_word_ids"].numpy()[0], packed["input_type_ids"].numpy()[0]
    vocabulary = [line.strip() for line in open(os.path.join(hub_bert["preprocessor"], "assets", "vocab.txt"))]
    assert ids[:6].tolist() == [vocabulary.index(t) for t in ("[CLS]", "red", "fire", "[SEP]", "sky", "[SEP]")]
    assert types[:7].tolist() == [0, 0, 0, 0, 1, 1, 0]
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
        assert json.load(f)["accuracy"] >= 0.75  # the label is in the second text only
    run = SimpleNamespace(model=model, run_dir=run_dir, export_dir=os.path.join(run_dir, "export", "1"),
                          class_names=tlkeras.model.model_info(model).class_names)
    model_inputs = tuple(tf.constant(column) for column in zip(*PAIRS))
    contract.check_export_answers_as_the_model(run, {"text_a": model_inputs[0], "text_b": model_inputs[1]},
                                               model_inputs)


def test_hub_encoder_errors_say_what_to_do(hub_bert, hub_image_module, hub_text_module, uninstalled):
    encoder, preprocessor = f"hub:{hub_bert['encoder']}", f"hub:{hub_bert['preprocessor']}"
    with pytest.raises(BackboneError, match=r"is a Transformer text encoder \(it takes input_word_ids, input_mask "
                                            r"and input_type_ids\); give its preprocessing model with "
                                            r"backbone_options.preprocessor"):
        backbones.resolve(encoder)
    with pytest.raises(BackboneError, match=r"backbone_options.preprocessor: hub:.*text_module is not a BERT "
                                            r"preprocessing model \(it has no tokenize and bert_pack_inputs\)"):
        backbones.resolve(encoder, {"preprocessor": hub_text_module})
    with pytest.raises(BackboneError, match=r"backbone_options.sequence_length: 64 is not valid; use an integer from "
                                            r"3 to 32, the encoder's maximum"):
        backbones.resolve(encoder, {"preprocessor": preprocessor, "sequence_length": 64})
    with pytest.raises(BackboneError, match=r"backbone_options.pooling: 'max' is not one of pooled, first, mean"):
        backbones.resolve(encoder, {"preprocessor": preprocessor, "pooling": "max"})
    with pytest.raises(BackboneError, match=r"backbone_options: pooling, preprocessor apply to a Transformer text "
                                            r"encoder \(token ids in\), and hub:.* takes images; remove them"):
        backbones.resolve(f"hub:{hub_image_module}", {"preprocessor": preprocessor, "pooling": "mean"})
    # a missing preprocessing folder is found before TensorFlow loads anything
    with pytest.raises(BackboneError, match=r"backbone: hub:/no/such/preprocess is neither a URL nor an existing "
                                            r"folder"):
        backbones.peek(encoder, {"preprocessor": "hub:/no/such/preprocess"})
    model = tlkeras.build_model(num_classes=2, **options(hub_bert))
    with pytest.raises(BackboneError, match=r"stage2.lora_targets: the backbone has no layer that takes LoRA adapters"):
        lora.find_targets(model)
    uninstalled("tensorflow_text")
    with pytest.raises(BackboneError, match=r"runs TensorFlow Text ops, and tensorflow-text is not installed: "
                                            r"pip install \"tlkeras\[text\]\""):
        backbones.resolve(encoder, {"preprocessor": preprocessor})
