"""Recomputing transformer layers in the backward pass (stage2.recompute): the same gradients as keeping the
activations - dropout's masks included - and no gradient for what is frozen; LoRA runs train the same model either
way, and the layers are plain again afterwards."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tlkeras
from test_text_encoders import review_rows, write_reviews
from tlkeras import recompute


def _encoder_with_adapters():
    import keras_hub

    keras.utils.set_random_seed(0)
    encoder = keras_hub.layers.TransformerEncoder(intermediate_dim=32, num_heads=2, dropout=0.3)
    encoder.build((None, 6, 16))
    attention = encoder._self_attention_layer
    for dense in (attention._query_dense, attention._value_dense):
        dense.enable_lora(2)
        dense.lora_kernel_b.assign(np.random.default_rng(1).normal(size=dense.lora_kernel_b.shape) * 0.1)
    for variable in encoder.trainable_variables:  # as LoRA trains: the adapters alone
        variable.trainable = "lora" in variable.path
    return encoder, attention._key_dense.kernel


def test_gradients_and_dropout_masks_are_those_of_the_plain_layer_and_frozen_kernels_get_none():
    encoder, frozen_kernel = _encoder_with_adapters()
    x = tf.constant(np.random.default_rng(0).normal(size=(3, 6, 16)), tf.float32)
    seeds = [v for v in encoder.variables if v.name == recompute.SEED_STATE]
    assert len(seeds) == 3  # attention, feed-forward and residual dropout

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(encoder(x, training=True) ** 2)
        return tape.gradient(loss, [x, frozen_kernel, *encoder.trainable_variables])

    start = [v.numpy() for v in seeds]
    plain = step(x)
    after_plain = [v.numpy() for v in seeds]
    for v, s in zip(seeds, start):
        v.assign(s)
    with recompute.recomputed([encoder]):
        again = tf.function(step.python_function)(x)  # traced anew inside the context
    assert "call" not in encoder.__dict__  # the class's own call again
    # the recomputation drew the forward pass's seeds again and left the states where the forward pass left them
    assert [v.numpy().tolist() for v in seeds] == [s.tolist() for s in after_plain] != [s.tolist() for s in start]
    assert len(encoder.trainable_variables) == 4  # the adapters: A and B of query and value
    np.testing.assert_allclose(again[0], plain[0], atol=1e-5)
    assert plain[1] is not None and again[1] is None  # the frozen kernel: asked for only without recomputation
    for a, b in zip(again[2:], plain[2:]):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recompute_reviews")
    return write_reviews(folder / "train.csv", review_rows(32)), write_reviews(folder / "val.csv", review_rows(8, seed=1))


def test_a_lora_run_trains_the_same_model_recomputing_or_not_and_says_which_layers(tmp_path, reviews, bert_preset,
                                                                                caplog):
    """The tiny BERT with its dropout on: the same masks in the recomputation, or the runs would part."""
    options = dict(data=reviews[0], val_data=reviews[1], backbone=f"kerashub:{bert_preset}", batch_size=16,
                   report=False, tensorboard=False, export=False, verbose=0, restore_best=False,
                   backbone_options={"sequence_length": 8}, stage1={"epochs": 1, "learning_rate": 0.05})
    lora = {"epochs": 2, "method": "lora", "lora_rank": 2, "learning_rate": 0.05}
    with caplog.at_level("INFO", logger="tlkeras"):
        recomputing = tlkeras.build_and_finetune(**options, stage2=lora, output_dir=str(tmp_path / "on"))
    said = [r.getMessage() for r in caplog.records if "recomputed in the backward pass" in r.getMessage()]
    assert said == ["stage 2: the activations of 2 layer(s) (transformer_layer_0 ... transformer_layer_1) are "
                    "recomputed in the backward pass, not kept (the default with method: lora; stage2.recompute: "
                    "false keeps them)"]
    keeping = tlkeras.build_and_finetune(**options, stage2={**lora, "recompute": False},
                                         output_dir=str(tmp_path / "off"))
    np.testing.assert_allclose(recomputing.history["loss"], keeping.history["loss"], rtol=1e-5)
    for a, b in zip(recomputing.model.weights, keeping.model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, err_msg=a.path)
    backbone = recomputing.model.get_layer("backbone")
    assert not any("call" in layer.__dict__ for layer in backbone._flatten_layers())  # plain layers again


def test_the_blocks_recomputed_are_transformer_layers_also_where_an_encoder_layer_holds_them(tmp_path, bert_preset):
    import keras_hub

    from tlkeras.freezing import backbone_layers

    bert = tlkeras.build_model(f"kerashub:{bert_preset}", 2, backbone_options={"sequence_length": 8})
    names = [layer.name for layer in backbone_layers(bert)]
    assert [b.name for b in recompute.candidates(bert, names)] == ["transformer_layer_0", "transformer_layer_1"]
    assert recompute.candidates(bert, names[names.index("transformer_layer_1"):])[0].name == "transformer_layer_1"
    keras.utils.set_random_seed(0)
    preset = str(tmp_path / "vit")
    keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                 mlp_dim=32).save_to_preset(preset)
    keras_hub.layers.ViTImageConverter(image_size=(32, 32), scale=1 / 127.5, offset=-1).save_to_preset(preset)
    vit = tlkeras.build_model(f"kerashub:{preset}", 2, image_size=32)
    names = [layer.name for layer in backbone_layers(vit)]
    # KerasHub's ViT keeps its blocks inside one encoder layer, and neither takes a `training` argument (Keras passes
    # it on through its call context): nothing is recomputed there - not the whole encoder at once, which would hold
    # all its activations again
    assert recompute.candidates(vit, names) == []


def test_an_encoder_layer_holding_blocks_is_recomputed_block_by_block():
    class Encoder(keras.layers.Layer):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.blocks = [_encoder_with_adapters()[0] for _ in range(3)]

        def call(self, x, training=None):
            for block in self.blocks:
                x = block(x, training=training)
            return x

    encoder = Encoder()
    assert recompute._blocks(encoder) == encoder.blocks
    assert recompute._blocks(encoder.blocks[0]) == [encoder.blocks[0]]  # one attention layer inside: the block itself
