"""Stage-2 methods (`tlkeras.methods`): the registry agrees with the config's choices, and BitFit keeps the
contract every method keeps - only what it says trains changes (bias terms and the head), the run resumes to the
same model, model.keras and the export answer as the trained model - and refuses, before training, a backbone
whose unfrozen layers hold no bias."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import contract
import tlkeras
from conftest import TINY, CtrlC
from test_lora import TEXTS, lora_options  # noqa: F401  (the tiny reviews on the BERT without dropout)
from tlkeras import config, methods
from tlkeras.methods.bitfit import is_bias


def test_the_registry_and_the_config_name_the_same_methods():
    assert list(methods.METHODS) == list(config.METHODS)
    assert all(method.name == name for name, method in methods.METHODS.items())


@pytest.fixture(scope="module")
def bitfit_options(lora_options):  # noqa: F811
    return {**lora_options, "stage2": {"epochs": 3, "method": "bitfit", "learning_rate": 0.05}}


@pytest.fixture(scope="module")
def bitfit_run(tmp_path_factory, bitfit_options):
    return tlkeras.build_and_finetune(**bitfit_options, output_dir=str(tmp_path_factory.mktemp("bitfit") / "run"))


def _changed(model, original: dict) -> list[str]:
    return sorted(w.path for w in model.get_layer("backbone").weights if not np.array_equal(w.numpy(), original[w.path]))


def test_bitfit_trains_only_the_bias_terms_of_a_text_encoder(bitfit_run, still_bert):
    import keras_hub

    preset = keras_hub.models.Backbone.from_preset(still_bert)
    original = {w.path: w.numpy() for w in preset.weights}
    biases = sorted(w.path for w in preset.weights if w.path.rsplit("/", 1)[-1] in ("bias", "beta"))
    changed = _changed(bitfit_run.model, original)
    assert changed and set(changed) <= set(biases)  # no kernel, no embedding, no LayerNorm gamma moved
    assert len(changed) > len(biases) // 2  # and the biases did train, throughout the encoder
    with open(os.path.join(bitfit_run.run_dir, "stage2_trainable_layers.txt"), encoding="utf-8") as f:
        units = f.read().split("\n")
    # the encoder's layers and the embeddings' LayerNorm (its beta); never the look-up tables, which hold no bias
    assert units == ["embeddings_layer_norm (biases)", "transformer_layer_0 (biases)", "transformer_layer_1 (biases)", ""]
    assert bitfit_run.history["stage"] == [1, 1, 2, 2, 2]


def test_a_bitfit_model_reloads_and_exports_as_trained(bitfit_run):
    texts = tf.constant(TEXTS)
    contract.check_reload_predicts_identically(bitfit_run, texts)
    contract.check_export_answers_as_the_model(bitfit_run, {"text": texts}, texts)


def test_a_bitfit_run_killed_in_stage_2_resumes_to_the_same_model(tmp_path, bitfit_run, bitfit_options):
    with pytest.raises(tlkeras.errors.Interrupted):
        tlkeras.build_and_finetune(**bitfit_options, output_dir=str(tmp_path / "run"), callbacks=[CtrlC((2, 4))])
    resumed = tlkeras.build_and_finetune(**bitfit_options, output_dir=str(tmp_path / "run"), resume=True)
    assert resumed.history["epoch"] == bitfit_run.history["epoch"] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(resumed.history["loss"], bitfit_run.history["loss"], rtol=1e-4)
    np.testing.assert_allclose(resumed.model.predict(tf.constant(TEXTS), verbose=0),
                               bitfit_run.model.predict(tf.constant(TEXTS), verbose=0), atol=1e-5)


def test_bitfit_on_layers_without_a_bias_is_refused_before_training(tmp_path, tiny, image_folder):
    with pytest.raises(tlkeras.errors.BackboneError) as caught:
        tlkeras.build_and_finetune(image_folder, **tiny, verbose=0, stage1={"epochs": 1},
                                   stage2={"epochs": 1, "method": "bitfit"}, output_dir=str(tmp_path / "run"))
    message = str(caught.value)
    assert message.startswith("stage2.method: bitfit: the layers stage2.unfreeze=") and "hold no bias term" in message
    assert "stage2.train_bn: true" in message and "\n" not in message
    assert not os.path.exists(tmp_path / "run" / "history.json")  # refused before the first epoch


def test_bitfit_with_train_bn_trains_batch_normalization_and_no_kernel(tmp_path, tiny, image_folder):
    keras.utils.set_random_seed(0)
    initial = contract.backbone_arrays(tlkeras.build_model(TINY["backbone"], 3, image_size=32, weights=tiny["weights"],
                                                           backbone_options=TINY["backbone_options"]))
    result = tlkeras.build_and_finetune(image_folder, **tiny, verbose=0, export=False, restore_best=False,
                                        stage1={"epochs": 1}, output_dir=str(tmp_path / "run"),
                                        stage2={"epochs": 1, "method": "bitfit", "train_bn": True,
                                                "unfreeze": "blocks:2"})
    moved = contract.changed_weights(initial, contract.backbone_arrays(result.model))
    kinds = {path.rsplit("/", 1)[-1] for path in moved}
    assert moved and kinds <= {"gamma", "beta", "moving_mean", "moving_variance"}  # no kernel moved
    assert {"gamma", "beta"} <= kinds
    layers = {path.split("/")[0] for path in moved}
    assert all(name.startswith(("block_15", "block_16", "Conv_1")) for name in layers), sorted(layers)


def test_is_bias_reads_keras_and_hub_module_names():
    dense = keras.layers.Dense(2)
    dense.build((None, 3))
    norm = keras.layers.LayerNormalization()
    norm.build((None, 3))
    assert [is_bias(w) for w in [*dense.weights, *norm.weights]] == [False, True, False, True]
    hub_variable = tf.Variable([0.0], name="encoder/layer_0/attention/query/bias")
    assert is_bias(hub_variable)
