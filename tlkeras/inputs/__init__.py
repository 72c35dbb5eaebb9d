"""Inputs kinds: what a model takes, in a registry (see `tlkeras.inputs.inputs.Inputs`).

>>> get_inputs("text").signature_input
'text'
"""

from __future__ import annotations

from tlkeras.errors import did_you_mean
from tlkeras.inputs.image import ImageInputs
from tlkeras.inputs.inputs import Inputs
from tlkeras.inputs.text import TextInputs
from tlkeras.inputs.tokens import TokenizedTextInputs

INPUTS: dict[str, Inputs] = {
    "image": ImageInputs(),
    "text": TextInputs(),
    "tokens": TokenizedTextInputs(),
}


def get_inputs(name: "str | Inputs") -> Inputs:
    """The Inputs kind registered under `name`."""
    if isinstance(name, Inputs):
        return name
    if name not in INPUTS:
        raise ValueError(f"inputs {name!r} is not one of {', '.join(INPUTS)}.{did_you_mean(str(name), list(INPUTS))}")
    return INPUTS[name]


__all__ = ["INPUTS", "Inputs", "get_inputs"]
