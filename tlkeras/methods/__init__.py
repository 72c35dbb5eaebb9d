"""Stage-2 methods: how stage 2 trains the backbone, in a registry (see `tlkeras.methods.method.Method`).

>>> get_method("lora").recompute_default, get_method("full").recompute_default
(True, False)
>>> get_method("bitfits")
Traceback (most recent call last):
...
ValueError: stage2.method 'bitfits' is not one of full, lora, bitfit. Did you mean 'bitfit'?
"""

from __future__ import annotations

from tlkeras.errors import did_you_mean
from tlkeras.methods.bitfit import BitFit
from tlkeras.methods.full import Full
from tlkeras.methods.lora import Lora
from tlkeras.methods.method import Method, Trained

METHODS: dict[str, Method] = {
    "full": Full(),
    "lora": Lora(),
    "bitfit": BitFit(),
}


def get_method(name: "str | Method") -> Method:
    """The stage-2 method registered under `name` (a Method is returned as it is)."""
    if isinstance(name, Method):
        return name
    if name not in METHODS:
        raise ValueError(f"stage2.method {name!r} is not one of {', '.join(METHODS)}."
                         f"{did_you_mean(str(name), list(METHODS))}")
    return METHODS[name]


__all__ = ["METHODS", "Method", "Trained", "get_method"]
