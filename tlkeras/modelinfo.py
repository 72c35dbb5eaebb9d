"""The read side of a tlkeras model: its class (`Classifier`, which carries the metadata in its config), its
metadata (`model_info`: task, inputs kind, backbone, block map, class names, decision) and the accessors of its
parts (`get_backbone`, `get_preprocessing`, `get_head_pool`). `tlkeras.model` builds models; this module only reads
them, so that what sits below the model (the Inputs kinds, freezing, caching) can read one without importing what
builds it. The layer names of a tlkeras model are spelled here and where the model is built.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Optional

import keras

from tlkeras.backbones.spec import BACKBONE_LAYER  # what every backbone source names its base
from tlkeras.heads import HEAD_POOL
from tlkeras.layers import PREPROCESS_LAYER  # the image normalisation layer's name
from tlkeras.tasks import get_task


@keras.saving.register_keras_serializable(package="tlkeras")
class Classifier(keras.Model):
    """A tlkeras model: a functional `keras.Model` that carries its metadata (see `ModelInfo`) in
    its config, so a `.keras` file keeps it. Read it with `model_info(model)`."""

    def __init__(self, *args, metadata: Optional[dict] = None, **kwargs):
        super().__init__(*args, **kwargs)
        # Kept as JSON text: Keras tracks dicts and lists set on a layer and wraps them.
        self._metadata_json = json.dumps(metadata or {})

    @property
    def metadata(self) -> dict:
        """A copy of the metadata (change it with `update_metadata`)."""
        return json.loads(self._metadata_json)

    def update_metadata(self, **values) -> None:
        self._metadata_json = json.dumps({**self.metadata, **values})

    def get_config(self):
        return {**super().get_config(), "metadata": self.metadata}


@dataclass
class ModelInfo:
    """What a tlkeras model is.

    Attributes:
        task: the Task's name ("single_label", "multi_label"); `.task_role` is the Task itself.
        inputs: what the model takes: "image" (RGB pixels in [0, 255]) or "text" (strings).
        backbone: the backbone's name; source: where it came from ("keras.applications", ...).
        block_map: the backbone's `BlockMap` fields, or None when it has none.
        class_names: the class names in output order.
        decision: what turns probabilities into answers, chosen on validation data (a multi-label
            model's per-class {"thresholds": [...]}), or None.
        input_options: how its Inputs kind reads what clients send, in training and in serving (an
            image model's {"max_image_pixels": ...}); {} for the defaults.
        task_options: what the Task fixed from the training split before training (`Task.options`: a regression
            model's target mean and standard deviation, loss and range); {} for the classifiers.
    """

    task: str = "single_label"
    inputs: str = "image"
    backbone: Optional[str] = None
    source: Optional[str] = None
    block_map: Optional[dict] = None
    class_names: Optional[list] = None
    decision: Optional[dict] = None
    input_options: dict = field(default_factory=dict)
    task_options: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def task_role(self):
        return get_task(self.task)


_INFO_FIELDS = [f.name for f in dataclasses.fields(ModelInfo) if f.name != "extra"]


def model_info(model: keras.Model) -> ModelInfo:
    """The metadata of a tlkeras model; models saved before it was kept are read from their layers.

    >>> from tlkeras.model import build_model
    >>> m = build_model("mobilenetv2", 3, image_size=32, weights=None, backbone_options={"alpha": 0.35},
    ...                 task="multi_label", class_names=["sea", "sun", "sand"])
    >>> info = model_info(m)
    >>> info.task, info.inputs, info.backbone, info.class_names
    ('multi_label', 'image', 'mobilenetv2', ['sea', 'sun', 'sand'])
    """
    stored = dict(getattr(model, "metadata", None) or {})
    if stored:
        known = {k: stored.pop(k) for k in list(stored) if k in _INFO_FIELDS}
        return ModelInfo(**known, extra=stored)
    # A model from an older tlkeras (or a plain functional model): what its layers say.
    text = len(model.input_shape) == 1 or str(model.inputs[0].dtype) == "string"
    try:
        preprocess = model.get_layer(PREPROCESS_LAYER)
    except ValueError:
        preprocess = None
    return ModelInfo(task="single_label", inputs="text" if text else "image",
                     backbone=getattr(preprocess, "backbone_name", None),
                     block_map=getattr(preprocess, "block_map", None) or None)


def set_decision(model: keras.Model, decision: Optional[dict]) -> None:
    """Store the chosen decision (e.g. per-class thresholds) with the model (and so in model.keras)."""
    if not isinstance(model, Classifier):
        raise ValueError(f"model {model.name!r} is not a tlkeras Classifier; build it with tlkeras.build_model.")
    model.update_metadata(decision=dict(decision) if decision else None)


def task_of(model: keras.Model):
    """The Task of a tlkeras model (`model_info(model).task_role`)."""
    return model_info(model).task_role


def get_backbone(model: keras.Model) -> keras.Model:
    """The nested pretrained base of a tlkeras model."""
    try:
        return model.get_layer(BACKBONE_LAYER)
    except ValueError:
        raise ValueError(
            f"model {model.name!r} has no layer named {BACKBONE_LAYER!r}; build it with tlkeras.build_model."
        ) from None


def get_preprocessing(model: keras.Model):
    """The image normalisation layer of a tlkeras image model (None for a text model)."""
    try:
        return model.get_layer(PREPROCESS_LAYER)
    except ValueError:
        return None


def get_head_pool(model: keras.Model):
    """The head's pooling layer (None when the backbone gives vectors)."""
    try:
        return model.get_layer(HEAD_POOL)
    except ValueError:
        return None


def backbone_name(model: keras.Model) -> str | None:
    """The backbone a tlkeras model was built with."""
    return model_info(model).backbone


def is_text_model(model: keras.Model) -> bool:
    """Whether a tlkeras model takes strings (a text classifier) rather than pixels."""
    return model_info(model).inputs == "text"


def image_size_of(model: keras.Model) -> tuple[int, int]:
    if is_text_model(model):
        raise ValueError(f"model {model.name!r} is a text classifier: it takes strings, not images.")
    _, height, width, _ = model.input_shape
    return int(height), int(width)


def to_probabilities(outputs, model: Optional[keras.Model] = None):
    """Model outputs -> class probabilities [N, C], as the model's Task reads them (a single-label
    model's one sigmoid unit p becomes [1 - p, p])."""
    role = task_of(model) if model is not None else get_task("single_label")
    return role.to_probabilities(outputs)
