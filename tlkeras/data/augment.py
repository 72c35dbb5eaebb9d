"""Random augmentation of training batches with Keras 3 preprocessing layers."""

from __future__ import annotations

from typing import Optional

import keras

from tlkeras.config import AugmentConfig


def build_augmenter(augment: AugmentConfig, seed: int) -> Optional[keras.Sequential]:
    """A Sequential of random layers for `augment`, or None when it asks for nothing.

    Layers see pixels in [0, 255] (before the model's own normalisation).

    >>> aug = build_augmenter(AugmentConfig(flip="horizontal", rotation=0.1), seed=0)
    >>> [layer.__class__.__name__ for layer in aug.layers]
    ['RandomFlip', 'RandomRotation']
    >>> [layer.__class__.__name__ for layer in build_augmenter(AugmentConfig(preset="strong"), seed=0).layers]
    ['RandomFlip', 'RandomRotation', 'RandomZoom', 'RandomTranslation', 'RandomContrast', 'RandomBrightness', 'RandAugment', 'RandomErasing']
    """
    if not augment.enabled:
        return None
    augment = augment.resolved()
    layers = []
    if augment.flip:
        layers.append(keras.layers.RandomFlip(augment.flip, seed=seed))
    if augment.rotation:
        layers.append(keras.layers.RandomRotation(augment.rotation, fill_mode="reflect", seed=seed + 1))
    if augment.zoom:
        layers.append(keras.layers.RandomZoom(augment.zoom, fill_mode="reflect", seed=seed + 2))
    if augment.translation:
        t = augment.translation
        layers.append(keras.layers.RandomTranslation(t, t, fill_mode="reflect", seed=seed + 3))
    if augment.contrast:
        layers.append(keras.layers.RandomContrast(augment.contrast, value_range=(0, 255), seed=seed + 4))
    if augment.brightness:
        layers.append(keras.layers.RandomBrightness(augment.brightness, value_range=(0, 255), seed=seed + 5))
    if augment.rand_augment:
        layers.append(keras.layers.RandAugment(value_range=(0, 255), num_ops=augment.rand_augment_ops,
                                               factor=augment.rand_augment, seed=seed + 6))
    if augment.augmix:
        layers.append(keras.layers.AugMix(value_range=(0, 255), factor=augment.augmix, seed=seed + 7))
    if augment.erasing:  # last: a patch erased from what the other ops made
        layers.append(keras.layers.RandomErasing(factor=augment.erasing, value_range=(0, 255), seed=seed + 8))
    return keras.Sequential(layers, name="augment") if layers else None  # the mixers: tlkeras.mixing
