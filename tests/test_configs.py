"""The recipes in configs/ are valid configs, and demo.yaml is what the demo runs."""

import glob
import os

import pytest

from tlkeras import backbones, demo
from tlkeras.backbones import hub
from tlkeras.config import load_config

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.yaml")))


def test_there_are_recipes():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"demo.yaml", "folder.yaml", "mobile.yaml", "efficientnet.yaml", "resnet.yaml", "text.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_recipe_loads_and_names_a_real_backbone(path):
    cfg = load_config(path)
    if cfg.backbone.startswith("hub:"):  # resolving would download the module: tests never touch the network
        assert hub.handle_url(cfg.backbone[len("hub:"):]).startswith("https://tfhub.dev/")
        return
    spec = backbones.resolve(cfg.backbone, cfg.backbone_options)
    backbones.resolve_image_size(spec, cfg.image_size)


@pytest.mark.parametrize("path", [p for p in CONFIGS if not load_config(p).backbone.startswith("hub:")],
                         ids=os.path.basename)
def test_recipe_backbone_builds(path):
    """Resolving a name is not building it: configs/efficientnet.yaml named a family that could not be built."""
    import tlkeras

    cfg = load_config(path)
    spec = backbones.resolve(cfg.backbone, cfg.backbone_options)
    model = tlkeras.build_model(spec, 2, image_size=spec.min_size, weights=None)
    assert model.get_layer("backbone").count_params() > 0


def test_demo_yaml_matches_the_demo():
    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "demo.yaml"))
    assert cfg.backbone == demo.BACKBONE and cfg.backbone_options == demo.BACKBONE_OPTIONS
    assert cfg.image_size == demo.IMAGE_SIZE
    assert cfg.batch_size == demo.TRANSFER["batch_size"] and cfg.top_k == demo.TRANSFER["top_k"]
    for stage in ("stage1", "stage2"):
        for key, value in demo.TRANSFER[stage].items():
            assert getattr(getattr(cfg, stage), key) == value, (stage, key)
