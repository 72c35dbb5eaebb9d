"""Backbone resolution: one place that turns a `backbone=` string into a `BackboneSpec`.

Example:

>>> from tlkeras import backbones
>>> spec = backbones.resolve("MobileNetV2", {"alpha": 0.35})
>>> (spec.name, spec.preprocessing, spec.default_size, spec.min_size)
('mobilenetv2', 'tf', 224, 32)
>>> backbones.resolve_image_size(spec, 96)
(96, 96)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from tlkeras.backbones import applications, files, hub, kerashub
from tlkeras.backbones.spec import BackboneSpec, BlockMap
from tlkeras.errors import BackboneError

__all__ = ["SOURCES", "BackboneSource", "BackboneSpec", "BlockMap", "resolve", "peek", "list_backbones", "block_map_for",
           "resolve_image_size", "scheme_usage", "source_of"]


def _nothing_to_import(name: str) -> None:
    return None


@dataclass(frozen=True)
class BackboneSource:
    """Where backbones come from, and what it says about itself: `matches(name)` says whether a name is one of its,
    `get_spec(name, options)` resolves it, `peek(name, options)` checks the name without loading anything (no
    TensorFlow work): the spec when it can be had that way, else None. `usage` is its line in `tlkeras backbones`
    (the name as users write it, what it is); `own_weights` what a run records when `weights` means the source's
    own (a module's, a preset's, a file's; None: Keras's ImageNet download); `before_loading(name)` what must be
    imported before a model built on it loads from model.keras."""

    name: str
    matches: Callable[[str], bool]
    get_spec: Callable[..., BackboneSpec]
    peek: Callable[..., Optional[BackboneSpec]] = lambda name, options=None: None
    usage: Optional[tuple] = None
    own_weights: Optional[str] = None
    own_weights_when: tuple = ("imagenet",)  # the `weights` values that mean the source's own
    before_loading: Callable[[str], None] = _nothing_to_import


def _saved_model_folder(name: str, options):  # a Keras (or any TF2) SavedModel folder: loaded as a module
    return hub.get_spec(hub.SCHEME + name, options, default_preprocessing="none")


# Tried in order; a new source is one module plus its line here.
SOURCES: tuple[BackboneSource, ...] = (
    BackboneSource("tensorflow hub", hub.is_hub, hub.get_spec, hub.peek, usage=hub.USAGE,
                   own_weights="the hub module's own weights"),
    BackboneSource("kerashub", kerashub.is_kerashub, kerashub.get_spec, usage=kerashub.USAGE,
                   own_weights="the KerasHub preset's own weights", before_loading=kerashub.before_loading),
    BackboneSource("model file", files.is_model_file, files.get_spec, files.peek, usage=files.USAGE,
                   own_weights="the backbone file's own weights", own_weights_when=(None, "imagenet")),
    BackboneSource("saved model folder", hub.is_saved_model_dir, _saved_model_folder, usage=hub.SAVED_MODEL_USAGE,
                   own_weights="the SavedModel folder's own weights"),
    BackboneSource("keras.applications", lambda name: True, applications.get_spec, applications.get_spec),  # any other
)


def source_of(name: str) -> BackboneSource:
    """The source that takes the backbone name `name` (the first in `SOURCES`).

    >>> source_of("hub:https://tfhub.dev/google/nnlm-en-dim128/2").name, source_of("mobilenetv2").name
    ('tensorflow hub', 'keras.applications')
    """
    return next(source for source in SOURCES if source.matches(str(name).strip()))


def scheme_usage() -> list[tuple]:
    """(how a name is written, what it is) of every source that has a scheme, for `tlkeras backbones`."""
    return [source.usage for source in SOURCES if source.usage]


def resolve(name: str, options: dict | None = None) -> BackboneSpec:
    """Resolve a backbone through the first source in `SOURCES` that takes its name:

    - "hub:<handle>": a TF Hub / Kaggle Models module or a local SavedModel (`tlkeras.backbones.hub`);
    - "kerashub:<preset>": a KerasHub preset name or local preset folder (`tlkeras.backbones.kerashub`);
    - a SavedModel folder (loaded as a hub module);
    - a path to a `.keras` model file whose output is a feature map or vector (`tlkeras.backbones.files`);
    - else a keras.applications family, case-insensitive.
    """
    if not isinstance(name, str) or not name.strip():
        raise BackboneError(f"backbone: {name!r} is not a backbone name; run `tlkeras backbones` for the list.")
    name = name.strip()
    return next(source for source in SOURCES if source.matches(name)).get_spec(name, options)


def peek(name: str, options: dict | None = None) -> Optional[BackboneSpec]:
    """What `resolve` would say about `name` without loading a model, a module or TensorFlow:
    a wrong name or a missing file is the same error; the spec when the source can give it so
    (keras.applications names), else None.

    >>> peek("MobileNetV2").name
    'mobilenetv2'
    >>> peek("hub:/no/such/module")
    Traceback (most recent call last):
    tlkeras.errors.BackboneError: backbone: hub:/no/such/module is neither a URL nor an existing folder; use a tfhub.dev / Kaggle Models URL or handle, or the folder of a SavedModel.
    """
    if not isinstance(name, str) or not name.strip():
        raise BackboneError(f"backbone: {name!r} is not a backbone name; run `tlkeras backbones` for the list.")
    name = name.strip()
    return next(source for source in SOURCES if source.matches(name)).peek(name, options)


def list_backbones() -> list[str]:
    """Names accepted by `backbone=`, sorted (keras.applications families).

    >>> "efficientnetb0" in list_backbones()
    True
    """
    return sorted(applications.NAMES)


def block_map_for(name: str) -> Optional[BlockMap]:
    """The block map of a backbone family by name, or None when it has none."""
    return applications.block_map(name)


def resolve_image_size(spec: BackboneSpec, image_size) -> tuple[int, int]:
    """(height, width) from an int, a pair or None (the backbone's default); checks the minimum."""
    if image_size is None:
        size = (spec.default_size, spec.default_size)
    elif isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        size = (int(image_size[0]), int(image_size[1]))
    if min(size) < spec.min_size:
        raise BackboneError(
            f"image_size: {list(size)} is below the minimum of {spec.display_name} "
            f"({spec.min_size}x{spec.min_size}); use image_size >= {spec.min_size}."
        )
    return size
