"""The Keras 3 layer that holds a TF Hub / SavedModel module (`HubModule`), and what a module takes and gives.

Split from `tlkeras.backbones.hub` (handles, resolution, the spec), which imports this only when a
hub backbone is inspected or built, so naming backbones and checking configs need no TensorFlow.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional

import keras
import tensorflow as tf

from tlkeras.backbones.hub_handles import resolve_handle
from tlkeras.errors import BackboneError

def load_module(path: str):
    """tf.saved_model.load of a resolved module folder, with a clear error if it is no SavedModel."""
    try:
        return tf.saved_model.load(path)
    except Exception as e:  # OSError, ValueError, NotFoundError...
        raise BackboneError(f"backbone: {path!r} cannot be loaded as a SavedModel: {str(e).splitlines()[0]}") from None


# TF Hub's interface of Transformer text encoders (BERT, ALBERT, ELECTRA, ... on tfhub.dev / Kaggle Models)
ENCODER_INPUTS = ("input_word_ids", "input_mask", "input_type_ids")
ENCODER_OUTPUTS = ("pooled_output", "sequence_output")


@dataclass(frozen=True)
class ModuleInfo:
    """What a module takes and gives, read from its traced signatures."""

    kind: str  # "image", "text" (strings in) or "encoder" (a Transformer encoder: token ids in)
    input_shape: tuple  # without the batch dimension
    output_shape: tuple  # without the batch dimension
    endpoint: str  # "__call__" (reusable SavedModel: takes training=) or "serve" (Keras export)
    output_key: Optional[str] = None


def _endpoint(obj) -> tuple[str, list]:
    for name in ("__call__", "serve"):
        fn = getattr(obj, name, None)
        concrete = list(getattr(fn, "concrete_functions", None) or [])
        if concrete:
            return name, concrete
    signatures = sorted(getattr(obj, "signatures", {}) or {})
    raise BackboneError(
        "backbone: the module has no callable __call__ (reusable TF2 SavedModel) or serve endpoint "
        f"(Keras export){'; it only has the signatures ' + ', '.join(signatures) if signatures else ''}. "
        "TF1 Hub modules (hub.Module format) cannot be fine-tuned in TF2: use the module's TF2 version."
    )


def describe(obj, where: str, output_key: Optional[str] = None) -> ModuleInfo:
    """Check that a loaded module takes images or strings and gives features; say what it is."""
    endpoint, concrete = _endpoint(obj)
    args, _ = concrete[0].structured_input_signature
    spec = args[0] if args else None
    if isinstance(spec, dict) and set(ENCODER_INPUTS) <= set(spec):  # a BERT-style encoder: token ids in
        return _describe_encoder(spec, concrete[0].structured_outputs, endpoint, where, output_key)
    if not isinstance(spec, tf.TensorSpec):
        raise BackboneError(f"backbone: {where} takes {spec!r} as input; a backbone takes one tensor of images "
                            "[batch, height, width, 3] (float32) or strings [batch] (tf.string).")
    shape = tuple(spec.shape.as_list()) if spec.shape.rank is not None else None
    if spec.dtype == tf.string and shape is not None and len(shape) == 1:
        kind = "text"
    elif spec.dtype.is_floating and shape is not None and len(shape) == 4 and shape[-1] == 3:
        kind = "image"
    else:
        raise BackboneError(
            f"backbone: {where} takes {spec.dtype.name} {shape}; a backbone takes images [batch, height, width, 3] "
            "(float) or strings [batch] (tf.string)."
        )
    outputs = concrete[0].structured_outputs
    if isinstance(outputs, dict):
        keys = sorted(outputs)
        key = output_key or ("default" if "default" in outputs else None)
        if key not in outputs:
            raise BackboneError(
                f"backbone: {where} returns a dict ({', '.join(keys)}); say which output holds the features with "
                f"backbone_options.output_key (one of {', '.join(keys)})."
            )
        outputs = outputs[key]
        output_key = key
    elif output_key is not None:
        raise BackboneError(f"backbone_options.output_key: {where} returns one tensor, not a dict; remove output_key.")
    if not isinstance(outputs, tf.TensorSpec) or outputs.shape.rank not in (2, 4) or not outputs.dtype.is_floating:
        found = f"{outputs.dtype.name} {outputs.shape}" if isinstance(outputs, tf.TensorSpec) else repr(outputs)[:80]
        raise BackboneError(
            f"backbone: {where} outputs {found}; a backbone outputs float features, a vector [batch, features] or a "
            "map [batch, h, w, channels] (use the module's feature-vector variant, not its classifier)."
        )
    return ModuleInfo(kind, shape[1:], tuple(outputs.shape.as_list()[1:]), endpoint, output_key)


def _describe_encoder(spec: dict, outputs, endpoint: str, where: str, output_key: Optional[str]) -> ModuleInfo:
    """A module with TF Hub's Transformer-encoder interface: {input_word_ids, input_mask, input_type_ids}
    in, a dict with pooled_output [N, H] and sequence_output [N, T, H] out."""
    missing = [key for key in ENCODER_OUTPUTS if not isinstance(outputs, dict) or key not in outputs]
    if missing:
        found = ", ".join(sorted(outputs)) if isinstance(outputs, dict) else repr(outputs)[:80]
        raise BackboneError(f"backbone: {where} takes token ids like a BERT encoder but does not return "
                            f"{' and '.join(missing)} (it returns {found}); use a TF Hub text encoder with the "
                            "Transformer-encoder interface.")
    key = output_key or "pooled_output"
    if key not in outputs:
        raise BackboneError(f"backbone_options.output_key: {where} has no output {key!r}; its outputs are "
                            f"{', '.join(sorted(outputs))}.")
    shape = tuple(outputs[key].shape.as_list()[1:])
    return ModuleInfo("encoder", tuple(spec[ENCODER_INPUTS[0]].shape.as_list()[1:]), shape, endpoint, key)


# === The Keras 3 layer ===


class _ModuleVariable(keras.Variable):
    """A Keras variable whose value is an existing tf.Variable (the module's own), not a copy.

    Keras's TensorFlow Variable keeps a tf.Variable given to `_initialize` as its value; building
    from the variable's shape with this initializer hands it over without allocating a copy.
    """

    def __init__(self, variable: tf.Variable, *, trainable: bool, name: str):
        self._wrapped = variable
        super().__init__(initializer="zeros", shape=variable.shape, dtype=variable.dtype.name,
                         trainable=trainable, name=name)

    def _initialize_with_initializer(self, initializer):
        self._initialize(self._wrapped)


def _module_variables(module, endpoint: str) -> tuple[list, list]:
    """(variables, trainable variables) of a module: the reusable-SavedModel attributes, or for a
    SavedModel without them (a plain tf.Module saved) the variables its endpoint's functions use."""
    if hasattr(module, "variables"):
        return list(module.variables), list(getattr(module, "trainable_variables", []))
    variables, trainable, seen = [], [], set()
    for concrete in getattr(module, endpoint).concrete_functions:
        for v in concrete.variables:
            if id(v) not in seen:
                seen.add(id(v))
                variables.append(v)
                if v.trainable:
                    trainable.append(v)
    return variables, trainable


def _variable_name(variable) -> str:
    return re.sub(r":\d+$", "", variable.name)


@keras.saving.register_keras_serializable(package="tlkeras")
class HubModule(keras.layers.Layer):
    """A TF Hub / Kaggle / SavedModel module as a Keras 3 layer (see the module docstring).

    Args:
        handle: URL, Kaggle handle or folder of the module.
        output_key: the output to use when the module returns a dict.
        train_mode: call the module with training=True while it trains (its BatchNormalization
            statistics then update); False keeps it in inference mode.
        unfrozen: how many of the module's trainable variables (the last ones) train when the
            layer is trainable; None means all.

    Example (a module exported by `tf.saved_model.save`):

    >>> import tempfile, tensorflow as tf, numpy as np
    >>> class Tiny(tf.Module):
    ...     def __init__(self):
    ...         self.w = tf.Variable(tf.ones([3, 4]), name="w")
    ...     @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3]), tf.TensorSpec([], tf.bool)])
    ...     def __call__(self, images, training=False):
    ...         return tf.reduce_mean(images, axis=[1, 2]) @ self.w
    >>> folder = tempfile.mkdtemp()
    >>> tf.saved_model.save(Tiny(), folder)
    >>> layer = HubModule(folder, name="hub_module")
    >>> [w.path for w in layer.weights], layer(np.ones((2, 8, 8, 3), "float32")).shape
    (['hub_module/w'], TensorShape([2, 4]))
    """

    def __init__(self, handle: str, output_key: Optional[str] = None, train_mode: bool = False,
                 unfrozen: Optional[int] = None, **kwargs):
        kwargs.setdefault("dtype", "float32")  # the module's own math: float32 under any mixed policy
        super().__init__(**kwargs)
        self.handle, self.train_mode, self.unfrozen = handle, bool(train_mode), unfrozen
        self.path_resolved = resolve_handle(handle)
        module = _take_spare(self.path_resolved) or load_module(self.path_resolved)
        self.info = describe(module, f"hub:{handle}", output_key)
        self.output_key = self.info.output_key
        self._module = module
        self._call = getattr(module, self.info.endpoint)
        variables, trainable = _module_variables(module, self.info.endpoint)
        trainable_ids = {id(v) for v in trainable}
        self.variable_names = [_variable_name(v) for v in variables]
        self.module_trainable = [id(v) in trainable_ids for v in variables]
        # Wrap every variable before anything sets `trainable`: Keras's setter reaches only the
        # variables that exist when it runs.
        with keras.name_scope(self.name):  # weight paths "hub_module/conv1_kernel", as add_weight makes them
            self._hub_variables = [
                _ModuleVariable(v, trainable=t, name=re.sub(r"[/:]", "_", n) if n else f"variable_{i}")
                for i, (v, t, n) in enumerate(zip(variables, self.module_trainable, self.variable_names))
            ]
        self._regularization_losses = list(getattr(module, "regularization_losses", []) or [])
        # String ops (tokenising, vocabulary tables) have no XLA kernels: a text module runs without XLA.
        self.supports_jit = self.info.kind != "text"
        self._apply_unfrozen()
        self.built = True

    # --- trainability ---

    @property
    def trainable(self):
        return keras.layers.Layer.trainable.fget(self)

    @trainable.setter
    def trainable(self, value):
        # Keras's setter makes every wrapped trainable variable trainable; keep `unfrozen`. (Assigning
        # a layer's `trainable` its current value never reaches here: tf's tracking skips it.)
        keras.layers.Layer.trainable.fset(self, value)
        if hasattr(self, "_hub_variables"):
            self._apply_unfrozen()

    def set_unfrozen(self, count: Optional[int]) -> list[str]:
        """Train the last `count` of the module's trainable variables (None: all); their names."""
        self.unfrozen = count
        self._apply_unfrozen()
        return [name for name, weight, _ in self.named_variables() if weight.trainable]

    def serving_resources(self) -> list:
        """What an export must carry beyond the variables: the module itself (its functions may use
        resources such as a text module's vocabulary table)."""
        return [self._module]

    def named_variables(self) -> list[tuple]:
        """(name in the module, Keras weight, trainable in the module) of every variable, in module order."""
        return list(zip(self.variable_names, self._hub_variables, self.module_trainable))

    def trainable_candidates(self) -> list[str]:
        """Names of the module's trainable variables, bottom to top."""
        return [n for n, t in zip(self.variable_names, self.module_trainable) if t]

    def _apply_unfrozen(self):
        positions = [i for i, t in enumerate(self.module_trainable) if t]
        keep = positions if self.unfrozen is None else positions[len(positions) - min(self.unfrozen, len(positions)):]
        keep = set(keep) if self.trainable else set()
        for i, variable in enumerate(self._hub_variables):
            variable.trainable = i in keep

    # --- computation ---

    # No control flow on tensors here: AutoGraph has nothing to convert (and skipping it spares
    # parsing this source at every trace).
    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, training=None):
        x = tf.cast(inputs, tf.float32) if self.info.kind == "image" else inputs  # strings and token ids as they are
        module_training = bool(training) and self.trainable and self.train_mode
        if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context():
            # A module loaded under a strategy holds distributed variables, and its restored functions
            # run only in a replica's context (measured: in the cross-replica context of the scope
            # they fail with "Trying to access a placeholder..."). Feature caching and evaluation
            # call the model there: run it per replica and take the first replica's answer.
            strategy = tf.distribute.get_strategy()
            per_replica = strategy.run(self._invoke, args=(x, module_training))
            outputs = strategy.experimental_local_results(per_replica)[0]
        else:
            outputs = self._invoke(x, module_training)
        if self.trainable and self.trainable_weights:
            for loss in self._regularization_losses:
                self.add_loss(loss())
        return outputs

    @tf.autograph.experimental.do_not_convert
    def _invoke(self, x, training: bool):
        outputs = self._call(x) if self.info.endpoint == "serve" else self._call(x, training=training)
        return outputs[self.output_key] if self.output_key is not None else outputs

    def compute_output_shape(self, input_shape):
        first = next(iter(input_shape.values())) if isinstance(input_shape, dict) else input_shape
        return (first[0], *self.info.output_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"handle": self.handle, "output_key": self.output_key, "train_mode": self.train_mode,
                       "unfrozen": self.unfrozen})
        return config


# One loaded module per folder kept from `get_spec`'s inspection for the first build to use,
# so resolving and building a backbone loads it once. Every build after that loads its own copy:
# two models must never share variables. A module loaded under another tf.distribute strategy
# is not used: its variables must be created under the scope the model is built in.
_SPARE: dict = {}


def _keep_spare(path: str, module) -> None:
    _SPARE[os.path.abspath(path)] = (module, tf.distribute.get_strategy())


def _take_spare(path: str):
    module, strategy = _SPARE.pop(os.path.abspath(path), (None, None))
    return module if module is not None and strategy is tf.distribute.get_strategy() else None


def hub_layer(backbone) -> Optional[HubModule]:
    """The HubModule of a hub backbone (a model whose only weighted layer is one), else None."""
    layers = [layer for layer in getattr(backbone, "layers", []) if layer.weights]
    return layers[0] if len(layers) == 1 and isinstance(layers[0], HubModule) else None
