"""What tlkeras needs to know about a backbone: how to build it, feed it and cut it into blocks."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from tlkeras.modes import PREPROCESSING_MODES

# Every source builds its base as a model of this name: the nested layer `tlkeras.model.get_backbone` finds.
BACKBONE_LAYER = "backbone"


def check_options(options: dict | None, allowed: tuple, what: str) -> dict:
    """A copy of `backbone_options` for a backbone that is not a keras.applications constructor:
    every key must be one of `allowed`, and `preprocessing`, when given, a mode. `what` names the
    backbone in the error ("a hub module").

    >>> check_options({"preprocessing": "tf"}, ("preprocessing",), "a backbone file")
    {'preprocessing': 'tf'}
    """
    from tlkeras.errors import BackboneError

    options = dict(options or {})
    unknown = sorted(set(options) - set(allowed))
    modes = f"preprocessing: {', '.join(PREPROCESSING_MODES)}"
    if unknown:
        which = (f"the only option is preprocessing ({', '.join(PREPROCESSING_MODES)})" if tuple(allowed) == (
            "preprocessing",) else f"its options are {', '.join(allowed)} ({modes})")
        raise BackboneError(f"backbone_options: {', '.join(unknown)} do not apply to {what}; {which}.")
    if "preprocessing" in options and options["preprocessing"] not in PREPROCESSING_MODES:
        raise BackboneError(f"backbone_options.preprocessing: {options['preprocessing']!r} is not one of "
                            f"{', '.join(PREPROCESSING_MODES)}.")
    return options


@dataclass(frozen=True)
class BlockMap:
    """How a family's layers group into architectural blocks, bottom to top.

    kind="prefix": `pattern` captures a block id from a layer's name (e.g. "block_12" from
    "block_12_expand_BN"); layers whose names do not match belong to the block before them
    (layers before the first match form the "stem").
    kind="end": each layer whose name matches `pattern` ends a block (e.g. Inception's
    "mixed5"); layers after the last match form one final block. Keras lists a functional
    model's layers in topological order, so every layer of a block comes before its end.
    """

    kind: str
    pattern: str

    def split(self, layer_names: Sequence[str]) -> list[list[str]]:
        regex = re.compile(self.pattern)
        blocks: list[list[str]] = []
        keys: list[str] = []
        if self.kind == "prefix":
            for name in layer_names:
                m = regex.search(name)
                key = "".join(g for g in m.groups() if g) if m and m.groups() else (m.group(0) if m else None)
                if key is None:
                    key = keys[-1] if keys else "stem"
                if not keys or key != keys[-1]:
                    keys.append(key)
                    blocks.append([])
                blocks[-1].append(name)
        elif self.kind == "end":
            current: list[str] = []
            for name in layer_names:
                current.append(name)
                if regex.search(name):
                    blocks.append(current)
                    current = []
            if current:
                blocks.append(current)
        else:  # pragma: no cover - table entries are fixed in code
            raise ValueError(f"unknown block map kind {self.kind!r}")
        return blocks


@dataclass(frozen=True)
class BackboneSpec:
    """A resolved backbone choice.

    Attributes:
        name: canonical name, as written in configs (e.g. "mobilenetv2").
        display_name: the library's own spelling (e.g. "MobileNetV2").
        source: where it comes from (e.g. "keras.applications").
        preprocessing: `ImagePreprocessing` mode that maps [0, 255] RGB to the backbone's input.
        default_size / min_size: input side lengths in pixels.
        block_map: how its layers group into blocks, for `unfreeze: "blocks:N"`.
        builder: `builder(image_size, weights, options) -> keras.Model` (include_top=False).
        options: backbone constructor options (e.g. {"alpha": 0.35}).
        modality: the Inputs kind it takes: "image" (RGB pixels), "text" (a batch of strings the
            module tokenises itself) or "tokens" (strings tokenised by `tokenizer` in the model).
        preprocessing_params: parameters of the preprocessing mode ("affine": scale, offset).
        own_weights: the source brings its own weights (a hub module, a preset, a file): the
            model is named after its display name.
        random_init: whether `weights: null` means random initialisation (a model file's null
            means its own weights).
        tokenizer: for a text encoder that takes token ids ("tokens"), `tokenizer() -> layer`
            turning strings into the backbone's inputs (the preset's tokenizer and packer).
        training_defaults: the settings this kind of backbone trains best with, where they differ from
            the general defaults ({"stage1.epochs": 20, ...}, dotted config keys; measured, see
            benchmarks/RESULTS.md): a run applies those its config was not given
            (`FinetuneConfig.with_defaults`).
    """

    name: str
    display_name: str
    source: str
    preprocessing: str
    default_size: int
    min_size: int
    block_map: Optional[BlockMap]
    builder: Callable = field(repr=False, compare=False)
    options: dict = field(default_factory=dict, compare=False)
    modality: str = "image"
    preprocessing_params: dict = field(default_factory=dict, compare=False)
    own_weights: bool = False
    random_init: bool = True
    tokenizer: Optional[Callable] = field(default=None, repr=False, compare=False)
    training_defaults: dict = field(default_factory=dict, compare=False)

    @property
    def slug(self) -> str:
        """The name as it can appear in a model or folder name ("mobilenetv2", "source.keras")."""
        return re.sub(r"[^A-Za-z0-9_.-]", "_", self.display_name if self.own_weights else self.name)

    def check_weights(self, weights) -> None:
        """Refuse, in one line and before any work, `weights` that are neither "imagenet", null nor
        an existing file (a typo such as "imagnet", a file that is not there).

        >>> from tlkeras.backbones import resolve
        >>> resolve("mobilenetv2").check_weights("imagnet")
        Traceback (most recent call last):
        tlkeras.errors.BackboneError: weights: 'imagnet' is neither 'imagenet', null (random initialisation) nor an existing weights file. Did you mean 'imagenet'?
        """
        import os

        from tlkeras.errors import BackboneError, did_you_mean

        if weights is None or weights == "imagenet" or "://" in str(weights) or os.path.isfile(str(weights)):
            return
        choices = (f"'imagenet'{' (its own weights)' if self.own_weights else ''}"
                   f"{', null (random initialisation)' if self.random_init else ''}")
        raise BackboneError(f"weights: {weights!r} is neither {choices} nor an existing weights file."
                            f"{did_you_mean(str(weights).lower(), ['imagenet'])}")

    def build(self, image_size: tuple[int, int], weights):
        """Build the pretrained base (named "backbone") for `image_size`, loading `weights`."""
        return self.builder(image_size, weights, dict(self.options))
