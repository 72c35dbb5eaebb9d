"""The README's quick starts and the guides' examples run as written, on a new user's machine against the loopback
internet (the `internet` fixture): the blocks marked `<!-- tested: NAME -->` in README.md and docs/ are run verbatim,
in a folder holding the `photos/` they name. An example that cannot run is a bug."""

from __future__ import annotations

import os
import shlex
import shutil

import keras
import pytest
from click.testing import CliRunner

from conftest import write_image_folder
from loopback import KAGGLE_MODELS, TFHUB_URL, legacy_weights, module_archive
from test_backbone_files import source_file  # noqa: F401  (a .keras backbone: the README's source_domain.keras)
from test_downloads import requested_weights_url

ROOT = os.path.join(os.path.dirname(__file__), "..")
PHOTOS = {"cats": (220, 40, 40), "dogs": (40, 60, 220)}


def readme_block(name: str) -> str:
    """The fenced block right after `<!-- tested: NAME ... -->` in README.md or a page of docs/."""
    pages = [os.path.join(ROOT, "README.md")] + [os.path.join(folder, f) for folder, _, files in
                                                 os.walk(os.path.join(ROOT, "docs")) for f in sorted(files)
                                                 if f.endswith(".md")]
    for page in pages:
        with open(page, encoding="utf-8") as f:
            lines = f.read().splitlines()
        found = [i for i, line in enumerate(lines) if line.startswith(f"<!-- tested: {name}")]
        if found:
            start = found[0]
            assert lines[start + 1].startswith("```"), f"no code block after the {name} marker in {page}"
            end = next(i for i in range(start + 2, len(lines)) if lines[i].startswith("```"))
            return "\n".join(lines[start + 2:end])
    raise AssertionError(f"no <!-- tested: {name} --> block in README.md or docs/")


@pytest.fixture
def user_folder(tmp_path, monkeypatch, internet):
    """The user's working folder (the current directory) with photos/<class>/<image>, and EfficientNetB0's ImageNet
    weights file (the default backbone; random values here) where Keras downloads it from."""
    monkeypatch.chdir(tmp_path)
    write_image_folder(tmp_path / "photos", per_class=6, classes=PHOTOS)
    constructor = keras.applications.EfficientNetB0
    url = requested_weights_url(internet, constructor, input_shape=(32, 32, 3))
    internet.serve_keras_weights(url, legacy_weights(constructor(include_top=False, weights=None)))
    keras.backend.clear_session(free_memory=True)
    return tmp_path


def _runs(folder) -> list[str]:
    return sorted(os.listdir(os.path.join(folder, "runs")))


@pytest.mark.long
def test_the_python_quick_start_runs_as_written(user_folder, internet):
    namespace: dict = {}
    exec(readme_block("readme-python"), namespace)  # noqa: S102  (the README's own code)
    result = namespace["result"]
    assert "GET https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5" in internet.requests
    assert result.history["stage"] == [1, 1, 1, 1, 1, 2, 2, 2, 2, 2]  # what the README says it shows
    assert 0.0 <= result.metrics["accuracy"] <= 1.0
    assert result.export_dir == os.path.join("runs/photos", "export", "1")
    assert os.path.isfile(os.path.join(result.export_dir, "saved_model.pb"))


@pytest.mark.long
def test_the_readme_s_other_backbones_run_as_written(
        user_folder, internet, hub_image_module, kerashub_preset, source_file, monkeypatch):  # noqa: F811
    from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS
    from tlkeras.training import budget

    # The block sets no epochs: `auto` gives 12 photos 100 + 100 epochs. Its subject is that each source loads as
    # written (the URLs, the handles, the files); the least budget `auto` gives (5 epochs a stage) is enough for that.
    monkeypatch.setattr(budget, "MIN_STEPS", {"stage1": 1, "stage2": 1})

    block = readme_block("readme-backbones")
    for url in (TFHUB_URL, KAGGLE_MODELS + "google/mobilenet-v2/tensorFlow2/100-224-feature-vector/2"):
        assert url.split("://", 1)[1].split("/", 1)[1].removeprefix("models/") in block  # the README's handles
        internet.serve_hub_module(url, module_archive(hub_image_module))
    internet.serve_kaggle_model(BUILTIN_PRESETS["resnet_50_imagenet"]["kaggle_handle"].removeprefix("kaggle://"),
                                kerashub_preset)
    shutil.copy(source_file, "source_domain.keras")

    exec("import tlkeras\n" + block, {})  # noqa: S102
    runs = _runs(user_folder)
    assert len(runs) == 4, runs
    for run in runs:
        assert os.path.isfile(os.path.join(user_folder, "runs", run, "export", "1", "saved_model.pb")), run


@pytest.mark.long
def test_the_cli_quick_start_runs_as_written(user_folder, internet):
    from tlkeras import cli

    line = readme_block("readme-cli").splitlines()[0]
    args = shlex.split(line)
    assert args[0] == "tlkeras"
    shutil.copytree(os.path.join(ROOT, "configs"), "configs")
    write_image_folder(user_folder / "path" / "to" / "photos", per_class=6, classes=PHOTOS)
    outcome = CliRunner().invoke(cli.main, args[1:])
    assert outcome.exit_code == 0, outcome.output
    assert "GET https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5" in internet.requests
    assert os.path.isfile(os.path.join("runs", "photos", "export", "1", "saved_model.pb"))
