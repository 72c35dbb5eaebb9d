"""Loading KerasHub presets: the one place that imports keras_hub and turns its errors into what to do.

Shared by the image (`tlkeras.backbones.kerashub`) and text (`tlkeras.backbones.kerashub_text`) backbones.
"""

from __future__ import annotations

import os
import re

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
        local = os.path.isdir(preset)
        version = _cached_version(preset)
        unversioned = (f"; a kaggle:// handle without a version needs the network: name its version "
                       f"(kerashub:{preset}/{version}) to load it from the cache without network"
                       if version is not None else "")  # kagglehub asks Kaggle for its latest version every time
        hint = ("check that the folder was written by save_to_preset (config.json, metadata.json, model.weights.h5)"
                if local else
                "without network, save the preset on a machine that has it (keras_hub.models.Backbone.from_preset("
                f"{preset!r}).save_to_preset('folder'), and the image converter likewise) and pass "
                "kerashub:/path/to/folder; names KerasHub knows are listed by keras_hub.models.Backbone.presets")
        raise BackboneError(f"backbone: could not load the KerasHub preset {preset!r} ({_reason(e)}{unversioned}); "
                            f"{hint}.") from None


def _reason(error: Exception) -> str:
    """The first line of what KerasHub, kagglehub or huggingface_hub said; "no network?" when no host resolved."""
    text = str(error)
    if re.search(r"NameResolutionError|Name or service not known|nodename nor servname|getaddrinfo failed", text):
        host = re.search(r"host='([^']+)'", text)
        return f"{type(error).__name__}: no network? could not resolve {host.group(1) if host else 'the host'}"
    if not text:
        return type(error).__name__
    first = text.splitlines()[0]
    missing = re.match(r"(Preset (?:kaggle|hf)://\S+ has no config\.json)\.", first)
    if missing:  # KerasHub's words for a remote file it could not get: not there, or no network and no cache
        return f"{type(error).__name__}: {missing.group(1)} (not there, or no network and not in the cache)"
    return f"{type(error).__name__}: {first[:200]}"


def _cached_version(preset: str):
    """The newest version of an unversioned kaggle:// handle in kagglehub's cache, or None."""
    if not preset.startswith("kaggle://") or len(preset[len("kaggle://"):].strip("/").split("/")) != 4:
        return None
    try:
        from kagglehub.config import get_cache_folder
    except ImportError:
        return None
    owner, model, framework, variation = preset[len("kaggle://"):].strip("/").split("/")
    folder = os.path.join(get_cache_folder(), "models", owner, model, framework, variation)
    versions = [int(v) for v in os.listdir(folder) if v.isdigit()] if os.path.isdir(folder) else []
    return max(versions) if versions else None


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
