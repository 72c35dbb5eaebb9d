"""build_model: [0, 255] pixels -> backbone normalisation -> pretrained backbone -> new head; and the
model's metadata (task, inputs kind, backbone, block map, class names, decision), kept in one place.

The structure of a tlkeras model is owned here: its layer names are read through `get_backbone`,
`get_preprocessing` and `get_head_pool`, its metadata through `model_info`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Optional

import keras

from tlkeras import backbones
from tlkeras.config import HeadConfig, head_config
from tlkeras.heads import HEAD_POOL, build_head
from tlkeras.inputs import get_inputs
from tlkeras.tasks import get_task

from tlkeras.backbones.spec import BACKBONE_LAYER  # noqa: E402  (what every backbone source names its base)
from tlkeras.layers import PREPROCESS_LAYER  # noqa: E402,F401  (the image normalisation layer's name)


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
    """

    task: str = "single_label"
    inputs: str = "image"
    backbone: Optional[str] = None
    source: Optional[str] = None
    block_map: Optional[dict] = None
    class_names: Optional[list] = None
    decision: Optional[dict] = None
    input_options: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def task_role(self):
        return get_task(self.task)


_INFO_FIELDS = [f.name for f in dataclasses.fields(ModelInfo) if f.name != "extra"]


def model_info(model: keras.Model) -> ModelInfo:
    """The metadata of a tlkeras model; models saved before it was kept are read from their layers.

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
        task: "single_label" (softmax, or one sigmoid unit for 2 classes) or "multi_label" (one
            sigmoid per class); see `tlkeras.tasks`.
        class_names: the class names, kept in the model's metadata (`model_info`).
        input_options: how the inputs are read in serving, kept in the metadata (an image model's
            {"max_image_pixels": N}: larger images are refused before decoding).
        inputs: the Inputs kind (`tlkeras.inputs`) when it is not the backbone's own, e.g.
            "token_pairs": a text encoder reading sentence pairs (two string inputs).

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
    )
    # === Metadata ===
    metadata = dataclasses.asdict(ModelInfo(
        task=role.name, inputs=kind.name, backbone=spec.name, source=spec.source,
        block_map=dataclasses.asdict(spec.block_map) if spec.block_map else None,
        class_names=[str(c) for c in class_names] if class_names is not None else None,
        input_options=dict(input_options or {}),
    ))
    metadata.pop("extra")
    return Classifier(inputs, outputs, name=f"tlkeras_{spec.slug}", metadata=metadata)


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

