"""Recomputing a block's activations in the backward pass instead of keeping them (gradient checkpointing).

A transformer layer keeps a dozen activations per token for its backward pass (queries, keys, values, attention
scores and their softmax, the feed-forward's 4x-wide hidden layer, dropout masks). Inside `recomputed(layers)`
each listed layer's training call keeps only its inputs: the backward pass runs the layer's forward again, under
its own tape, and takes the gradients from there. The price is one more forward pass of those layers per step.

Three things make this differ from `tf.recompute_grad` (which Keras's `RematScope` uses on TensorFlow):
- Dropout draws the same masks in the recomputation as in the forward pass: Keras's dropout takes its seeds from
  `SeedGenerator` state variables, which the forward pass advanced; they are set back to what they held before
  it, so the recomputation draws the same seeds (and leaves the states where the forward pass left them).
  With other masks the gradients would belong to another network.
- Gradients are computed only for the variables that train (flagged trainable when the step is traced): a frozen
  kernel's gradient is never asked for, which is what LoRA's frozen backbone needs.
- The recomputation depends on the gradient coming into the layer: without it TensorFlow's executor may run every
  layer's recomputation during the forward pass, as soon as its input exists, and hold them all (measured:
  benchmarks/RESULTS.md, issue 16).

The layers' own `call` is wrapped while the context is open and put back when it closes, so a model saved or
exported afterwards is the plain model; a function traced inside the context keeps the recomputing calls.

Example (a Dense layer with dropout inside: the gradients equal those of the plain call):

>>> import keras, numpy as np, tensorflow as tf
>>> class Block(keras.layers.Layer):
...     def __init__(self, **kw):
...         super().__init__(**kw)
...         self.dense = keras.layers.Dense(4, activation="relu")
...         self.dropout = keras.layers.Dropout(0.5, seed=1)
...     def call(self, x, training=None):
...         return self.dropout(self.dense(x), training=training)
>>> block = Block()
>>> x = tf.constant(np.random.default_rng(0).normal(size=(8, 3)), tf.float32)
>>> _ = block(x)
>>> def grads():
...     with tf.GradientTape() as tape:
...         loss = tf.reduce_sum(block(x, training=True) ** 2)
...     return tape.gradient(loss, block.trainable_variables)
>>> state = [v.numpy() for v in block.non_trainable_variables]  # the dropout's seed state
>>> plain = grads()
>>> for v, s in zip(block.non_trainable_variables, state):
...     _ = v.assign(s)
>>> with recomputed([block]):
...     again = grads()
>>> all(np.allclose(a, b, atol=1e-6) for a, b in zip(plain, again))
True
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterable

import keras
import tensorflow as tf

SEED_STATE = "seed_generator_state"  # the name Keras gives a SeedGenerator's state variable


def candidates(model: keras.Model, layer_names: Iterable[str]) -> list:
    """The blocks of the listed backbone layers worth recomputing one at a time: a layer that holds layers of its
    own (a transformer layer, not a single convolution) and takes a `training` argument - or, when it holds two or
    more such blocks (KerasHub's ViT keeps its transformer blocks inside one encoder layer), those blocks, since
    recomputing the whole encoder at once would hold all its activations again."""
    from tlkeras.freezing import backbone_layers

    wanted = set(layer_names)
    return [block for layer in backbone_layers(model) if layer.name in wanted for block in _blocks(layer)]


def _blocks(layer) -> list:
    if not (_composite(layer) and _takes_training(layer)):
        return []
    inner = [block for sub in layer._flatten_layers(include_self=False, recursive=False) for block in _blocks(sub)]
    return inner if len(inner) >= 2 else [layer]


@contextlib.contextmanager
def recomputed(layers: Iterable[keras.layers.Layer]):
    """Within the block, each layer's training calls keep only their inputs for the backward pass."""
    layers = list(layers)
    for layer in layers:
        layer.call = _recomputing(layer, layer.call)  # an attribute of this object, over the class's method
    try:
        yield layers
    finally:
        for layer in layers:
            try:
                del layer.call
            except AttributeError:
                pass


def _composite(layer) -> bool:
    return any(sub is not layer and sub.weights for sub in layer._flatten_layers(include_self=False))


def _takes_training(layer) -> bool:
    import inspect

    return "training" in inspect.signature(layer.call).parameters


def _underlying(variable):
    """The tf.Variable a Keras variable holds (what a GradientTape watches)."""
    return getattr(variable, "_value", variable)


def _recomputing(layer, call):
    @functools.wraps(call)
    def wrapped(*args, **kwargs):
        flat = tf.nest.flatten((args, kwargs))
        if kwargs.get("training") is not True or any(keras.backend.is_keras_tensor(x) for x in flat):
            return call(*args, **kwargs)  # inference, or Keras building its graph: nothing to keep
        positions = [i for i, x in enumerate(flat) if tf.is_tensor(x)]
        seeds = [v for v in layer.variables if v.name == SEED_STATE]
        # the variables' own flags (what a model's trainable_weights lists): LoRA freezes the layers holding them
        trainable = {id(_underlying(v)) for v in layer.weights if v.trainable}

        def rebuild(tensors):
            values = list(flat)
            for i, t in zip(positions, tensors):
                values[i] = t
            a, k = tf.nest.pack_sequence_as((args, kwargs), values)
            return call(*a, **k)

        @tf.custom_gradient
        def forward(*tensors):
            # In a traced step (fit's, tlkeras's loops) nothing computed here is kept for the backward pass:
            # its gradient is `backward`'s, which needs only `tensors`.
            before = [tf.identity(_underlying(v).read_value()) for v in seeds]
            outputs = rebuild(tensors)

            def backward(*upstream, variables=None):
                variables = list(variables or [])
                asked = [v for v in variables if id(v) in trainable]
                # Only once the backward pass reaches this layer: without the dependency the runtime may run every
                # recomputation as soon as its inputs exist, during the forward pass, and keep them all.
                with tf.control_dependencies(upstream):
                    for v, value in zip(seeds, before):  # the forward pass's dropout seeds again
                        _underlying(v).assign(value)
                    inputs = [tf.identity(t) for t in tensors]
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    floating = [t for t in inputs if t.dtype.is_floating]
                    tape.watch(floating)
                    tape.watch(asked)
                    again = rebuild(inputs)
                grads = tape.gradient(tf.nest.flatten(again), floating + asked, output_gradients=list(upstream))
                input_grads = iter(grads[: len(floating)])
                by_input = [next(input_grads) if t.dtype.is_floating else None for t in inputs]
                by_variable = dict(zip([id(v) for v in asked], grads[len(floating):]))
                return by_input, [by_variable.get(id(v)) for v in variables]

            return outputs, backward

        return forward(*[flat[i] for i in positions])

    return wrapped
