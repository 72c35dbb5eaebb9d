"""Every keras.applications family `tlkeras backbones` lists is built as keras.applications builds it - its own
constructor with the arguments a plain `keras.applications.X(include_top=False, weights="imagenet", input_shape=...)`
call takes, so it asks for Keras's own no-top ImageNet weights file - and answers a forward pass; each architecture
(the families that share a block map and differ only in width and depth, e.g. EfficientNetB0-B7) trains its top
block, by its block map, in a stage-2 step.

The weights file each build asks for is recorded where every family asks for it (keras.utils.get_file) and not
downloaded: the models keep their random weights. tests/test_downloads.py downloads files from the loopback host.
(The constructor's arguments are compared rather than the file of a second, plain build: Keras names the file from
the constructor and its arguments alone, and a second build of every family doubled this module's time.)"""

from __future__ import annotations

import functools
import gc
import hashlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import tlkeras
from tlkeras import freezing
from tlkeras.backbones import applications
from tlkeras.model import get_backbone
from tlkeras.training.finetune import finetune
from conftest import calibrate_batch_norm

NOT_DOWNLOADED = "<not downloaded in this test>"
# Several GB each while they train: one xdist worker takes them one after another.
LARGE = {"ConvNeXtBase", "ConvNeXtLarge", "ConvNeXtXLarge", "EfficientNetB7", "EfficientNetV2M", "EfficientNetV2L",
         "InceptionResNetV2", "NASNetLarge"}


@pytest.fixture(autouse=True)
def _free_the_models():
    yield
    keras.backend.clear_session(free_memory=True)  # the next family is built in an empty graph
    gc.collect()


@pytest.fixture
def weights_requests(monkeypatch):
    """Each weights file a keras.applications constructor asks for, as (file name, URL, hash); none is loaded."""
    from keras.src.utils import file_utils

    asked = []

    def get_file(fname=None, origin=None, **kwargs):
        asked.append((fname, origin, kwargs.get("file_hash"), kwargs.get("cache_subdir")))
        return NOT_DOWNLOADED

    real_load = keras.Model.load_weights

    def load_weights(self, filepath, *args, **kwargs):
        return None if filepath == NOT_DOWNLOADED else real_load(self, filepath, *args, **kwargs)

    monkeypatch.setattr(file_utils, "get_file", get_file)
    monkeypatch.setattr(keras.Model, "load_weights", load_weights)
    return asked


@pytest.fixture
def constructor_calls(monkeypatch):
    """Each keras.applications constructor call, as (class name, its keyword arguments); the call goes through."""
    calls = []

    def recording(cls_name):
        real = getattr(keras.applications, cls_name)

        @functools.wraps(real)  # its signature too: tlkeras checks backbone_options against it
        def construct(*args, **kwargs):
            calls.append((cls_name, args, kwargs))
            return real(*args, **kwargs)

        return construct

    for cls_name in applications.APPLICATIONS:
        monkeypatch.setattr(keras.applications, cls_name, recording(cls_name))
    return calls


def check_plain_request(cls_name: str, size: int, options: dict, calls: list, asked: list) -> None:
    """The one constructor call is keras.applications' own with a plain call's arguments (include_top=False, ImageNet
    weights, this input size and options, no name: a family finds its file by its own name), and it asked Keras's
    host for one weights file, a no-top one."""
    assert calls == [(cls_name, (), {"include_top": False, "weights": "imagenet", "input_shape": (size, size, 3),
                                     **options})]
    (request,) = asked
    fname, origin, _, _ = request
    assert origin.startswith("https://storage.googleapis.com/") and "keras-applications/" in origin, request
    assert all("notop" in name.lower().replace("-", "").replace("_", "") for name in (fname, origin)), request


def digests(model) -> dict[str, bytes]:
    """{weight path: digest of its value} of the backbone (exact, without holding a copy of every weight)."""
    return {w.path: hashlib.sha1(np.ascontiguousarray(w.numpy()).tobytes()).digest()
            for w in get_backbone(model).weights}


def _param(name: str):
    cls_name = applications.NAMES[name]
    marks = [pytest.mark.xdist_group("large_backbones")] if cls_name in LARGE else []
    return pytest.param(cls_name, id=cls_name, marks=marks)


# The first (smallest) member of each architecture in keras.applications' table.
ARCHITECTURES = list({id(family): cls
                      for cls, (family, _) in reversed(list(applications.APPLICATIONS.items()))}.values())


@pytest.mark.parametrize("cls_name", [_param(name) for name in tlkeras.list_backbones()])
def test_every_family_asks_for_keras_s_weights_file_and_answers(cls_name, weights_requests, constructor_calls):
    family, _ = applications.APPLICATIONS[cls_name]
    size = family.min_size
    model = tlkeras.build_model(cls_name.lower(), 2, image_size=size, weights="imagenet")
    check_plain_request(cls_name, size, {}, constructor_calls, weights_requests)
    assert get_backbone(model).name == "backbone"
    pixels = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    probabilities = np.asarray(model(pixels))
    assert probabilities.shape == (2, 1) and np.all((probabilities >= 0) & (probabilities <= 1))


@pytest.mark.parametrize("cls_name", sorted(ARCHITECTURES))
def test_each_architecture_trains_its_top_block_in_a_stage_2_step(cls_name):
    family, _ = applications.APPLICATIONS[cls_name]
    size = family.min_size
    keras.utils.set_random_seed(0)
    model = tlkeras.build_model(cls_name.lower(), 2, image_size=size, weights=None)
    pixels = np.random.default_rng(0).uniform(0, 255, (16, size, size, 3)).astype("float32")
    calibrate_batch_norm(model, pixels)  # random weights that pass signal, as pretrained ones do
    before = digests(model)
    data = tf.data.Dataset.from_tensor_slices((pixels[:2], np.array([0, 1]))).batch(2)
    # The family's own top block (its block map) at stage 2's rate with layer decay by block; one step, so no
    # warm-up (which would start it at rate 0)
    history = finetune(model, data, stage1={"epochs": 0}, verbose=0,
                       stage2={"epochs": 1, "unfreeze": "blocks:1", "warmup_epochs": 0, "schedule": "constant"})
    after = digests(model)

    assert history["stage"] == [2] and np.isfinite(history["loss"][0])
    layer_of = {w.path: layer.name for layer in freezing.backbone_layers(model) for w in layer.weights}
    top_block = set(freezing.list_blocks(model)[-1])
    moved = {path for path in before if before[path] != after[path]}
    assert moved, "stage 2 changed no backbone weight"
    assert {layer_of[path] for path in moved} <= top_block  # only the layers above the cut
    assert not any(path.endswith(("moving_mean", "moving_variance")) for path in moved)  # BN frozen


def test_every_architecture_is_trained():
    assert len(ARCHITECTURES) == 14 and "EfficientNetB0" in ARCHITECTURES and "EfficientNetB7" not in ARCHITECTURES


@pytest.mark.parametrize("cls_name, options, size", [
    ("MobileNet", {"alpha": 0.25}, 128),
    ("MobileNet", {"alpha": 0.75}, 160),
    ("MobileNetV2", {"alpha": 0.35}, 96),
    ("MobileNetV2", {"alpha": 1.3}, 224),
    ("MobileNetV3Small", {"minimalistic": True}, 32),
    ("MobileNetV3Large", {"alpha": 0.75}, 32),
    ("EfficientNetV2B0", {"include_preprocessing": False}, 32),
    ("ConvNeXtTiny", {"include_preprocessing": False}, 32),
])
def test_options_and_sizes_that_name_the_weights_file_ask_for_keras_s_file(
        cls_name, options, size, weights_requests, constructor_calls):
    tlkeras.build_model(cls_name, 2, image_size=size, weights="imagenet", backbone_options=options)
    check_plain_request(cls_name, size, options, constructor_calls, weights_requests)
