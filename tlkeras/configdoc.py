"""The config reference, generated from the config's own fields and docstrings so it cannot drift.

Each section's class documents its fields in an "Args:" or "Attributes:" block (`name: text`, or `a / b: text`
for fields that share one text; continuation lines indented deeper); `reference_rows()` pairs every field with
its default (of `FinetuneConfig()`: stage 1 and stage 2 differ) and that text. A field without a text is an error,
so a new key cannot go undocumented: the documentation build and the tests call this.

>>> rows = {row.key: row for row in reference_rows()}
>>> rows["batch_size"].default, rows["stage2.layer_decay"].default, rows["stage1.epochs"].default
('32', '0.7', 'auto')
>>> "stage1.unfreeze" in rows, rows["stage2.unfreeze"].meaning.startswith("stage 2 only.")
(False, True)
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import NamedTuple

from tlkeras.config import AugmentConfig, FinetuneConfig, HeadConfig, SelfTrainingConfig, StageConfig

SECTIONS = {"head": HeadConfig, "stage1": StageConfig, "stage2": StageConfig, "augment": AugmentConfig,
            "self_training": SelfTrainingConfig}
STAGE2_ONLY = "stage 2 only."
_ENTRY = re.compile(r"^(\w+(?:\s*/\s*\w+)*):\s*(.*)$")


class Row(NamedTuple):
    key: str  # the dotted key, as --set and YAML spell it
    default: str  # as YAML would write it
    meaning: str


def field_docs(cls) -> dict[str, str]:
    """{field name: its text} from the "Args:" / "Attributes:" block of `cls`'s docstring.

    >>> field_docs(HeadConfig)["pooling"]
    '"avg" or "max" global pooling of the backbone\\'s feature map.'
    """
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    docs: dict[str, str] = {}
    inside, names = False, []
    for line in lines:
        if line.strip() in ("Args:", "Attributes:"):
            inside, names = True, []
            continue
        if not inside:
            continue
        if line and not line.startswith(" "):  # the block ended
            inside = False
            continue
        body = line.strip()
        match = _ENTRY.match(body) if line.startswith("    ") and not line.startswith("     ") else None
        if match:
            names = [n.strip() for n in match.group(1).split("/")]
            for name in names:
                docs[name] = match.group(2)
        elif body and names:
            for name in names:
                docs[name] += " " + body
    return docs


def reference_rows() -> list[Row]:
    """Every key of the config with its default and meaning, in the order of the fields (each section's keys
    where the section is); raises ValueError naming a field that has no text."""
    defaults = FinetuneConfig()
    rows = []
    top = field_docs(FinetuneConfig)
    for f in dataclasses.fields(FinetuneConfig):
        if f.name in SECTIONS:
            rows.extend(_section_rows(f.name, getattr(defaults, f.name)))
        else:
            rows.append(Row(f.name, _yaml(getattr(defaults, f.name)), _text(top, f.name, "FinetuneConfig")))
    return rows


def _section_rows(name: str, section) -> list[Row]:
    docs = field_docs(type(section))
    rows = []
    for f in dataclasses.fields(section):
        meaning = _text(docs, f.name, type(section).__name__)
        if name == "stage1" and meaning.startswith(STAGE2_ONLY):
            continue  # stage 1 trains the head only: the config refuses these keys there
        rows.append(Row(f"{name}.{f.name}", _yaml(getattr(section, f.name)), meaning))
    return rows


def _text(docs: dict, name: str, owner: str) -> str:
    if not docs.get(name):
        raise ValueError(f"{owner}.{name} has no text in its class's docstring (Args: or Attributes:); the config "
                         "reference is generated from it.")
    return docs[name]


def _yaml(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value) if value.strip() != value or not value else value
    return str(value)


def markdown_table() -> str:
    """The reference as a Markdown table (key, default, meaning), one row per key.

    >>> table = markdown_table().splitlines()
    >>> table[0], len(table) == len(reference_rows()) + 2
    ('| key | default | meaning |', True)
    """
    out = ["| key | default | meaning |", "| --- | --- | --- |"]
    for row in reference_rows():
        meaning = row.meaning.replace("|", "\\|")
        out.append(f"| `{row.key}` | `{row.default}` | {meaning} |")
    return "\n".join(out) + "\n"
