"""The candidates of a ranking, as users write them: "auto:a,b", "a,b", or a list of names or dicts."""

from __future__ import annotations

import os

from tlkeras.errors import ConfigError

AUTO = "auto:"
USAGE = ("auto:A,B,...", "rank these candidates on the data first (LogME and a linear probe, `tlkeras rank`) and "
                         "train the best")


def is_auto(backbone) -> bool:
    """Whether a `backbone` value asks to rank candidates first ("auto:a,b" or a list).

    >>> is_auto("auto:mobilenetv2,efficientnetb0"), is_auto("mobilenetv2")
    (True, False)
    """
    return isinstance(backbone, (list, tuple)) or (isinstance(backbone, str) and backbone.strip().startswith(AUTO))


def as_auto(names) -> str:
    """The `backbone` value that ranks these candidates first.

    >>> as_auto(["mobilenetv2", " efficientnetb0"]), as_auto("mobilenetv2,resnet50")
    ('auto:mobilenetv2,efficientnetb0', 'auto:mobilenetv2,resnet50')
    """
    if isinstance(names, str):
        names = names.split(",")
    return AUTO + ",".join(name.strip() for name in names)


def parse_candidates(value) -> list[dict]:
    """A list of {"backbone": ..., other config keys} from the ways candidates are written.

    >>> parse_candidates("auto:mobilenetv2, hub:/models/enc")
    [{'backbone': 'mobilenetv2'}, {'backbone': 'hub:/models/enc'}]
    >>> parse_candidates([{"backbone": "mobilenetv2", "weights": None}])
    [{'backbone': 'mobilenetv2', 'weights': None}]
    """
    if isinstance(value, str):
        text = value.strip()
        text = text[len(AUTO):] if text.startswith(AUTO) else text
        items: list = [part.strip() for part in text.split(",") if part.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = []
    out = []
    for item in items:
        if isinstance(item, str) and item.strip():
            out.append({"backbone": item.strip()})
        elif isinstance(item, dict) and isinstance(item.get("backbone"), str) and item["backbone"].strip():
            out.append(dict(item))
        else:
            raise ConfigError(f"backbone candidates: {item!r} is not a backbone name (e.g. "
                              "auto:mobilenetv2,efficientnetb0, or a list of names).")
    if len(out) < 1:
        raise ConfigError(f"backbone candidates: {value!r} names no backbone; list them, e.g. "
                          "auto:mobilenetv2,efficientnetb0.")
    seen: dict = {}
    for candidate in out:
        key = _identity(candidate)
        if key in seen:
            first, again = candidate_label(seen[key]), candidate_label(candidate)
            same = f"{first} listed twice" if first == again else f"{first} and {again} are the same backbone"
            raise ConfigError(f"backbone candidates: {same}; give each candidate once (a dict candidate's 'name' "
                              "tells two settings of one backbone apart).")
        seen[key] = candidate
    return out


def _identity(candidate: dict):
    """What makes two candidates the same: their name, else the backbone - a keras.applications name in any case, a
    file or folder by its real path - with the rest of their settings.

    >>> _identity({"backbone": "MobileNetV2"}) == _identity({"backbone": "mobilenetv2"})
    True
    """
    if candidate.get("name"):
        return ("name", str(candidate["name"]))
    backbone = candidate["backbone"].strip()
    scheme, _, rest = backbone.partition(":") if backbone.startswith(("hub:", "kerashub:")) else ("", "", backbone)
    if os.path.exists(rest):
        rest = os.path.realpath(rest)
    elif not scheme and "/" not in rest and os.sep not in rest:
        rest = rest.lower()
    others = sorted((k, repr(v)) for k, v in candidate.items() if k != "backbone")
    return (scheme, rest, tuple(others))


def candidate_label(candidate: dict) -> str:
    """The name a candidate is shown and recorded under: its "name", else its backbone."""
    return str(candidate.get("name") or candidate["backbone"])
