"""Keras layers of tlkeras's own; registered so `.keras` files reload in safe mode."""

from __future__ import annotations

import keras
from keras import ops

from tlkeras.modes import ALL_MODES

PREPROCESS_LAYER = "preprocess"  # the name of a tlkeras image model's ImagePreprocessing layer
_IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="tlkeras")
class ImagePreprocessing(keras.layers.Layer):
    """Map RGB pixels in [0, 255] to the input range a backbone was trained on.

    It is the first layer of every tlkeras model, so the model itself carries its
    normalisation: the training pipeline and both serving signatures feed it the same
    resized pixels and cannot disagree about the scale.

    Args:
        mode: "none" (the backbone normalises itself), "tf" ([-1, 1]), "torch" (ImageNet
            mean/std), "caffe" (BGR minus the ImageNet mean), "unit" ([0, 1]) or "affine"
            (x * scale + offset per channel: a KerasHub preset's image converter).
        backbone_name: the backbone this model was built with, kept for `unfreeze="blocks:N"`.
        scale, offset: per-channel factors of "affine" (three floats each).
        block_map: {"kind", "pattern"} of the backbone's `BlockMap` when it is not found by
            `backbone_name` (a KerasHub preset), so the saved model keeps `blocks:N` working.

    Example:

    >>> import numpy as np
    >>> layer = ImagePreprocessing("tf")
    >>> np.asarray(layer(np.array([[[[0.0, 127.5, 255.0]]]]))).round(3).tolist()
    [[[[-1.0, 0.0, 1.0]]]]
    """

    def __init__(self, mode: str = "none", backbone_name: str | None = None, scale=None, offset=None,
                 block_map: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        if mode not in ALL_MODES:
            raise ValueError(f"mode {mode!r} is not one of {ALL_MODES}")
        if mode == "affine" and (scale is None or offset is None):
            raise ValueError("mode 'affine' needs scale and offset")
        self.mode = mode
        self.backbone_name = backbone_name
        self.scale = [float(v) for v in scale] if scale is not None else None
        self.offset = [float(v) for v in offset] if offset is not None else None
        self.block_map = dict(block_map) if block_map else None

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "unit":
            return x / 255.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_IMAGENET_MEAN_RGB, dtype=x.dtype)
            std = ops.convert_to_tensor(_IMAGENET_STD_RGB, dtype=x.dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "affine":
            scale = ops.convert_to_tensor(self.scale, dtype=x.dtype)
            return x * scale + ops.convert_to_tensor(self.offset, dtype=x.dtype)
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)  # RGB -> BGR
            return x - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=x.dtype)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode, "backbone_name": self.backbone_name})
        if self.mode == "affine":
            config.update({"scale": self.scale, "offset": self.offset})
        if self.block_map:
            config["block_map"] = dict(self.block_map)
        return config
