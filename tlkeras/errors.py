"""Errors that tlkeras raises on bad input, and the "did you mean" helper.

Every error a user can cause derives from `TlkerasError` (a `ValueError`), so
the CLI can print it as one line and scripts can catch it in one place.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class TlkerasError(ValueError):
    """Base class of the errors tlkeras raises for bad input."""


class ConfigError(TlkerasError):
    """A configuration key or value is invalid."""


class BackboneError(TlkerasError):
    """A backbone name, weights source or unfreeze choice is invalid."""


class DataError(TlkerasError):
    """The training or validation data cannot be used."""


class ExportError(TlkerasError):
    """An export could not be written, read or verified."""


class SomeExportsFailed(ExportError):
    """Of several formats asked for, some could not be exported; the others were. `written` holds
    {format: path} of those written, `failed` {format: reason} of the others."""

    def __init__(self, written: dict, failed: dict):
        self.written, self.failed = dict(written), dict(failed)
        done = f"; written: {', '.join(self.written.values())}" if self.written else "; nothing was written"
        super().__init__(" ".join(f"{name}: {reason}" for name, reason in self.failed.items()) + done + ".")


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Return up to `n` of `choices` closest to `name`, closest first.

    Matching is case-insensitive. Example:

    >>> closest("mobilenetv", ["mobilenet", "mobilenetv2", "resnet50"])
    ['mobilenetv2', 'mobilenet']
    """
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    matches = difflib.get_close_matches(str(name).lower(), list(lowered), n=n, cutoff=0.6)
    return [lowered[m] for m in matches]


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A " Did you mean ...?" sentence for an error message, or "" if nothing is close."""
    matches = closest(name, choices)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(repr(m) for m in matches) + "?"


class TrainingError(TlkerasError):
    """Training could not go on (the loss became NaN, the device ran out of memory)."""


class Interrupted(TlkerasError):
    """The user stopped a run (Ctrl-C); what finished is saved and the message says how to resume."""
