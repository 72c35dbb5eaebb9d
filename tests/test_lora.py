"""LoRA in stage 2: only the adapters and the head train, they fold into plain kernels for model.keras
and the export, the adapters file rebuilds the model from its base, and a backbone without targets
is refused before any work."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import contract
import tlkeras
from conftest import TINY, CtrlC
from test_text_encoders import review_rows, write_reviews
from tlkeras import lora
from tlkeras.errors import BackboneError

TEXTS = ["red fire apple", "blue sky and the sea", "cherry fire the rest"]


def _toy_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    backbone = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, name="query"),
                                 keras.layers.Dense(6, name="other")], name="backbone")
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(backbone(inputs)))


def test_adapters_start_at_zero_train_alone_and_fold_into_plain_kernels(tmp_path):
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    y = np.arange(16) % 2
    model, base = _toy_model(), _toy_model()
    before = model.predict(x, verbose=0)
    query, other = (model.get_layer("backbone").get_layer(n) for n in ("query", "other"))
    base_kernel, other_kernel = query.kernel.numpy().copy(), other.kernel.numpy().copy()

    plan = lora.enable_lora(model, rank=2, alpha=4)
    np.testing.assert_array_equal(model.predict(x, verbose=0), before)  # the adapters start at zero
    assert lora.enable_lora(model, rank=2, alpha=4) is plan  # twice: the same adapters
    lora.train_adapters(model)
    trains = {v.path for v in model.trainable_weights}
    assert trains == {query.lora_kernel_a.path, query.lora_kernel_b.path, "head/kernel", "head/bias"}
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=3, verbose=0)
    trained = model.predict(x, verbose=0)
    assert np.abs(trained - before).max() > 1e-3
    np.testing.assert_array_equal(query._kernel.numpy(), base_kernel)  # the base kernel itself stays
    np.testing.assert_array_equal(other.kernel.numpy(), other_kernel)

    path = str(tmp_path / "adapters.npz")
    assert lora.merge_lora(model, path).targets == ["query"]
    assert not query.lora_enabled and not any("lora" in v.path for v in model.weights)
    assert len(model.weights) == len(base.weights)
    np.testing.assert_allclose(model.predict(x, verbose=0), trained, atol=1e-5)  # plain kernels, same answers
    assert "lora_rank" not in json.dumps(model.get_config())
    model.save(tmp_path / "m.keras")
    np.testing.assert_allclose(keras.saving.load_model(tmp_path / "m.keras").predict(x, verbose=0), trained, atol=1e-5)

    applied = lora.apply_adapters(base, path)  # the base model again, plus the small file
    assert (applied.rank, applied.alpha, applied.targets) == (2, 4.0, ["query"])
    np.testing.assert_allclose(base.predict(x, verbose=0), trained, atol=1e-5)
    assert os.path.getsize(path) < 4096


def test_a_backbone_without_the_target_layers_is_refused_naming_the_layers_it_has(tmp_path, tiny_model, image_folder):
    with pytest.raises(BackboneError) as caught:
        lora.find_targets(tiny_model)
    message = str(caught.value)
    assert message.startswith("stage2.lora_targets: no backbone layer matches 'query', 'value'")
    assert "the attention query/value projections, the default" in message and "Conv1" in message
    assert "use stage2.method: full" in message
    # the same from build_and_finetune, before the run directory is written
    with pytest.raises(BackboneError, match="no backbone layer matches 'query'"):
        tlkeras.build_and_finetune(image_folder, **TINY, weights=None, stage2={"method": "lora"},
                                   output_dir=str(tmp_path / "run"), verbose=0)
    assert not os.path.exists(tmp_path / "run" / "config.yaml")
    # Keras 3 convolutions take adapters too: named, they are found
    assert [path for path, _ in lora.find_targets(tiny_model, ["Conv_*"])] == ["Conv_1"]
    with pytest.raises(tlkeras.errors.ConfigError, match="stage1.method: 'lora' does not apply"):
        tlkeras.config.stage_configs({"method": "lora"}, None)



def test_a_rank_above_the_kernels_is_refused_and_an_unfreeze_lora_ignores_is_said(tmp_path, image_folder, caplog):
    # Conv_1 of the tiny MobileNetV2 is a 1x1 kernel of 112 -> 1280: a rank above 112 changes it no more
    options = dict(**TINY, weights=None, output_dir=str(tmp_path / "run"), verbose=0)
    with pytest.raises(BackboneError, match=r"^stage2.lora_rank: 100000 is above the smallest dimension of the kernels "
                                            r"it adapts \(Conv_1: 112 x 1280\): a rank-112 adapter already changes it "
                                            r"fully; use at most 112"):
        tlkeras.build_and_finetune(image_folder, **options, stage2={"method": "lora", "lora_targets": ["Conv_1"],
                                                                    "lora_rank": 100000})
    assert not os.path.exists(tmp_path / "run" / "config.yaml")
    # an unfreeze given with LoRA is said to have no effect (a resumed run's saved config holds every key: no line)
    with caplog.at_level("WARNING", logger="tlkeras"), pytest.raises(BackboneError, match="no backbone layer"):
        tlkeras.build_and_finetune(image_folder, **options, stage2={"method": "lora", "unfreeze": 0.3})
    assert "stage2.unfreeze: 0.3 has no effect with stage2.method: lora" in caplog.text


@pytest.fixture(scope="module")
def lora_options(tmp_path_factory, still_bert):
    folder = tmp_path_factory.mktemp("lora_reviews")
    train = write_reviews(folder / "train.csv", review_rows(32))
    val = write_reviews(folder / "val.csv", review_rows(8, seed=1))
    return dict(data=train, val_data=val, backbone=f"kerashub:{still_bert}", batch_size=32, report=False,
                tensorboard=False, verbose=0, backbone_options={"sequence_length": 8}, head={"dropout": 0.0},
                restore_best=False,
                stage1={"epochs": 2, "learning_rate": 0.05},
                stage2={"epochs": 3, "method": "lora", "lora_rank": 2, "learning_rate": 0.05})


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, lora_options):
    return tlkeras.build_and_finetune(**lora_options, output_dir=str(tmp_path_factory.mktemp("lora") / "run"))


def test_lora_on_a_text_encoder_changes_only_the_query_and_value_kernels(lora_run, lora_options, still_bert):
    import keras_hub

    preset = keras_hub.models.Backbone.from_preset(still_bert)
    original = {w.path: w.numpy() for w in preset.weights}
    changed = sorted(w.path for w in lora_run.model.get_layer("backbone").weights
                     if not np.array_equal(w.numpy(), original[w.path]))
    assert changed == [f"transformer_layer_{i}/self_attention_layer/{p}/kernel" for i in (0, 1) for p in ("query", "value")]
    with open(os.path.join(lora_run.run_dir, "run.json"), encoding="utf-8") as f:
        run = json.load(f)
    record = run["lora"]
    # below the lowest adapted layer there are only the embeddings: not worth caching (look-ups, no matrix product)
    assert "stage 2 runs the whole model (below the cut only embeddings are looked up" in run["caching"]
    adapters = 2 * 2 * (16 * 2 * 2 + 2 * 8)  # 2 layers x (query, value) x (A: hidden x heads x rank, B: rank x head_dim)
    assert (record["rank"], record["adapter_params"], record["file"]) == (2, adapters, "lora_adapters.npz")
    assert record["trainable_params"] == adapters + record["head_params"] and 0 < record["trainable_share"] < 0.1
    with open(os.path.join(lora_run.run_dir, "stage2_trainable_layers.txt"), encoding="utf-8") as f:
        assert f.read().splitlines()[0] == "transformer_layer_0/self_attention_layer/query (LoRA adapters)"


def test_every_layer_on_a_text_encoder_adapts_its_kernels_and_names_the_tables_it_passes_over(still_bert, caplog):
    model = tlkeras.build_model(f"kerashub:{still_bert}", 2, backbone_options={"sequence_length": 8})
    plan = lora.enable_lora(model, rank=2, targets=["*"])  # was: a traceback (an embedding table has no kernel)
    assert len(plan.targets) == 12 and all("embedding" not in path for path in plan.targets)  # 2 layers x 6 kernels
    assert "stage2.lora_targets: 2 embedding table(s) matched (token_embedding, segment_embedding) and get no " \
           "adapters" in caplog.text


def test_stage_2_caches_activations_only_above_a_bottom_that_computes(lora_run):
    from tlkeras import caching, freezing

    names = [layer.name for layer in freezing.backbone_layers(lora_run.model)]
    first, second = names.index("transformer_layer_0"), names.index("transformer_layer_1")
    # LoRA on every layer's attention: the embeddings alone below; on the top layer's only: a transformer layer below
    assert not caching.computes_below(lora_run.model, first) and caching.computes_below(lora_run.model, second)


def test_model_keras_the_export_and_the_adapters_file_all_answer_as_the_trained_model(lora_run, still_bert):
    expected = lora_run.model.predict(tf.constant(TEXTS), verbose=0)
    contract.check_reload_predicts_identically(lora_run, tf.constant(TEXTS))
    contract.check_export_answers_as_the_model(lora_run, {"text": tf.constant(TEXTS)}, tf.constant(TEXTS))
    reloaded = keras.models.load_model(os.path.join(lora_run.run_dir, "model.keras"))
    assert not any("lora" in w.path for w in reloaded.weights)  # plain kernels
    loaded = tf.saved_model.load(lora_run.export_dir)
    variables = loaded.signatures["serving_default"].variables
    assert variables and not any("lora" in v.name for v in variables)
    base = tlkeras.build_model(f"kerashub:{still_bert}", 2, backbone_options={"sequence_length": 8})
    lora.apply_adapters(base, os.path.join(lora_run.run_dir, "lora_adapters.npz"))
    np.testing.assert_allclose(base.predict(tf.constant(TEXTS), verbose=0), expected, atol=1e-5)


def test_a_lora_run_killed_in_stage_2_resumes_to_the_same_model(tmp_path, lora_run, lora_options):
    """No dropout and one batch per epoch: what is not part of the resume state cannot differ."""
    with pytest.raises(tlkeras.errors.Interrupted):
        tlkeras.build_and_finetune(**lora_options, output_dir=str(tmp_path / "run"), callbacks=[CtrlC((2, 4))])
    resumed = tlkeras.build_and_finetune(**lora_options, output_dir=str(tmp_path / "run"), resume=True)
    assert resumed.history["epoch"] == [1, 2, 3, 4, 5] == lora_run.history["epoch"]
    np.testing.assert_allclose(resumed.history["loss"], lora_run.history["loss"], rtol=1e-4)
    np.testing.assert_allclose(resumed.model.predict(tf.constant(TEXTS), verbose=0),
                               lora_run.model.predict(tf.constant(TEXTS), verbose=0), atol=1e-5)


def test_lora_on_a_kerashub_vit_adapts_its_attention_and_nothing_else(tmp_path, image_folder):
    import keras_hub

    keras.utils.set_random_seed(0)
    preset = str(tmp_path / "vit")
    keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                 mlp_dim=32).save_to_preset(preset)
    keras_hub.layers.ViTImageConverter(image_size=(32, 32), scale=1 / 127.5, offset=-1).save_to_preset(preset)
    original = {w.path: w.numpy() for w in keras_hub.models.Backbone.from_preset(preset).weights}
    result = tlkeras.build_and_finetune(
        image_folder, backbone=f"kerashub:{preset}", image_size=32, batch_size=8, export=False, report=False,
        tensorboard=False, verbose=0, restore_best=False, stage1={"epochs": 1},
        stage2={"epochs": 1, "method": "lora", "lora_rank": 2, "learning_rate": 0.01},
        output_dir=str(tmp_path / "run"))
    changed = sorted(w.path for w in result.model.get_layer("backbone").weights
                     if not np.array_equal(w.numpy(), original[w.path]))
    attention = sorted(p for p in original if p.endswith(("/query/kernel", "/value/kernel")))
    assert len(attention) == 4 and changed == attention  # 2 blocks x (query, value); patches, MLPs, norms as they were
    assert result.history["stage"] == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_text_run_with_dropout_and_several_batches_resumes_exactly(tmp_path, bert_preset, lora_options, method):
    """BERT's own dropout and the head's, four batches per epoch: interrupted in stage 2 (the whole encoder on the
    text pipeline: LoRA adapters, or every layer) and resumed, the run ends where an uninterrupted one does."""
    options = {**lora_options, "backbone": f"kerashub:{bert_preset}", "batch_size": 8, "head": {"dropout": 0.3},
               "stage2": {"epochs": 3, "learning_rate": 0.01, **({"method": "lora", "lora_rank": 2} if method == "lora"
                                                                   else {"unfreeze": "all"})}}
    whole = tlkeras.build_and_finetune(**options, output_dir=str(tmp_path / "whole"))
    with pytest.raises(tlkeras.errors.Interrupted):
        tlkeras.build_and_finetune(**options, output_dir=str(tmp_path / "cut"), callbacks=[CtrlC((2, 4))])
    resumed = tlkeras.build_and_finetune(**options, output_dir=str(tmp_path / "cut"), resume=True)
    assert resumed.history["epoch"] == whole.history["epoch"] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(resumed.history["loss"], whole.history["loss"], rtol=1e-4)
    np.testing.assert_allclose(resumed.history["val_loss"], whole.history["val_loss"], rtol=1e-4)
    np.testing.assert_allclose(resumed.model.predict(tf.constant(TEXTS), verbose=0),
                               whole.model.predict(tf.constant(TEXTS), verbose=0), atol=1e-5)
