"""Every download path, end to end against the loopback internet (tests/loopback.py; the `internet` fixture): the real
URLs, the real clients (Keras's get_file, tensorflow_hub's resolver, huggingface_hub, kagglehub), TLS verified; what
the hosts serve is made here in the formats they serve. Each path: download, cache, load, train, then a second run
from the cache with no network; a 404, a cut connection and no network give tlkeras's one-line error naming what to
download and where."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

import tlkeras
from loopback import KAGGLE_MODELS, TFHUB_URL, COMPRESSED, Reply, legacy_weights, module_archive
from test_hub import module_values
from test_kerashub import preset_weights
from tlkeras.backbones import applications
from tlkeras.errors import BackboneError
from tlkeras.model import get_backbone

RUN = {"batch_size": 8, "report": False, "tensorboard": False, "verbose": 0}


def backbone_values(model) -> list[np.ndarray]:
    return [w.numpy() for w in get_backbone(model).weights]


# === keras.applications: storage.googleapis.com/tensorflow/keras-applications/... ===


def requested_weights_url(internet, constructor, **kwargs) -> str:
    """The URL plain keras.applications asks for (include_top=False, ImageNet), read off the loopback host while it
    has nothing to give."""
    before = len(internet.requests)
    with pytest.raises(Exception, match="URL fetch failure"):
        constructor(include_top=False, weights="imagenet", **kwargs)
    (request,) = internet.requests[before:]
    assert request.startswith("GET https://storage.googleapis.com/")
    return request.split(" ", 1)[1]


@pytest.mark.parametrize("name, options, size", [
    ("efficientnetb0", {}, 32),  # the default backbone: its weights file is named after the family
    ("mobilenetv2", {"alpha": 0.35}, 96),  # alpha and the input size name the file
])
def test_imagenet_weights_download_once_load_and_come_from_the_cache_offline(name, options, size, internet):
    constructor = getattr(keras.applications, applications.NAMES[name])
    keras.utils.set_random_seed(0)
    reference = constructor(include_top=False, weights=None, input_shape=(size, size, 3), **options)
    url = requested_weights_url(internet, constructor, input_shape=(size, size, 3), **options)
    internet.serve_keras_weights(url, legacy_weights(reference))

    model = tlkeras.build_model(name, 2, image_size=size, weights="imagenet", backbone_options=options)
    assert internet.requests[-1] == f"GET {url}"  # the file plain keras.applications asks for, asked once
    for ours, theirs in zip(backbone_values(model), [w.numpy() for w in reference.weights], strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert os.path.isfile(os.path.join(internet.caches["keras"], "models", url.rsplit("/", 1)[-1]))

    asked = len(internet.requests)
    with internet.offline():
        again = tlkeras.build_model(name, 2, image_size=size, weights="imagenet", backbone_options=options)
    assert len(internet.requests) == asked  # from the cache
    for ours, theirs in zip(backbone_values(again), backbone_values(model), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def _build_default():
    return tlkeras.build_model("efficientnetb0", 2, image_size=32, weights="imagenet")


def test_no_network_a_404_a_cut_and_a_corrupted_download_each_say_what_to_do(internet):
    constructor = keras.applications.EfficientNetB0  # the default backbone; Keras checks its file's hash
    url = requested_weights_url(internet, constructor, input_shape=(32, 32, 3))
    data = legacy_weights(constructor(include_top=False, weights=None, input_shape=(32, 32, 3)))
    fname = url.rsplit("/", 1)[-1]
    assert fname == "efficientnetb0_notop.h5"
    place = (f"place it at {os.path.join(internet.caches['keras'], 'models', fname)}, "
             "or pass weights='path/to/backbone.weights.h5'")

    with internet.offline(), pytest.raises(BackboneError) as offline:
        _build_default()
    with pytest.raises(BackboneError) as missing:  # nothing served at the URL yet
        _build_default()
    internet.serve_keras_weights(url, data, cut_after=len(data) // 3)
    with pytest.raises(BackboneError) as cut:
        _build_default()
    internet.serve(url, data[:-8] + b"8 bytes!")  # a whole file, but not the bytes Keras knows
    with pytest.raises(BackboneError) as corrupted:
        _build_default()

    for info, why in [(offline, "(no network? [Errno -2] Name or service not known)"),
                      (missing, "(the server answered HTTP 404 Not Found)"),
                      (cut, "(the connection was cut: retrieval incomplete: got only ")]:
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"Could not download the ImageNet weights of EfficientNetB0 {why}"), message
        assert f"Download {url} on a machine with network and {place}" in message
    assert str(corrupted.value).startswith("The downloaded ImageNet weights of EfficientNetB0 are incomplete or "
                                           "corrupted (their checksum is not the one Keras expects")


# === TF Hub / Kaggle Models: tensorflow_hub's resolver, compressed modules ===

KAGGLE_HANDLE = "google/mobilenet-v2/tensorFlow2/100-224-feature-vector/2"


@pytest.mark.parametrize("handle, url", [(TFHUB_URL, TFHUB_URL), (KAGGLE_HANDLE, KAGGLE_MODELS + KAGGLE_HANDLE)],
                         ids=["tfhub.dev", "kaggle handle"])
def test_a_hub_module_downloads_trains_and_comes_from_the_cache_offline(
        handle, url, internet, hub_image_module, image_folder, tmp_path):
    bucket = internet.serve_hub_module(url, module_archive(hub_image_module))
    first = tlkeras.build_and_finetune(image_folder, backbone=f"hub:{handle}", image_size=32, **RUN,
                                       stage1={"epochs": 1}, stage2={"epochs": 1, "unfreeze": 2}, export=False,
                                       output_dir=str(tmp_path / "first"))
    assert internet.requests[0] == f"GET {url}{COMPRESSED}"  # the compressed format, as tensorflow_hub asks
    assert internet.requests[-1] == f"GET {bucket}"
    assert first.history["stage"] == [1, 2]
    asked = len(internet.requests)
    with internet.offline():
        model = tlkeras.build_model(f"hub:{handle}", 3, image_size=32)
    assert len(internet.requests) == asked  # from TFHUB_CACHE_DIR
    assert os.listdir(internet.caches["tfhub"])
    served, loaded = module_values(hub_image_module), module_values(tlkeras.freezing.hub_module(model))
    assert sorted(loaded) == sorted(served)
    for name, value in served.items():
        np.testing.assert_array_equal(loaded[name], value)


def test_a_hub_module_that_is_not_there_or_cut_or_offline_is_one_line(internet, hub_image_module):
    with pytest.raises(BackboneError) as missing:  # nothing served
        tlkeras.build_model(f"hub:{TFHUB_URL}", 3, image_size=32)
    archive = module_archive(hub_image_module)
    internet.serve_hub_module(TFHUB_URL, archive, cut_after=len(archive) // 2)
    with pytest.raises(BackboneError) as cut:
        tlkeras.build_model(f"hub:{TFHUB_URL}", 3, image_size=32)
    with internet.offline(), pytest.raises(BackboneError) as offline:
        tlkeras.build_model(f"hub:{TFHUB_URL}", 3, image_size=32)
    for info, why in [(missing, "the server answered HTTP 404 Not Found"),
                      (cut, "what came back is not a whole module archive (a cut download?)"),
                      (offline, "no network? [Errno -2] Name or service not known")]:
        message = str(info.value)
        assert "\n" not in message, message
        assert message.startswith(f"backbone: could not fetch hub:{TFHUB_URL} ({why}). "), message
        assert f"put the module where TFHUB_CACHE_DIR points (looked in {internet.caches['tfhub']}" in message


# === KerasHub presets: hf:// through huggingface_hub; kaggle:// and preset names through kagglehub ===

HF_REPO = "tlkeras-tests/tiny-resnet"


def assert_preset_weights(model, preset_folder: str) -> None:
    backbone = get_backbone(model)
    for name, values in preset_weights(preset_folder).items():
        for ours, theirs in zip(backbone.get_layer(name).weights, values, strict=True):
            np.testing.assert_array_equal(ours.numpy(), theirs)


def test_a_kerashub_preset_on_hugging_face_downloads_trains_and_comes_from_the_cache_offline(
        internet, kerashub_preset, image_folder, tmp_path):
    internet.serve_hf_repo(HF_REPO, kerashub_preset)
    result = tlkeras.build_and_finetune(image_folder, backbone=f"kerashub:hf://{HF_REPO}", **RUN,
                                        stage1={"epochs": 1}, stage2={"epochs": 1, "unfreeze": 3}, export=False,
                                        output_dir=str(tmp_path / "run"))
    assert result.history["stage"] == [1, 2]
    fetched = {r.rsplit("/", 1)[-1] for r in internet.requests if r.startswith(f"GET https://huggingface.co/{HF_REPO}")}
    assert {"config.json", "model.weights.h5"} <= fetched
    asked = len(internet.requests)
    with internet.offline():
        model = tlkeras.build_model(f"kerashub:hf://{HF_REPO}", 3, image_size=32)
    assert len(internet.requests) == asked  # from the huggingface_hub cache
    assert_preset_weights(model, kerashub_preset)


def test_a_hugging_face_preset_that_is_not_there_or_offline_is_one_line(internet, kerashub_preset):
    # the Hub answers an unknown repo with 401 RepoNotFound (it does not tell private repos from missing ones)
    internet.handle_prefix("https://huggingface.co/", lambda method, url, body: Reply(
        401, b"Repository not found", {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}))
    with pytest.raises(BackboneError) as missing:
        tlkeras.build_model("kerashub:hf://tlkeras-tests/no-such-repo", 3, image_size=32)
    with internet.offline(), pytest.raises(BackboneError) as offline:  # nothing cached yet
        tlkeras.build_model(f"kerashub:hf://{HF_REPO}", 3, image_size=32)
    for info, preset in [(missing, "hf://tlkeras-tests/no-such-repo"), (offline, f"hf://{HF_REPO}")]:
        message = str(info.value)
        assert "\n" not in message, message
        assert message.startswith(f"backbone: could not load the KerasHub preset {preset!r} ("), message
        assert f"save the preset on a machine that has it (keras_hub.models.Backbone.from_preset({preset!r})" in message
    assert "(RepositoryNotFoundError: 401 Client Error.)" in str(missing.value)
    assert "has no config.json (not there, or no network and not in the cache)" in str(offline.value)


def _resnet_handle() -> str:
    """The Kaggle handle KerasHub gives its preset "resnet_50_imagenet" (owner/model/framework/variation/version)."""
    from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS

    return BUILTIN_PRESETS["resnet_50_imagenet"]["kaggle_handle"].removeprefix("kaggle://")


@pytest.mark.parametrize("preset", ["resnet_50_imagenet", "kaggle://" + _resnet_handle()],
                         ids=["preset name", "kaggle handle"])
def test_a_kerashub_preset_on_kaggle_downloads_and_comes_from_the_cache_offline(preset, internet, kerashub_preset):
    internet.serve_kaggle_model(_resnet_handle(), kerashub_preset)
    model = tlkeras.build_model(f"kerashub:{preset}", 3, image_size=32)
    downloads = {r.rsplit("/", 1)[-1] for r in internet.requests
                 if r.startswith("GET https://storage.googleapis.com/kaggle-models-data/")}
    assert {"config.json", "model.weights.h5"} <= downloads
    asked = len(internet.requests)
    with internet.offline():
        again = tlkeras.build_model(f"kerashub:{preset}", 3, image_size=32)
    assert len(internet.requests) == asked  # from KAGGLEHUB_CACHE
    assert os.listdir(internet.caches["kagglehub"])
    for built in (model, again):
        assert_preset_weights(built, kerashub_preset)


def test_a_kaggle_handle_without_a_version_offline_says_to_name_one(internet, kerashub_preset):
    handle = _resnet_handle()
    unversioned = "kaggle://" + handle.rsplit("/", 1)[0]
    internet.serve_kaggle_model(handle, kerashub_preset)
    tlkeras.build_model(f"kerashub:{unversioned}", 3, image_size=32)  # asks Kaggle for the latest version
    with internet.offline(), pytest.raises(BackboneError) as info:  # kagglehub asks again, cached or not
        tlkeras.build_model(f"kerashub:{unversioned}", 3, image_size=32)
    with pytest.raises(BackboneError) as missing:
        tlkeras.build_model("kerashub:kaggle://keras/resnetv1/keras/no_such_preset/1", 3, image_size=32)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"backbone: could not load the KerasHub preset {unversioned!r} (ConnectionError: no "
                              "network? could not resolve api.kaggle.com")
    version = handle.rsplit("/", 1)[1]
    assert f"name its version (kerashub:{unversioned}/{version}) to load it from the cache without network" in message
    # Kaggle's 404 for each of its files, as KerasHub words it
    assert "(ValueError: Preset kaggle://keras/resnetv1/keras/no_such_preset/1 has no config.json (not there" in str(
        missing.value) and "\n" not in str(missing.value)
