"""Mixing training examples, labels and all: MixUp and CutMix of images (Keras's own layers) and mixup of the
cached features or activations a stage trains on (manifold mixup, Verma et al. 2019), which keeps the caches.

A mixed example is `lam * a + (1 - lam) * b` of two examples of one batch (b: the batch in a random order), with
`lam ~ Beta(alpha, alpha)` drawn per example as Keras's MixUp does; its target is the same mix of the two examples'
`Task.soft_targets` (single-label: shares of the classes; multi-label: of each label), so a mixed stage compiles the
Task's loss and metrics for soft targets (`Task.loss(soft=True)`). Only training batches are mixed: never the
validation split, evaluation or the serving graph.

Where it applies: the image mixers (`augment.mixup`, `augment.cutmix`) run where images are fed to the model, like
any random image op, so the backbone runs on every batch; `augment.feature_mixup` runs on what a cached stage
trains on - the head on stage 1's features, the top on stage 2's activations at the cut - and costs nothing more.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def mix_features(inputs, targets, alpha: float, seed):
    """`(inputs, targets)` of one batch mixed with the same batch in a random order, per example by
    `lam ~ Beta(alpha, alpha)`; `inputs` a float tensor or a tuple of them (several cut activations), `targets` soft
    targets [N] or [N, C]; `seed` a shape-[2] integer tensor (stateless: one seed mixes one way).

    >>> x = tf.constant([[0.0], [10.0]]); y = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    >>> mixed, soft = mix_features(x, y, 0.4, tf.constant([0, 1]))
    >>> bool(tf.reduce_all(tf.abs(mixed[:, 0] / 10.0 - soft[:, 1]) < 1e-6))  # inputs and targets mixed alike
    True
    """
    seed = tf.cast(seed, tf.int64)
    order_seed, first_seed, second_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    n = tf.shape(targets)[0]
    order = tf.argsort(tf.random.stateless_uniform([n], order_seed))
    # Beta(a, a) as G1 / (G1 + G2) of two Gamma(a) draws (TensorFlow has no stateless Beta).
    first = tf.random.stateless_gamma([n], first_seed, alpha)
    second = tf.random.stateless_gamma([n], second_seed, alpha)
    lam = first / tf.maximum(first + second, 1e-12)

    def mix(t):
        weight = tf.cast(tf.reshape(lam, [-1] + [1] * (t.shape.rank - 1)), t.dtype)
        return weight * t + (1 - weight) * tf.gather(t, order)

    return keras.tree.map_structure(mix, inputs), mix(tf.cast(targets, tf.float32))


@dataclass(frozen=True)
class Mixing:
    """What a run mixes: Beta alphas of the image mixers and of feature mixup (0: off), and the seed.

    >>> Mixing(feature_mixup=0.4).describe()
    'feature mixup (alpha 0.4) on the cached features and activations'
    """

    mixup: float = 0.0
    cutmix: float = 0.0
    feature_mixup: float = 0.0
    seed: int = 0

    @classmethod
    def from_config(cls, augment, seed: int) -> "Mixing":
        return cls(augment.mixup, augment.cutmix, augment.feature_mixup, seed)

    @property
    def images(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    @property
    def features(self) -> bool:
        return self.feature_mixup > 0

    def describe(self) -> str:
        parts = [f"{name} (alpha {alpha:g}) on the training images" for name, alpha in
                 (("MixUp", self.mixup), ("CutMix", self.cutmix)) if alpha > 0]
        if self.cutmix > 0 and self.mixup > 0:
            parts = [f"MixUp (alpha {self.mixup:g}) and CutMix (alpha {self.cutmix:g}) on alternate batches of "
                     "training images"]
        if self.features:
            parts.append(f"feature mixup (alpha {self.feature_mixup:g}) on the cached features and activations")
        return "; ".join(parts) or "nothing"

    # === Image batches (the whole model on the input pipeline) ===

    @functools.cached_property
    def layers(self) -> list:
        """Keras's MixUp and / or CutMix layers (their seed generators' states go into a run's resume state)."""
        layers = []
        if self.mixup > 0:
            layers.append(keras.layers.MixUp(alpha=self.mixup, seed=self.seed + 11))
        if self.cutmix > 0:
            layers.append(keras.layers.CutMix(factor=self.cutmix, seed=self.seed + 12))
        return layers

    def image_mixer(self, task, units: int):
        """fn(batch index, pixels, labels) -> (mixed pixels, mixed soft targets), for a map over training batches."""
        layers = self.layers

        def apply(layer, pixels, targets):
            out = layer({"images": pixels, "labels": targets}, training=True)
            return tf.cast(out["images"], pixels.dtype), tf.cast(out["labels"], tf.float32)

        def mix(index, pixels, labels):
            targets = _as_rows(task.soft_targets(labels, units))
            if len(layers) == 1:
                pixels, targets = apply(layers[0], pixels, targets)
            else:
                pixels, targets = tf.cond(index % 2 == 0, lambda: apply(layers[0], pixels, targets),
                                          lambda: apply(layers[1], pixels, targets))
            return pixels, _as_labels(targets, labels)

        return mix

    # === Cached inputs (a part of the model on features or activations) ===

    def feature_batches(self, ds: tf.data.Dataset, task, units: int) -> tf.data.Dataset:
        """Batches of (cached inputs, label) mixed by `mix_features`: each iteration (epoch) draws afresh, from the
        run's seed."""
        draws = tf.data.Dataset.random(seed=self.seed, rerandomize_each_iteration=True)

        def mix(batch, draw):
            inputs, labels = batch
            inputs = keras.tree.map_structure(lambda t: tf.cast(t, tf.float32) if t.dtype == tf.float16 else t,
                                              inputs)
            return mix_features(inputs, task.soft_targets(labels, units), self.feature_mixup,
                                tf.stack([tf.constant(self.seed, tf.int64), draw]))

        return tf.data.Dataset.zip((ds, draws)).map(mix, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)

    def feature_step(self, task, units: int):
        """fn(inputs, labels, step seed [2]) -> mixed batch, for the loop over arrays in memory
        (`tlkeras.steploop.fit_arrays`), which gives each step of each epoch its own seed."""
        base = np.int64(self.seed)

        def mix(inputs, labels, step_seed):
            seed = tf.stack([tf.constant(base), tf.constant(0, tf.int64)]) + tf.cast(step_seed, tf.int64)
            return mix_features(inputs, task.soft_targets(labels, units), self.feature_mixup, seed)

        return mix


def _as_rows(targets):
    """Soft targets as rows [N, C] (the image layers mix labels of rank 2); a binary task's floats as [N, 1]."""
    return targets if targets.shape.rank == 2 else tf.reshape(targets, [-1, 1])


def _as_labels(targets, labels):
    """Mixed rows back in the shape the Task's soft targets have ([N] for one sigmoid unit)."""
    if labels.shape.rank == 1 and targets.shape[-1] == 1:
        return tf.reshape(targets, [-1])
    return targets
