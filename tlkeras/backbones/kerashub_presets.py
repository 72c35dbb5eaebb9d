"""Loading KerasHub presets: the one place that imports keras_hub and turns its errors into what to do.

Shared by the image (`tlkeras.backbones.kerashub`) and text (`tlkeras.backbones.kerashub_text`) backbones.
"""

from __future__ import annotations

import os

from tlkeras.errors import BackboneError

_INSTALL = 'pip install "tlkeras[kerashub]"'


def import_keras_hub(preset: str):
    try:
        import keras_hub
    except ImportError:
        raise BackboneError(f"backbone: kerashub:{preset} needs keras-hub: {_INSTALL}.") from None
    return keras_hub


def load_preset(what, preset: str, **kwargs):
    """`what.from_preset(preset)` with the errors a user meets turned into what to do."""
    try:
        return what.from_preset(preset, **kwargs)
    except Exception as e:  # KerasHub/kagglehub raise many kinds (ValueError, FileNotFoundError, HTTP errors...)
        message = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        local = os.path.isdir(preset)
        hint = ("check that the folder was written by save_to_preset (config.json, metadata.json, model.weights.h5)"
                if local else
                "without network, save the preset on a machine that has it (keras_hub.models.Backbone.from_preset("
                f"{preset!r}).save_to_preset('folder'), and the image converter likewise) and pass "
                "kerashub:/path/to/folder; names KerasHub knows are listed by keras_hub.models.Backbone.presets")
        raise BackboneError(f"backbone: could not load the KerasHub preset {preset!r} ({type(e).__name__}: "
                            f"{message}); {hint}.") from None


def load_weights(backbone, preset: str, weights) -> None:
    """Load `weights` on top of a built preset backbone when it is a file ('imagenet' and None are done by
    `load_preset(..., load_weights=weights is not None)`)."""
    if weights in (None, "imagenet"):
        return
    if not os.path.isfile(str(weights)):
        raise BackboneError(f"weights: {weights!r} is neither 'imagenet' (the preset's weights), null (random "
                            "initialisation) nor an existing weights file.")
    from tlkeras.backbones.applications import load_weights_file

    load_weights_file(backbone, weights, f"kerashub:{preset}")
