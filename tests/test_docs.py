"""The documentation: the site in docs/ builds strictly and offline (a warning, a broken reference or a config key
without a text fails), the configuration reference is generated from the config's own fields so it cannot drift,
and the README stays a door: short, with links that resolve."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import pytest

from tlkeras import configdoc
from tlkeras.config import FinetuneConfig

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _flat_keys(values: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in values.items():
        if isinstance(value, dict) and key != "backbone_options":
            keys |= _flat_keys(value, f"{prefix}{key}.")
        else:
            keys.add(prefix + key)
    return keys


def test_the_config_reference_names_every_key_once_with_a_text():
    rows = configdoc.reference_rows()
    keys = [row.key for row in rows]
    assert len(keys) == len(set(keys))
    stage2_only = {row.key.split(".", 1)[1] for row in rows
                   if row.key.startswith("stage2.") and row.meaning.startswith(configdoc.STAGE2_ONLY)}
    expected = {key for key in _flat_keys(FinetuneConfig().to_dict())
                if not (key.startswith("stage1.") and key.split(".", 1)[1] in stage2_only)}
    assert set(keys) == expected
    assert all(len(row.meaning) > 10 for row in rows)
    assert {"unfreeze", "layer_decay", "method", "recompute", "lora_rank"} <= stage2_only  # stage 1 refuses them


def test_a_key_without_a_text_fails_the_reference():
    @dataclasses.dataclass
    class Head:
        """A head.

        Args:
            dropout: the rate.
        """

        dropout: float = 0.2
        widths: int = 3

    with pytest.raises(ValueError, match=r"Head\.widths has no text"):
        configdoc._section_rows("head", Head())


def test_the_readme_is_a_door_whose_links_resolve():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    assert len(text.splitlines()) <= 150
    assert "<!-- ci:demo -->" in text and "<!-- ci:test -->" in text
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local and all(os.path.exists(os.path.join(ROOT, link)) for link in local), local


@pytest.mark.long
def test_the_documentation_builds_strictly_and_offline(tmp_path):
    out = tmp_path / "html"
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html",
                           os.path.join(ROOT, "docs"), str(out)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.path.abspath(ROOT)})
    assert done.returncode == 0, done.stderr[-4000:]
    reference = (out / "reference" / "config.html").read_text(encoding="utf-8")
    table = reference[reference.index("<table"):reference.index("</table>")]
    assert table.count("<tr") == len(configdoc.reference_rows()) + 1  # a real table: a row per key, and the header
    for row in configdoc.reference_rows():
        assert f"<code class=\"docutils literal notranslate\"><span class=\"pre\">{row.key}</span></code>" in reference
    api = (out / "reference" / "api.html").read_text(encoding="utf-8")
    for name in ("tlkeras.build_and_finetune", "tlkeras.predict", "tlkeras.methods.Method", "tlkeras.tasks.Task",
                 "tlkeras.inputs.Inputs", "tlkeras.backbones.BackboneSpec"):
        assert f'id="{name}"' in api, name  # each public function and role has its entry
    assert (out / "guides" / "few-labels.html").exists() and (out / "benchmarks" / "results.html").exists()
