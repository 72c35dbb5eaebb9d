"""build_model: [0, 255] pixels -> backbone normalisation -> pretrained backbone -> new head.

The structure of a tlkeras model is owned here and in `tlkeras.modelinfo` (its read side, also reachable
from here): its layer names are read through `get_backbone`, `get_preprocessing` and `get_head_pool`, its
metadata through `model_info`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import keras
import numpy as np

from tlkeras import backbones
from tlkeras.config import HeadConfig, head_config
from tlkeras.heads import build_head
from tlkeras.inputs import get_inputs
from tlkeras.tasks import get_task
from tlkeras.modelinfo import (  # noqa: F401  (the read side, also reached as tlkeras.model.*)
    Classifier, ModelInfo, backbone_name, get_backbone, get_head_pool, get_preprocessing, image_size_of,
    is_text_model, model_info, set_decision, task_of, to_probabilities,
)


def inputs_of(model: keras.Model):
    """The Inputs kind of a tlkeras model (`tlkeras.inputs`): what it takes and how it is served."""
    return get_inputs(model_info(model).inputs)


def build_model(
    backbone: "str | backbones.BackboneSpec" = "efficientnetb0",
    num_classes: int = 2,
    *,
    image_size=None,
    weights="imagenet",
    head: HeadConfig | dict | None = None,
    backbone_options: dict | None = None,
    task: str = "single_label",
    class_names: Optional[list] = None,
    input_options: Optional[dict] = None,
    inputs: Optional[str] = None,
    task_options: Optional[dict] = None,
) -> keras.Model:
    """Build a transfer-learning classifier.

    The model takes float32 RGB pixels in [0, 255] of shape [batch, h, w, 3] (what
    `tlkeras.data.decode_and_resize` yields), normalises them as the backbone expects
    (layer "preprocess"), runs the pretrained base (the nested model "backbone", built
    without its top) and a new head ending in "predictions": softmax probabilities over
    `num_classes`, or one sigmoid probability when `num_classes` is 2.

    Args:
        backbone: a keras.applications family name, case-insensitive (see `list_backbones()`),
            "hub:<handle>", "kerashub:<preset>", a `.keras` file, or a resolved `BackboneSpec`.
            A text backbone (a hub text-embedding module) makes a text classifier: its input
            is a batch of strings.
        num_classes: number of classes (>= 2).
        image_size: int or (height, width); None means the backbone's default size.
        weights: "imagenet", None (random initialisation) or a path to a weights file of
            the backbone (e.g. saved with `model.get_layer("backbone").save_weights(...)`).
        head: `HeadConfig` or a dict of its fields (hidden_units, dropout, l2, pooling).
        backbone_options: extra constructor arguments of the backbone (e.g. {"alpha": 0.35}).
        task: "single_label" (softmax, or one sigmoid unit for 2 classes), "multi_label" (one
            sigmoid per class) or "regression" (`num_classes` values); see `tlkeras.tasks`.
        class_names: the class names, kept in the model's metadata (`model_info`).
        input_options: how the inputs are read in serving, kept in the metadata (an image model's
            {"max_image_pixels": N}: larger images are refused before decoding).
        inputs: the Inputs kind (`tlkeras.inputs`) when it is not the backbone's own, e.g.
            "token_pairs": a text encoder reading sentence pairs (two string inputs).
        task_options: what the Task fixed from the training data (`Task.options`, e.g. a regression
            model's target mean and standard deviation), kept in the metadata; None: the Task's defaults.

    Example:

    >>> model = build_model("mobilenetv2", 3, image_size=32, weights=None,
    ...                     backbone_options={"alpha": 0.35})
    >>> model.input_shape, model.output_shape
    ((None, 32, 32, 3), (None, 3))
    >>> model.get_layer("backbone").name
    'backbone'
    """
    role = get_task(task)
    if not isinstance(num_classes, int) or num_classes < role.min_classes:
        raise ValueError(f"num_classes: {num_classes!r} is not valid: a {role.description} needs at least "
                         f"{role.min_classes} classes.")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"class_names: {len(class_names)} names for {num_classes} classes.")
    task_options = dict(task_options) if task_options is not None else role.options(np.zeros((0, num_classes)), {})
    head_cfg = head_config(head)
    spec = backbone if isinstance(backbone, backbones.BackboneSpec) else backbones.resolve(backbone, backbone_options)
    kind = get_inputs(inputs or spec.modality)
    # === Functional Model ===
    inputs, features = kind.build(spec, kind.size(spec, image_size), weights)
    outputs = build_head(
        features,
        role.output_units(num_classes),
        activation=role.activation(num_classes),
        hidden_units=head_cfg.hidden_units,
        dropout=head_cfg.dropout,
        l2=head_cfg.l2,
        pooling=head_cfg.pooling,
        output=lambda regularizer, name: role.output_layer(num_classes, task_options, regularizer, name),
    )
    # === Metadata ===
    metadata = dataclasses.asdict(ModelInfo(
        task=role.name, inputs=kind.name, backbone=spec.name, source=spec.source,
        block_map=dataclasses.asdict(spec.block_map) if spec.block_map else None,
        class_names=[str(c) for c in class_names] if class_names is not None else None,
        input_options=dict(input_options or {}), task_options=task_options,
    ))
    metadata.pop("extra")
    return Classifier(inputs, outputs, name=f"tlkeras_{spec.slug}", metadata=metadata)


def predict_function(model: keras.Model):
    """A graph-mode `pixels (or strings) -> model outputs` function traced once for any batch size.

    Graph execution is what `model.predict` and the exported SavedModel run; eager calls
    differ from it by ~1e-5 through oneDNN's fused kernels.
    """
    import tensorflow as tf

    fn = getattr(model, "_tlkeras_predict", None)
    if fn is None:
        signature = inputs_of(model).prediction_spec(model)
        fn = tf.function(lambda inputs: model(inputs, training=False), input_signature=[signature])
        model._tlkeras_predict = fn
    return fn
