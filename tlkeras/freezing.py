"""Freezing and unfreezing the backbone, and the BatchNormalization policy.

In Keras 3 `layer.trainable = False` on a BatchNormalization layer also runs it in
inference mode, so its moving statistics never change. Building the model with
`backbone(x, training=False)` is NOT enough: `fit()` passes training=True down
through nested functional models and overrides it. tlkeras therefore freezes the BN
layers themselves. A change of `trainable` counts only after the next `compile`.

Example:

>>> import tlkeras
>>> model = tlkeras.build_model("mobilenetv2", 3, image_size=32, weights=None,
...                             backbone_options={"alpha": 0.35})
>>> freeze_backbone(model)
>>> plan = unfreeze(model, "blocks:1")
>>> plan.layers[:2], plan.bn_frozen
(['block_16_expand', 'block_16_depthwise'], True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

import keras

from tlkeras import backbones
from tlkeras.distribute import replicas
from tlkeras.errors import BackboneError, did_you_mean
from tlkeras.model import backbone_name, get_backbone, model_info

Unfreeze = Union[int, float, str, None]


@dataclass
class UnfreezePlan:
    """What `unfreeze` made trainable: layer names (bottom to top) and parameter counts."""

    layers: list[str]
    trainable_params: int
    backbone_params: int
    bn_frozen: bool
    cut_layer: Optional[str] = None
    notes: list[str] = field(default_factory=list)
    unit: str = "layer"  # what `layers` lists: backbone layers, or a hub module's variables

    def describe(self) -> str:
        n = len(self.layers)
        if n == 0:
            return "no backbone layer trains (head only)"
        shown = ", ".join(self.layers) if n <= 8 else ", ".join(self.layers[:3]) + ", ..., " + ", ".join(self.layers[-3:])
        if self.unit == "layer":
            bn = "; BatchNormalization frozen (inference mode)" if self.bn_frozen else "; BatchNormalization trains"
        else:  # a hub module runs as a whole in inference or training mode
            bn = ("; the module runs in inference mode (its BatchNormalization statistics stay fixed)" if self.bn_frozen
                  else "; the module runs in training mode (its BatchNormalization statistics update)")
        share = self.trainable_params / max(self.backbone_params, 1)
        notes = "".join(f"; {note}" for note in self.notes)
        return (
            f"{n} backbone {self.unit}(s) train, {self.trainable_params:,} of {self.backbone_params:,} "
            f"backbone parameters ({share:.0%}): {shown}{bn}{notes}"
        )


def is_batch_norm(layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)


def freeze(layer) -> None:
    """Freeze a layer or model and everything inside it."""
    layer.trainable = False


def freeze_backbone(model: keras.Model) -> None:
    """Stage 1: freeze the whole backbone (BN included); the head stays trainable."""
    backbone = get_backbone(model)
    freeze(backbone)
    for layer in model.layers:
        if layer is not backbone:
            layer.trainable = True


def backbone_layers(model: keras.Model) -> list:
    """The backbone's layers bottom to top, without its input layer."""
    return [layer for layer in get_backbone(model).layers if not isinstance(layer, keras.layers.InputLayer)]


def unfreeze(
    model: keras.Model,
    unfreeze: Unfreeze,
    *,
    train_bn: bool = False,
    bn_momentum: Optional[float] = None,
) -> UnfreezePlan:
    """Make the top of the backbone trainable; everything below the cut stays frozen.

    `unfreeze`: an int N (the top N layers that have weights and will train), a float in
    (0, 1] (that fraction of them), a layer name (it and every layer above it), "blocks:N"
    (the top N blocks of the backbone family's block map) or "all". BatchNormalization
    layers stay frozen unless `train_bn`; those that train get `bn_momentum` if given.
    The head stays trainable. Recompile the model afterwards. What counts as a unit is the
    backbone's own (`trainable_units`): its layers, or a hub module's variables.
    """
    return trainable_units(model).unfreeze(unfreeze, train_bn, bn_momentum)


def _unfreeze_layers(model, unfreeze: Unfreeze, train_bn: bool, bn_momentum) -> UnfreezePlan:
    layers = backbone_layers(model)
    cut = _cut_index(model, layers, unfreeze, train_bn)
    backbone = get_backbone(model)
    backbone.trainable = True  # sets every nested layer; then choose per layer below
    for layer in model.layers:
        if layer is not backbone:
            layer.trainable = True
    trainable = []
    for i, layer in enumerate(layers):
        trains = i >= cut and (train_bn or not is_batch_norm(layer))
        layer.trainable = trains
        if trains and is_batch_norm(layer) and bn_momentum is not None:
            layer.momentum = bn_momentum
        if trains and is_batch_norm(layer) and replicas() > 1:
            # Keras 3 BN keeps per-replica statistics and saves replica 0's: synchronise them.
            layer.synchronized = True
        if trains and layer.weights:
            trainable.append(layer)
    return UnfreezePlan(
        layers=[layer.name for layer in trainable],
        trainable_params=sum(count_params(w) for layer in trainable for w in layer.trainable_weights),
        backbone_params=sum(count_params(w) for w in backbone.weights),
        bn_frozen=not train_bn,
        cut_layer=layers[cut].name if cut < len(layers) else None,
    )


def unit_weights(model: keras.Model, unfreeze: Unfreeze, train_bn: bool = False) -> list[tuple]:
    """[(unit, weight, in a BatchNormalization layer)] of the weights held by the units `unfreeze` lets train
    (BatchNormalization layers only with `train_bn`), bottom to top, changing nothing; their moving statistics
    are listed too (they never train: `fit` updates them).

    >>> import tlkeras
    >>> m = tlkeras.build_model("mobilenetv2", 3, image_size=32, weights=None,
    ...                         backbone_options={"alpha": 0.35})
    >>> [(unit, w.name, bn) for unit, w, bn in unit_weights(m, 2)]
    [('block_16_project', 'kernel', False), ('Conv_1', 'kernel', False)]
    """
    return trainable_units(model).unit_weights(unfreeze, train_bn)


def plan_cut(model: keras.Model, unfreeze: Unfreeze, *, train_bn: bool = False) -> tuple[int, int]:
    """(cut index, number of backbone layers) that `unfreeze` would give, changing nothing.

    Layers at index >= cut train (BatchNormalization only with `train_bn`); cut == number of
    layers means no backbone layer trains, cut == 0 means the whole backbone does.
    """
    return trainable_units(model).cut(unfreeze, train_bn)


def unfreeze_phases(model: keras.Model, stage) -> list[tuple]:
    """[(unfreeze, epochs)] of stage 2: one phase, or with `gradual_unfreeze` N one more block
    every N epochs from the top block down to what `unfreeze` allows; the last phase is always
    the full extent and takes the remaining epochs."""
    if not stage.gradual_unfreeze:
        return [(stage.unfreeze, stage.epochs)]
    # what each phase unfreezes, from the top block down (the backbone's own units: layers or module variables)
    steps = trainable_units(model).gradual(stage.unfreeze, stage.train_bn)
    if not steps:
        return [(stage.unfreeze, stage.epochs)]
    count = min(len(steps), max(1, math.ceil(stage.epochs / stage.gradual_unfreeze)))
    steps = steps[: count - 1] + [steps[-1]]
    epochs = [stage.gradual_unfreeze] * (count - 1)
    epochs.append(stage.epochs - sum(epochs))
    return list(zip(steps, epochs))


# === What a backbone's trainable units are ===


class LayerUnits:
    """A backbone of Keras layers: its layers are the units (counted, cut, grouped into blocks)."""

    kind = "layer"

    def __init__(self, model):
        self.model = model

    def cut(self, unfreeze: Unfreeze, train_bn: bool) -> tuple[int, int]:
        layers = backbone_layers(self.model)
        return _cut_index(self.model, layers, unfreeze, train_bn), len(layers)

    def unfreeze(self, unfreeze: Unfreeze, train_bn: bool, bn_momentum) -> UnfreezePlan:
        return _unfreeze_layers(self.model, unfreeze, train_bn, bn_momentum)

    def unit_weights(self, unfreeze: Unfreeze, train_bn: bool) -> list[tuple]:
        cut, _ = self.cut(unfreeze, train_bn)
        return [(layer.name, weight, is_batch_norm(layer)) for layer in backbone_layers(self.model)[cut:]
                if train_bn or not is_batch_norm(layer) for weight in layer.weights]

    def gradual(self, unfreeze: Unfreeze, train_bn: bool) -> list:
        """The `unfreeze` values of a gradual stage 2, one block more each, from the top block down to
        what `unfreeze` allows (its extent last); [] when nothing trains."""
        cut, n = self.cut(unfreeze, train_bn)
        if cut >= n:
            return []
        names = [layer.name for layer in backbone_layers(self.model)]
        starts = [names.index(block[0]) for block in list_blocks(self.model)]
        cuts = []
        for first in reversed(starts):
            cuts.append(max(cut, first))
            if cuts[-1] <= cut:
                break
        return [names[c] for c in cuts]

    def groups(self) -> list[list]:
        """The weights of the units, grouped bottom to top (blocks, else 8 bands of layers)."""
        layers = backbone_layers(self.model)
        if block_map_of(self.model) is not None:
            names = list_blocks(self.model)
        else:
            weighted = [layer.name for layer in layers if layer.weights]
            size = max(1, -(-len(weighted) // 8))
            names = [weighted[i : i + size] for i in range(0, len(weighted), size)]
        by_name = {layer.name: layer for layer in layers}
        return [[w for name in group for w in by_name[name].weights] for group in names]


class ModuleUnits:
    """A TF Hub / SavedModel module: one layer whose variables are the units (counted from the last).
    A module with a block map (a Transformer encoder's layers, by variable name) groups them into blocks."""

    kind = "hub module variable"

    def __init__(self, model, module):
        self.model, self.module = model, module

    def blocks(self) -> Optional[list[list[str]]]:
        """The module's trainable variable names grouped into blocks, bottom to top; None without a block map."""
        block_map = block_map_of(self.model)
        return block_map.split(self.module.trainable_candidates()) if block_map is not None else None

    def count(self, unfreeze: Unfreeze) -> int:
        """How many of the module's trainable variables (counted from the last) `unfreeze` trains."""
        return _module_count(self.module, unfreeze, self.blocks())

    def cut(self, unfreeze: Unfreeze, train_bn: bool) -> tuple[int, int]:
        return (0 if self.count(unfreeze) else 1), 1  # the one layer trains, or not

    def unfreeze(self, unfreeze: Unfreeze, train_bn: bool, bn_momentum) -> UnfreezePlan:
        return _unfreeze_module(self.model, self.module, self.count(unfreeze), train_bn, bn_momentum)

    def unit_weights(self, unfreeze: Unfreeze, train_bn: bool) -> list[tuple]:
        """The top variables `unfreeze` counts (a module's BatchNormalization is not told apart: False)."""
        names = self.module.trainable_candidates()
        top = set(names[len(names) - min(self.count(unfreeze), len(names)):])
        return [(name, weight, False) for name, weight, _ in self.module.named_variables() if name in top]

    def gradual(self, unfreeze: Unfreeze, train_bn: bool) -> list[int]:
        """Variable counts of a gradual stage 2: the top block's, then one block more each, down to
        what `unfreeze` allows."""
        count, blocks = self.count(unfreeze), self.blocks()
        if count == 0:
            return []
        if blocks is None:
            raise BackboneError(f"stage2.gradual_unfreeze: backbone {backbone_name(self.model)!r} has no block map "
                                "(its module's variables are not grouped into layers); remove gradual_unfreeze.")
        steps, total = [], 0
        for block in reversed(blocks):
            if total >= count:
                break
            total = min(count, total + len(block))
            steps.append(total)
        return steps

    def groups(self) -> list[list]:
        """The module's variables by block, bottom to top; without a block map, 8 bands in their order
        (the last ones are the top)."""
        named = [(name, w) for name, w, in_module in self.module.named_variables() if in_module]
        blocks = self.blocks()
        if blocks is not None:
            by_name = dict(named)
            return [[by_name[name] for name in block] for block in blocks]
        weights = [w for _, w in named]
        size = max(1, -(-len(weights) // 8))
        return [weights[i : i + size] for i in range(0, len(weights), size)]


def trainable_units(model: keras.Model):
    """What `unfreeze` counts in this model's backbone: `ModuleUnits` when the backbone is a hub
    module (`tlkeras.backbones.hub_module.HubModule`), else `LayerUnits`. Freezing, the stage-2 cut,
    layer-wise rates and the LR finder ask it; none of them looks at the source."""
    module = hub_module(model)
    return ModuleUnits(model, module) if module is not None else LayerUnits(model)


def hub_module(model: keras.Model):
    """The `HubModule` layer when the backbone is a TF Hub / SavedModel module, else None."""
    from tlkeras.backbones.hub_module import hub_layer

    return hub_layer(get_backbone(model))


def _module_count(module, unfreeze: Unfreeze, blocks: Optional[list[list[str]]] = None) -> int:
    """How many of a hub module's trainable variables (counted from the last) `unfreeze` trains;
    `blocks`: its variable names by block (bottom to top), for "blocks:N"."""
    names = module.trainable_candidates()
    count = _top_count(unfreeze, len(names))
    if count is not None:
        return count
    if unfreeze.startswith("blocks:"):
        if blocks is None:
            raise BackboneError(
                f"stage2.unfreeze: {unfreeze!r} needs a block map, and this hub module has none; use a count or a "
                "fraction of its trainable variables, or a variable name."
            )
        return sum(len(block) for block in blocks[len(blocks) - min(_block_count(unfreeze), len(blocks)):])
    for i, name in enumerate(names):
        if name == unfreeze or name.startswith(unfreeze.rstrip("/") + "/"):
            return len(names) - i
    prefixes = sorted({name.rsplit("/", 1)[0] for name in names} | set(names))
    raise BackboneError(
        f"stage2.unfreeze: the hub module has no variable {unfreeze!r}.{did_you_mean(unfreeze, prefixes)} "
        "Use an int or a fraction of its trainable variables, 'all', or a variable name (it and every later one)."
    )


def _unfreeze_module(model, module, count: int, train_bn: bool, bn_momentum) -> UnfreezePlan:
    for layer in model.layers:
        layer.trainable = True
    module.trainable = count > 0
    names = module.set_unfrozen(count)  # explicitly: setting `trainable` to its own value is a no-op
    module.train_mode = bool(train_bn)  # the module's own BatchNormalization follows `training`
    notes = []
    if train_bn and bn_momentum is not None:
        notes.append("bn_momentum does not reach inside a hub module: its BatchNormalization keeps its own momentum")
    trained = [w for _, w, _ in module.named_variables() if w.trainable]
    return UnfreezePlan(
        layers=names,
        trainable_params=sum(count_params(w) for w in trained),
        backbone_params=sum(count_params(w) for w in module.weights),
        bn_frozen=not train_bn,
        cut_layer=module.name if names else None,  # the lowest layer that trains: the module itself
        notes=notes,
        unit="hub module variable",
    )


def count_params(weight) -> int:
    """The number of values in a weight."""
    n = 1
    for d in weight.shape:
        n *= int(d)
    return n


def _top_count(unfreeze: Unfreeze, n: int) -> Optional[int]:
    """How many of `n` candidates, counted from the top, a count, a fraction, "all" or None
    selects; None for a name or "blocks:N", which the caller resolves."""
    if unfreeze is None:
        return 0
    if isinstance(unfreeze, bool):
        raise BackboneError(f"stage2.unfreeze: {unfreeze!r} is not valid.")
    if unfreeze == "all":
        return n
    if isinstance(unfreeze, int):
        if unfreeze < 0:
            raise BackboneError(f"stage2.unfreeze: {unfreeze} is not valid: use a count >= 0.")
        return min(unfreeze, n)
    if isinstance(unfreeze, float):
        if not 0.0 < unfreeze <= 1.0:
            raise BackboneError(f"stage2.unfreeze: {unfreeze} is not valid: a fraction must be in (0, 1].")
        return max(1, int(round(unfreeze * n)))
    if isinstance(unfreeze, str):
        return None
    raise BackboneError(f"stage2.unfreeze: {unfreeze!r} is not valid.")


def _cut_index(model, layers, unfreeze: Unfreeze, train_bn: bool) -> int:
    """Index into `layers` of the lowest layer that trains (len(layers): none)."""
    if unfreeze == "all":
        return 0  # every layer, those without weights included
    candidates = [i for i, layer in enumerate(layers) if layer.weights and (train_bn or not is_batch_norm(layer))]
    count = _top_count(unfreeze, len(candidates))
    if count is not None:
        return candidates[-count] if count else len(layers)
    if unfreeze.startswith("blocks:"):
        return _block_cut(model, layers, unfreeze)
    names = [layer.name for layer in layers]
    if unfreeze not in names:
        raise BackboneError(
            f"stage2.unfreeze: the backbone has no layer {unfreeze!r}.{did_you_mean(unfreeze, names)} "
            "Use an int, a fraction, 'blocks:N', 'all' or one of its layer names."
        )
    return names.index(unfreeze)


def _block_count(unfreeze: str) -> int:
    """N of "blocks:N" (N >= 1)."""
    try:
        count = int(unfreeze.split(":", 1)[1])
    except ValueError:
        count = 0
    if count < 1:
        raise BackboneError(f"stage2.unfreeze: {unfreeze!r} is not valid: use 'blocks:N' with N >= 1.")
    return count


def _block_cut(model, layers, unfreeze: str) -> int:
    count = _block_count(unfreeze)
    if block_map_of(model) is None:
        raise BackboneError(
            f"stage2.unfreeze: {unfreeze!r} needs a block map, and backbone {backbone_name(model)!r} has none; "
            "use a layer count, a fraction or a layer name."
        )
    blocks = list_blocks(model)
    count = min(count, len(blocks))
    first = blocks[-count][0]
    return [layer.name for layer in layers].index(first)


def block_map_of(model: keras.Model) -> Optional[backbones.BlockMap]:
    """The block map of a model's backbone, from the model's metadata (models saved by older
    tlkeras: the one found by the backbone's name); None when it has none."""
    stored = model_info(model).block_map
    if stored:
        return backbones.BlockMap(**stored)
    name = backbone_name(model)
    return backbones.block_map_for(name) if name else None


def list_blocks(model: keras.Model) -> list[list[str]]:
    """The backbone's layer names grouped into blocks, bottom to top. A block whose layers hold no weights (NASNet's
    last activation, after its last cell) joins the block below it, so that "blocks:N" always trains N blocks."""
    block_map = block_map_of(model)
    if block_map is None:
        raise BackboneError(f"backbone {backbone_name(model)!r} has no block map.")
    layers = backbone_layers(model)
    weighted = {layer.name for layer in layers if layer.weights}
    blocks: list[list[str]] = []
    for block in block_map.split([layer.name for layer in layers]):
        if blocks and (not weighted.intersection(block) or not weighted.intersection(blocks[-1])):
            blocks[-1].extend(block)  # a block without weights, or above one: the two are one block
        else:
            blocks.append(block)
    return blocks


def layer_multipliers(model: keras.Model, decay: float) -> dict[str, float]:
    """{variable path: learning-rate factor} for discriminative rates: decay^depth for the
    backbone's blocks counted from the top (the top block is depth 1); the head is not listed
    (factor 1). Backbones without a block map are split into 8 groups of layers instead.

    >>> import tlkeras
    >>> m = tlkeras.build_model("mobilenetv2", 3, image_size=32, weights=None,
    ...                         backbone_options={"alpha": 0.35})
    >>> factors = layer_multipliers(m, 0.5)
    >>> kernel = m.get_layer("backbone").get_layer("Conv_1").kernel
    >>> factors[kernel.path], min(factors.values()) == 0.5 ** 17
    (0.5, True)
    """
    groups = trainable_units(model).groups()
    return {w.path: decay**depth for depth, group in enumerate(reversed(groups), start=1) for w in group}


def trainable_layer_names(model: keras.Model) -> list[str]:
    """Names of the model's layers (backbone layers included) that have trainable weights."""
    names = []
    backbone = get_backbone(model)
    for layer in model.layers:
        if layer is backbone:
            names.extend(sub.name for sub in backbone_layers(model) if sub.trainable_weights)
        elif layer.trainable_weights:
            names.append(layer.name)
    return names
