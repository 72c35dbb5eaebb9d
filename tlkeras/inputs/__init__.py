"""Inputs kinds: what a model takes, in a registry (see `tlkeras.inputs.inputs.Inputs`).

>>> get_inputs("text").signature_input
'text'
"""

from __future__ import annotations

from tlkeras.errors import did_you_mean
from tlkeras.inputs.image import ImageInputs
from tlkeras.inputs.inputs import Inputs
from tlkeras.inputs.text import TextInputs
from tlkeras.inputs.token_pairs import TokenPairInputs
from tlkeras.inputs.tokens import TokenizedTextInputs

INPUTS: dict[str, Inputs] = {
    "image": ImageInputs(),
    "text": TextInputs(),
    "tokens": TokenizedTextInputs(),
    "token_pairs": TokenPairInputs(),
}


def get_inputs(name: "str | Inputs") -> Inputs:
    """The Inputs kind registered under `name`."""
    if isinstance(name, Inputs):
        return name
    if name not in INPUTS:
        raise ValueError(f"inputs {name!r} is not one of {', '.join(INPUTS)}.{did_you_mean(str(name), list(INPUTS))}")
    return INPUTS[name]


def inputs_for(spec, cfg) -> Inputs:
    """The Inputs kind of a run: what its backbone takes (`spec.modality`), read from the config's
    columns (two text columns: the kind's sentence-pair twin, or a ConfigError naming why not)."""
    return get_inputs(get_inputs(spec.modality).for_columns(cfg.text_column))


def inputs_of_signature(names) -> str:
    """The kind whose export's serving_default takes the inputs `names` ("image" when none does).

    >>> inputs_of_signature(["text_b", "text_a"]), inputs_of_signature(["text"])
    ('token_pairs', 'text')
    """
    found = [name for name, kind in INPUTS.items() if sorted(kind.signature_names) == sorted(names)]
    return found[0] if found else "image"


__all__ = ["INPUTS", "Inputs", "get_inputs", "inputs_for", "inputs_of_signature"]
