"""LoRA for stage 2: low-rank adapters on chosen backbone layers instead of training the backbone.

`stage2.method: lora` puts Keras 3's own adapters (`layer.enable_lora(rank, lora_alpha)`, on Dense,
EinsumDense and Conv layers; embedding tables take none) on the layers that `stage2.lora_targets` names - by default
the attention query and value projections - and trains only them and the head: everything else in
the backbone stays as it was, BatchNormalization included. A layer is named by its name or its path
inside the backbone ("transformer_layer_0/self_attention_layer/query"), with shell-style wildcards.

When training ends the adapters are folded into the kernels (`merge_lora`): `model.keras` and every
export hold plain layers with the fine-tuned kernels, no extra matmul. The adapters and the head are
also written alone (a small .npz) and `apply_adapters` puts them on a freshly built base model again.

Example:

>>> import tlkeras
>>> model = tlkeras.build_model("mobilenetv2", 3, image_size=32, weights=None,
...                             backbone_options={"alpha": 0.35})
>>> plan = enable_lora(model, rank=2, targets=["Conv_1"])  # Keras 3 convolutions take adapters too
>>> plan.targets, plan.adapter_params
(['Conv_1'], 2784)
"""

from __future__ import annotations

import fnmatch
import json
import weakref
from dataclasses import dataclass
from typing import Optional, Sequence

import keras
import numpy as np

from tlkeras.config import LORA_TARGETS as DEFAULT_TARGETS
from tlkeras.errors import BackboneError
from tlkeras.model import get_backbone
from tlkeras.atomic import atomic_path

DEFAULT_RANK = 8
ADAPTER_KINDS = "Dense, EinsumDense or Conv"


@dataclass
class LoraPlan:
    """What LoRA adapts: the target layers' paths, rank, alpha and parameter counts."""

    rank: int
    alpha: float
    targets: list[str]
    adapter_params: int
    backbone_params: int
    head_params: int = 0

    def describe(self) -> str:
        shown = ", ".join(self.targets) if len(self.targets) <= 4 else (
            ", ".join(self.targets[:2]) + ", ..., " + ", ".join(self.targets[-2:]))
        share = self.adapter_params / max(self.backbone_params, 1)
        return (f"LoRA rank {self.rank} (alpha {self.alpha:g}) on {len(self.targets)} layer(s): {shown}; "
                f"{self.adapter_params:,} adapter parameters train ({share:.2%} of the backbone's "
                f"{self.backbone_params:,}) and the head's {self.head_params:,}; the rest of the backbone stays frozen")

    def as_record(self) -> dict:
        total = self.adapter_params + self.head_params
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets),
                "adapter_params": self.adapter_params, "head_params": self.head_params,
                "trainable_params": total, "backbone_params": self.backbone_params,
                "trainable_share": round(total / max(self.backbone_params + self.head_params, 1), 6)}


class _State:
    """A model's adapted layers and their kernels from before training (to write the adapters)."""

    def __init__(self, plan: LoraPlan, layers: dict, base: dict):
        self.plan, self.layers, self.base = plan, layers, base


_STATES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _is_embedding(layer) -> bool:
    """An embedding table (KerasHub's ReversibleEmbedding included): Keras gives it adapters of its own kind
    (`lora_embeddings_a`), which tlkeras's folding of kernels does not handle, so it takes none here."""
    return isinstance(layer, keras.layers.Embedding)


def _nested_layers(backbone) -> list[tuple[str, keras.layers.Layer]]:
    """(path inside the backbone, layer) of every layer nested in it, each once, bottom to top."""
    found, seen = [], set()

    def walk(layer, prefix: str):
        for sub in getattr(layer, "_layers", []):
            if id(sub) in seen or isinstance(sub, keras.layers.InputLayer):
                continue
            seen.add(id(sub))
            path = f"{prefix}/{sub.name}" if prefix else sub.name
            found.append((path, sub))
            walk(sub, path)

    walk(backbone, "")
    return found


def embedding_layers(backbone) -> list[tuple[str, keras.layers.Layer]]:
    """(path, layer) of the backbone's embedding tables (`_is_embedding`)."""
    return [(path, layer) for path, layer in _nested_layers(backbone) if _is_embedding(layer)]


def adaptable_layers(backbone) -> list[tuple[str, keras.layers.Layer]]:
    """(path inside the backbone, layer) of every built layer that takes adapters, bottom to top: Dense, EinsumDense
    and Conv layers (embedding tables take none: `_is_embedding`)."""
    return [(path, layer) for path, layer in _nested_layers(backbone)
            if hasattr(layer, "enable_lora") and layer.built and layer.weights and not _is_embedding(layer)]


def find_targets(model: keras.Model, patterns: Sequence[str] = DEFAULT_TARGETS, *,
                 setting: str = "stage2.lora_targets") -> list[tuple[str, keras.layers.Layer]]:
    """The backbone layers that `patterns` name (by name or path, wildcards allowed); a
    BackboneError naming the layers there are when none does - LoRA never trains nothing."""
    backbone = get_backbone(model)
    candidates = adaptable_layers(backbone)

    def named(path, layer):
        return any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(layer.name, p) for p in patterns)

    chosen = [(path, layer) for path, layer in candidates if named(path, layer)]
    tables = [path for path, layer in embedding_layers(backbone) if named(path, layer)]
    if tables and chosen:
        from tlkeras._logging import get_logger

        get_logger().warning("%s: %d embedding table(s) matched (%s) and get no adapters: tlkeras adapts the kernels "
                             "of Dense, EinsumDense and Conv layers", setting, len(tables), ", ".join(tables[:4]))
    if chosen:
        return chosen
    wanted = ", ".join(repr(p) for p in patterns)
    if not candidates:
        raise BackboneError(f"{setting}: the backbone has no layer that takes LoRA adapters ({ADAPTER_KINDS} "
                            "layers); use stage2.method: full.")
    names = [path for path, _ in candidates]
    shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
    default = " (the attention query/value projections, the default)" if tuple(patterns) == DEFAULT_TARGETS else ""
    raise BackboneError(f"{setting}: no backbone layer matches {wanted}{default}; the layers that take adapters "
                        f"are: {shown}. Name some of them (wildcards allowed), or use stage2.method: full.")


def check_rank(chosen: list, rank: int, setting: str = "stage2.lora_rank") -> None:
    """Refuse a rank above the smallest dimension of an adapted kernel (read as [inputs, outputs]): an adapter of that
    rank can already change the kernel fully, and a larger one only adds parameters.

    >>> layer = keras.layers.Dense(16); layer.build((None, 32))
    >>> check_rank([("dense", layer)], 100000)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    tlkeras.errors.BackboneError: stage2.lora_rank: 100000 is above the smallest dimension of the kernels it adapts ...
    """
    for path, layer in chosen:
        shape = tuple(_base_variable(layer).shape)
        inputs, outputs = int(np.prod(shape[:-1])), int(shape[-1])
        if rank > min(inputs, outputs):
            raise BackboneError(f"{setting}: {rank} is above the smallest dimension of the kernels it adapts ({path}: "
                                f"{inputs} x {outputs}): a rank-{min(inputs, outputs)} adapter already changes it "
                                f"fully; use at most {min(inputs, outputs)} (4-64 is usual).")


def enable_lora(model: keras.Model, rank: int = DEFAULT_RANK, alpha: Optional[float] = None,
                targets: Sequence[str] = DEFAULT_TARGETS) -> LoraPlan:
    """Put rank-`rank` adapters (scale alpha / rank; alpha defaults to the rank) on the target layers
    of the model's backbone. The adapters start at zero (the model answers exactly as before) and
    are frozen until `train_adapters`. Calling it again on the same model returns the same plan.
    Create the model's variables' strategy scope around it (tf.distribute)."""
    state = _STATES.get(model)
    if state is not None:
        if (state.plan.rank, state.plan.alpha) != (rank, float(alpha if alpha is not None else rank)):
            raise BackboneError(f"LoRA is already on with rank {state.plan.rank} (alpha {state.plan.alpha:g}).")
        return state.plan
    chosen = find_targets(model, targets)
    check_rank(chosen, rank)
    backbone = get_backbone(model)
    layers, base = {}, {}
    for path, layer in chosen:
        base[path] = np.array(_base_variable(layer).numpy())
        layer.enable_lora(rank, lora_alpha=alpha)
        layers[path] = layer
        for variable in (layer.lora_kernel_a, layer.lora_kernel_b):
            variable.trainable = False  # frozen until stage 2 (train_adapters)
    adapter_params = sum(_count(v) for l in layers.values() for v in (l.lora_kernel_a, l.lora_kernel_b))
    plan = LoraPlan(
        rank=int(rank), alpha=float(alpha if alpha is not None else rank), targets=list(layers),
        adapter_params=adapter_params,
        backbone_params=sum(_count(w) for w in backbone.weights) - adapter_params,  # without the adapters
        head_params=sum(_count(w) for _, w in _head_weights(model)),
    )
    _STATES[model] = _State(plan, layers, base)
    return plan


def train_adapters(model: keras.Model) -> LoraPlan:
    """Stage 2 with LoRA: only the adapters and the head train. Every other backbone layer is frozen
    (BatchNormalization in inference mode). Recompile afterwards."""
    state = _STATES.get(model)
    if state is None:
        raise RuntimeError("train_adapters: call enable_lora first.")
    backbone = get_backbone(model)
    backbone.trainable = True
    for layer in backbone._flatten_layers(include_self=False):
        layer.trainable = False
    for layer in state.layers.values():
        layer.lora_kernel_a.trainable = True
        layer.lora_kernel_b.trainable = True
    for layer in model.layers:
        if layer is not backbone:
            layer.trainable = True
    return state.plan


def cut_index(model: keras.Model) -> int:
    """Index among the backbone's layers of the lowest one that holds an adapted layer: everything
    below it stays frozen in stage 2, so its output can be cached."""
    from tlkeras.freezing import backbone_layers

    state = _STATES.get(model)
    if state is None:
        return 0
    names = [layer.name for layer in backbone_layers(model)]
    return min(names.index(path.split("/", 1)[0]) for path in state.layers)  # paths start at a backbone layer


def merge_lora(model: keras.Model, adapters_path: Optional[str] = None) -> Optional[LoraPlan]:
    """Fold the adapters into the kernels and take them off the layers (plain layers again, for
    model.keras and every export); first write the adapters (as a rank-r factorisation of what
    training changed in each kernel, so also after the best epoch's weights were put back) and the
    head's weights to `adapters_path` (.npz). Returns the plan, or None when the model has no LoRA."""
    state = _STATES.pop(model, None)
    if state is None:
        return None
    arrays = {}
    for path, layer in state.layers.items():
        merged = _effective_kernel(layer)
        if adapters_path:
            a, b = _factorise(merged - state.base[path], state.plan.rank, state.plan.alpha / state.plan.rank)
            arrays[f"adapter/{path}/a"], arrays[f"adapter/{path}/b"] = a.reshape(
                state.base[path].shape[:-1] + (state.plan.rank,)), b
        _remove_adapters(layer, merged)
    for name in ("train_function", "test_function", "predict_function"):  # retrace without the adapters
        if getattr(model, name, None) is not None:
            setattr(model, name, None)
    if adapters_path:
        head = _head_weights(model)
        for index, weight in head:
            arrays[f"head/{index}"] = weight.numpy()
        meta = {**state.plan.as_record(), "head_paths": {str(i): w.path for i, w in head}}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        with atomic_path(adapters_path, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
    return state.plan


def apply_adapters(model: keras.Model, path: str) -> LoraPlan:
    """Put the adapters and head of `path` (written by `merge_lora`) on a model built as the run's
    was, with the same pretrained weights: its kernels become the fine-tuned ones.

    Example: ``tlkeras.lora.apply_adapters(base_model, "runs/x/lora_adapters.npz")``.
    """
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(arrays.pop("meta").tobytes().decode())
    layers = dict(adaptable_layers(get_backbone(model)))
    missing = [t for t in meta["targets"] if t not in layers]
    if missing:
        raise BackboneError(f"{path}: the model has no layer {missing[0]!r} to apply the adapters to; build it as "
                            "the run's model was (same backbone and options).")
    scale = meta["alpha"] / meta["rank"]
    for target in meta["targets"]:
        layer, a, b = layers[target], arrays[f"adapter/{target}/a"], arrays[f"adapter/{target}/b"]
        variable = _base_variable(layer)
        if tuple(variable.shape) != a.shape[:-1] + b.shape[1:]:
            raise BackboneError(f"{path}: adapter {target!r} fits a kernel of shape {a.shape[:-1] + b.shape[1:]}, "
                                f"the model's is {tuple(variable.shape)}.")
        delta = scale * (a.reshape(-1, a.shape[-1]) @ b).reshape(variable.shape)
        variable.assign(variable.numpy() + delta.astype(variable.dtype))
    head = _head_weights(model)
    for index, weight in head:
        key = f"head/{index}"
        if key not in arrays or tuple(arrays[key].shape) != tuple(weight.shape):
            raise BackboneError(f"{path}: the model's head does not match the run's ({weight.path}); build it with the "
                                "same classes and head options.")
        weight.assign(arrays[key])
    return LoraPlan(meta["rank"], meta["alpha"], meta["targets"], meta["adapter_params"], meta["backbone_params"],
                    meta["head_params"])


# === Helpers ===


def _base_variable(layer):
    return layer._embeddings if hasattr(layer, "_embeddings") else layer._kernel


def _effective_kernel(layer) -> np.ndarray:
    base = np.asarray(_base_variable(layer).numpy(), np.float32)
    a = np.asarray(layer.lora_kernel_a.numpy(), np.float32)
    b = np.asarray(layer.lora_kernel_b.numpy(), np.float32)
    delta = (layer.lora_alpha / layer.lora_rank) * (a.reshape(-1, a.shape[-1]) @ b)
    return base + delta.reshape(base.shape)


def _factorise(delta: np.ndarray, rank: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) with scale * a @ b == delta (2-D over the last axis), delta being of rank <= `rank`."""
    matrix = delta.reshape(-1, delta.shape[-1]).astype(np.float64) / scale
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    k = min(rank, len(s))
    root = np.sqrt(s[:k])
    a = np.zeros((matrix.shape[0], rank), np.float32)
    b = np.zeros((rank, matrix.shape[1]), np.float32)
    a[:, :k], b[:k] = u[:, :k] * root, root[:, None] * vt[:k]
    return a, b


def _remove_adapters(layer, merged: np.ndarray) -> None:
    variable = _base_variable(layer)
    variable.assign(merged.astype(variable.dtype))
    # A function traced before (model.predict's) still adds the adapters: zero, they add nothing.
    layer.lora_kernel_b.assign(np.zeros(layer.lora_kernel_b.shape, np.float32))
    layer._tracker.unlock()
    try:
        del layer.lora_kernel_a
        del layer.lora_kernel_b
    finally:
        layer._tracker.lock()
    layer.lora_enabled = False
    layer.lora_rank = None
    variable.trainable = layer.trainable


def _head_weights(model: keras.Model) -> list:
    """(index, weight) of the model's weights outside the backbone (the head), in model order."""
    inside = {id(w) for w in get_backbone(model).weights}
    return [(i, w) for i, w in enumerate([w for w in model.weights if id(w) not in inside])]


def _count(variable) -> int:
    return int(np.prod(variable.shape))
