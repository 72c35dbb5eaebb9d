"""build_model: [0, 255] pixels -> backbone normalisation -> pretrained backbone -> new head."""

from __future__ import annotations

import dataclasses

import keras

from tlkeras import backbones
from tlkeras.config import HeadConfig
from tlkeras.heads import build_head
from tlkeras.layers import ImagePreprocessing

BACKBONE_LAYER = "backbone"
PREPROCESS_LAYER = "preprocess"


def build_model(
    backbone: "str | backbones.BackboneSpec" = "efficientnetb0",
    num_classes: int = 2,
    *,
    image_size=None,
    weights="imagenet",
    head: HeadConfig | dict | None = None,
    backbone_options: dict | None = None,
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

    Example:

    >>> model = build_model("mobilenetv2", 3, image_size=32, weights=None,
    ...                     backbone_options={"alpha": 0.35})
    >>> model.input_shape, model.output_shape
    ((None, 32, 32, 3), (None, 3))
    >>> model.get_layer("backbone").name
    'backbone'
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes: {num_classes!r} is not valid: a classifier needs at least 2 classes.")
    head_cfg = _head_config(head)
    spec = backbone if isinstance(backbone, backbones.BackboneSpec) else backbones.resolve(backbone, backbone_options)
    if spec.modality == "text":
        base = spec.build(None, weights)
        # === Functional Model ===
        inputs = keras.Input((), dtype="string", name="text")
        features = base(inputs)
    else:
        height, width = backbones.resolve_image_size(spec, image_size)
        base = spec.build((height, width), weights)
        # === Functional Model ===
        inputs = keras.Input((height, width, 3), name="image")
        # A block map that the backbone's name does not lead to (KerasHub) travels with the model.
        carried = spec.block_map if backbones.block_map_for(spec.name) != spec.block_map else None
        x = ImagePreprocessing(spec.preprocessing, backbone_name=spec.name, name=PREPROCESS_LAYER,
                               block_map=dataclasses.asdict(carried) if carried else None,
                               **spec.preprocessing_params)(inputs)
        features = base(x)
    outputs = build_head(
        features,
        num_classes,
        hidden_units=head_cfg.hidden_units,
        dropout=head_cfg.dropout,
        l2=head_cfg.l2,
        pooling=head_cfg.pooling,
    )
    return keras.Model(inputs, outputs, name=f"tlkeras_{spec.slug}")


def _head_config(head) -> HeadConfig:
    if head is None:
        return HeadConfig()
    if isinstance(head, HeadConfig):
        return head
    from tlkeras.config import FinetuneConfig

    return FinetuneConfig.from_dict({"head": dict(head)}).head


def get_backbone(model: keras.Model) -> keras.Model:
    """The nested pretrained base of a tlkeras model."""
    try:
        return model.get_layer(BACKBONE_LAYER)
    except ValueError:
        raise ValueError(
            f"model {model.name!r} has no layer named {BACKBONE_LAYER!r}; build it with tlkeras.build_model."
        ) from None


def backbone_name(model: keras.Model) -> str | None:
    """The backbone family a tlkeras model was built with (kept in its preprocessing layer)."""
    try:
        return model.get_layer(PREPROCESS_LAYER).backbone_name
    except (ValueError, AttributeError):
        return None


def is_text_model(model: keras.Model) -> bool:
    """Whether a tlkeras model takes strings (a text classifier) rather than pixels."""
    return len(model.input_shape) == 1 or str(model.inputs[0].dtype) == "string"


def image_size_of(model: keras.Model) -> tuple[int, int]:
    if is_text_model(model):
        raise ValueError(f"model {model.name!r} is a text classifier: it takes strings, not images.")
    _, height, width, _ = model.input_shape
    return int(height), int(width)


def to_probabilities(outputs):
    """Model outputs -> class probabilities [N, C]: a sigmoid unit p becomes [1 - p, p]."""
    from keras import ops

    if outputs.shape[-1] == 1:
        return ops.concatenate([1.0 - outputs, outputs], axis=-1)
    return outputs


def predict_function(model: keras.Model):
    """A graph-mode `pixels (or strings) -> model outputs` function traced once for any batch size.

    Graph execution is what `model.predict` and the exported SavedModel run; eager calls
    differ from it by ~1e-5 through oneDNN's fused kernels.
    """
    import tensorflow as tf

    fn = getattr(model, "_tlkeras_predict", None)
    if fn is None:
        if is_text_model(model):
            signature = tf.TensorSpec([None], tf.string)
        else:
            height, width = image_size_of(model)
            signature = tf.TensorSpec([None, height, width, 3], tf.float32)
        fn = tf.function(lambda inputs: model(inputs, training=False), input_signature=[signature])
        model._tlkeras_predict = fn
    return fn

