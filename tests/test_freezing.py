import pytest

import tlkeras
from tlkeras import freezing
from tlkeras.errors import BackboneError


def _trainable_backbone_layers(model):
    return [layer.name for layer in freezing.backbone_layers(model) if layer.trainable_weights]


def test_freeze_backbone_leaves_only_the_head_trainable(tiny_model):
    freezing.freeze_backbone(tiny_model)
    assert tiny_model.get_layer("backbone").trainable_weights == []
    assert freezing.trainable_layer_names(tiny_model) == ["predictions"]


def test_unfreeze_int_counts_layers_that_will_train(tiny_model):
    freezing.freeze_backbone(tiny_model)
    plan = freezing.unfreeze(tiny_model, 3)
    assert plan.layers == ["block_16_depthwise", "block_16_project", "Conv_1"]
    assert _trainable_backbone_layers(tiny_model) == plan.layers
    # the BN layers between them are above the cut but stay frozen
    assert not tiny_model.get_layer("backbone").get_layer("Conv_1_bn").trainable
    assert plan.bn_frozen


def test_unfreeze_fraction_rounds_to_that_share_of_trainable_candidates(tiny_model):
    candidates = [
        layer.name for layer in freezing.backbone_layers(tiny_model)
        if layer.weights and not freezing.is_batch_norm(layer)
    ]
    plan = freezing.unfreeze(tiny_model, 0.25)
    assert plan.layers == candidates[-round(0.25 * len(candidates)):]


def test_unfreeze_layer_name_trains_it_and_everything_above(tiny_model):
    plan = freezing.unfreeze(tiny_model, "block_15_expand")
    assert plan.layers[0] == "block_15_expand"
    assert plan.layers[-1] == "Conv_1"
    assert "block_14_project" not in plan.layers
    assert plan.cut_layer == "block_15_expand"


def test_unfreeze_blocks_uses_the_family_block_map(tiny_model):
    plan = freezing.unfreeze(tiny_model, "blocks:2")
    assert plan.layers == [
        "block_15_expand", "block_15_depthwise", "block_15_project",
        "block_16_expand", "block_16_depthwise", "block_16_project", "Conv_1",
    ]


def test_unfreeze_all_and_zero(tiny_model):
    plan = freezing.unfreeze(tiny_model, "all")
    assert plan.layers[0] == "Conv1" and len(plan.layers) == 52
    plan = freezing.unfreeze(tiny_model, 0)
    assert plan.layers == [] and _trainable_backbone_layers(tiny_model) == []
    assert "predictions" in freezing.trainable_layer_names(tiny_model)


def test_train_bn_makes_batch_norm_train_with_the_given_momentum(tiny_model):
    plan = freezing.unfreeze(tiny_model, "blocks:1", train_bn=True, bn_momentum=0.9)
    bn = tiny_model.get_layer("backbone").get_layer("block_16_project_BN")
    assert bn.trainable and bn.momentum == 0.9
    assert "block_16_project_BN" in plan.layers and not plan.bn_frozen
    below = tiny_model.get_layer("backbone").get_layer("block_15_project_BN")
    assert not below.trainable and below.momentum == 0.999  # untouched below the cut


def test_unknown_layer_name_suggests_the_closest(tiny_model):
    with pytest.raises(BackboneError, match=r"the backbone has no layer 'block_16_expnad'\. Did you mean 'block_16_expand'"):
        freezing.unfreeze(tiny_model, "block_16_expnad")


def test_plan_description_names_the_layers_and_parameters(tiny_model):
    text = freezing.unfreeze(tiny_model, 2).describe()
    assert text.startswith("2 backbone layer(s) train, ")
    assert "block_16_project, Conv_1; BatchNormalization frozen (inference mode)" in text


def test_blocks_on_a_backbone_without_a_block_map_is_explained(tiny_model):
    tiny_model.update_metadata(backbone="mystery", block_map=None)  # the model's metadata says what it is
    with pytest.raises(BackboneError, match=r"needs a block map, and backbone 'mystery' has none"):
        freezing.unfreeze(tiny_model, "blocks:1")
