"""Shared fixtures: tiny image folders, a tiny "pretrained" backbone and a trained run. No network."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

import tlkeras

sys.path.insert(0, os.path.dirname(__file__))  # tests/hub_modules.py

# Two logical CPUs, so tf.distribute strategies with two replicas run in tests (set before any op).
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

# A MobileNetV2 with width 0.35 at 32x32: 0.4 M parameters, builds in about a second.
TINY = {"backbone": "mobilenetv2", "backbone_options": {"alpha": 0.35}, "image_size": 32}
COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def make_image(rng: np.random.Generator, color, size=(40, 48)) -> np.ndarray:
    """A noisy image dominated by `color`, with a random darker square; uint8 RGB."""
    h, w = size
    image = np.clip(rng.normal(color, 25, (h, w, 3)), 0, 255)
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    image[y : y + h // 3, x : x + w // 3] *= 0.4
    return image.astype(np.uint8)


def write_image_folder(root, per_class: int = 8, seed: int = 0, classes=COLORS) -> str:
    """root/<class>/<i>.png|jpg (alternating), separable by colour."""
    rng = np.random.default_rng(seed)
    for name, color in classes.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            image = make_image(rng, color)
            if i % 2:
                data = tf.io.encode_jpeg(image, quality=95).numpy()
                path = os.path.join(root, name, f"{i:03d}.jpg")
            else:
                data = tf.io.encode_png(image).numpy()
                path = os.path.join(root, name, f"{i:03d}.png")
            with open(path, "wb") as f:
                f.write(data)
    return str(root)


def save_colour_backbone(path, informative: bool = True) -> str:
    """A tiny .keras backbone: a 1x1 convolution and global pooling, i.e. the mean colour in 4 random mixes
    (informative on the colour folder), or the same layers with a zero kernel (every image gives the same
    features: nothing to learn from)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    conv = keras.layers.Conv2D(4, 1, name="mix")
    outputs = keras.layers.GlobalAveragePooling2D()(conv(keras.layers.Rescaling(1 / 255)(inputs)))
    model = keras.Model(inputs, outputs, name="informative" if informative else "constant")
    if not informative:
        conv.kernel.assign(np.zeros(conv.kernel.shape, "float32"))
        conv.bias.assign(np.arange(4, dtype="float32"))
    model.save(path)
    return path


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> str:
    return write_image_folder(tmp_path_factory.mktemp("colors"), per_class=8)


@pytest.fixture(scope="session")
def backbone_weights(tmp_path_factory) -> str:
    """A weights file of the tiny backbone with calibrated BatchNormalization statistics.

    Random-initialised backbones with BN in inference mode (moving variance 1) shrink
    activations to ~1e-11 after a few dozen layers, so a frozen one outputs zeros. One
    forward pass in training mode with momentum 0 sets every BN layer's moving statistics
    to those of a batch, which makes the frozen backbone a usable (if random) feature
    extractor - a stand-in for pretrained weights, saved to a file as a user would.
    """
    tf.keras.utils.set_random_seed(1)
    model = tlkeras.build_model(
        TINY["backbone"], 3, image_size=TINY["image_size"], weights=None, backbone_options=TINY["backbone_options"]
    )
    rng = np.random.default_rng(1)
    calibrate_batch_norm(model, np.stack([make_image(rng, c, (32, 32)) for c in list(COLORS.values()) * 6]))
    path = str(tmp_path_factory.mktemp("weights") / "tiny_backbone.weights.h5")
    model.get_layer("backbone").save_weights(path)
    return path


def calibrate_batch_norm(model, pixels) -> None:
    """Set every BatchNormalization layer's moving statistics to those of `pixels` (one forward pass in training
    mode at momentum 0), so that a randomly initialised backbone in inference mode passes signal instead of shrinking
    it to nothing (see `backbone_weights`)."""
    backbone = model.get_layer("backbone")
    momenta = {}
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            momenta[layer.name], layer.momentum = layer.momentum, 0.0
    backbone(model.get_layer("preprocess")(np.asarray(pixels, "float32")), training=True)
    for name, momentum in momenta.items():
        backbone.get_layer(name).momentum = momentum


@pytest.fixture
def tiny(backbone_weights) -> dict:
    """build_and_finetune options for a fast run on the tiny backbone. The report and TensorBoard
    logs are off here (seconds per run); `trained_run` keeps the defaults and tests them."""
    return {**TINY, "weights": backbone_weights, "batch_size": 8, "report": False, "tensorboard": False}


@pytest.fixture
def tiny_model(backbone_weights):
    tf.keras.utils.set_random_seed(0)
    return tlkeras.build_model(
        TINY["backbone"], 3, image_size=TINY["image_size"], weights=backbone_weights,
        backbone_options=TINY["backbone_options"],
    )


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, image_folder, backbone_weights):
    """One short two-stage run on the colour folder, shared by export/predict/CLI tests."""
    out = str(tmp_path_factory.mktemp("run") / "colors")
    return tlkeras.build_and_finetune(
        image_folder, **TINY, weights=backbone_weights, batch_size=8,
        stage1={"epochs": 2, "learning_rate": 1e-2}, stage2={"epochs": 1, "unfreeze": "blocks:2"},
        output_dir=out, top_k=2, verbose=0,
    )


# === The loopback internet (see tests/loopback.py) ===


@pytest.fixture
def internet(tmp_path, monkeypatch):
    """The loopback internet on a new user's machine: every download cache is an empty folder of this test
    (`internet.caches`: Keras's home, TFHUB_CACHE_DIR, huggingface_hub's and kagglehub's caches); no credentials."""
    from keras.src.backend import config as keras_config

    from loopback import Loopback

    caches = {name: str(tmp_path / "caches" / name) for name in ("keras", "tfhub", "huggingface", "kagglehub")}
    for folder in caches.values():
        os.makedirs(folder)
    monkeypatch.setattr(keras_config, "_KERAS_DIR", caches["keras"])  # Keras reads KERAS_HOME once, at import
    monkeypatch.setenv("KERAS_HOME", caches["keras"])
    monkeypatch.setenv("TFHUB_CACHE_DIR", caches["tfhub"])
    monkeypatch.setenv("HF_HUB_CACHE", caches["huggingface"])
    from huggingface_hub import constants as hf_constants  # it too reads its cache's place at import

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", caches["huggingface"])
    monkeypatch.setenv("KAGGLEHUB_CACHE", caches["kagglehub"])
    for variable in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "HF_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    with Loopback(monkeypatch) as net:
        net.caches = caches
        yield net


# === Hub modules and text data (see tests/hub_modules.py) ===


@pytest.fixture(scope="session")
def hub_image_module(tmp_path_factory) -> str:
    """A TF Hub-format image feature-vector module (tf_keras, BatchNormalization, L2), 32x32 input."""
    from hub_modules import save_image_module

    return save_image_module(str(tmp_path_factory.mktemp("hub") / "image_module"))


@pytest.fixture(scope="session")
def hub_text_module(tmp_path_factory) -> str:
    """A TF Hub-format text-embedding module: [N] strings -> [N, 8], with a vocabulary table."""
    from hub_modules import save_text_module

    return save_text_module(str(tmp_path_factory.mktemp("hub") / "text_module"))


TEXT_WORDS = {"warm": ["red", "fire", "apple", "cherry"], "cool": ["blue", "sky", "sea", "leaf", "grass"]}


def text_rows(count: int = 40, seed: int = 0) -> list[tuple[str, str]]:
    """(text, label) rows: "warm" texts use warm words, "cool" ones cool words, plus filler."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        label = list(TEXT_WORDS)[i % 2]
        rows.append((" ".join(rng.choice(TEXT_WORDS[label], 4)) + " and the rest", label))
    return rows


@pytest.fixture(scope="session")
def text_csv(tmp_path_factory) -> str:
    """A CSV with columns review,sentiment (not the default names) of 40 rows."""
    import csv

    path = str(tmp_path_factory.mktemp("text") / "reviews.csv")
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "review", "sentiment"])
        writer.writerows((i, text, label) for i, (text, label) in enumerate(text_rows()))
    return path


@pytest.fixture(scope="session")
def kerashub_preset(tmp_path_factory) -> str:
    """A KerasHub preset folder (save_to_preset): a small ResNet image backbone and its image converter
    with ImageNet mean/std normalisation, as KerasHub's own ResNet presets have."""
    import keras_hub

    keras.utils.set_random_seed(2)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 32],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
        use_pre_activation=False, image_shape=(None, None, 3),
    )
    converter = keras_hub.layers.ResNetImageConverter(
        image_size=(32, 32), scale=[1 / (255 * s) for s in (0.229, 0.224, 0.225)],
        offset=[-m / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))],
    )
    folder = str(tmp_path_factory.mktemp("kerashub") / "tiny_resnet")
    backbone.save_to_preset(folder)
    converter.save_to_preset(folder)
    return folder


BERT_WORDS = sorted({w for words in TEXT_WORDS.values() for w in words} | {"and", "the", "rest", "nothing"})


def save_text_preset(folder: str, family: str, seed: int, **options) -> str:
    """A tiny KerasHub text preset of `family` ("Bert", "DistilBert": 2 transformer layers, hidden 16, max 32 tokens;
    `options` for the backbone, e.g. dropout=0.0) and its WordPiece tokenizer over the words of `text_rows` (a few
    dozen entries), as save_to_preset writes it."""
    import keras_hub

    keras.utils.set_random_seed(seed)
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *BERT_WORDS]
    backbone = getattr(keras_hub.models, f"{family}Backbone")(
        vocabulary_size=len(vocabulary), num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=32, **options)
    backbone.save_to_preset(folder)
    getattr(keras_hub.models, f"{family}Tokenizer")(vocabulary=vocabulary, lowercase=True).save_to_preset(folder)
    return folder


@pytest.fixture(scope="session")
def bert_preset(tmp_path_factory) -> str:
    """A tiny BERT preset folder (see `save_text_preset`)."""
    return save_text_preset(str(tmp_path_factory.mktemp("kerashub") / "tiny_bert"), "Bert", 3)


@pytest.fixture(scope="session")
def still_bert(tmp_path_factory) -> str:
    """The tiny BERT of `bert_preset` without dropout: two runs that should match (resumed and uninterrupted,
    on one device and on two replicas) then can, exactly (dropout's draws are not part of the resume state, and
    differ between replicas)."""
    return save_text_preset(str(tmp_path_factory.mktemp("kerashub") / "still_bert"), "Bert", 3, dropout=0.0)


@pytest.fixture(scope="session")
def hub_bert(tmp_path_factory) -> dict:
    """TF Hub's BERT pair, tiny (see tests/hub_modules.py): {"encoder": folder, "preprocessor": folder} - a
    preprocessing model of TensorFlow Text ops over the vocabulary of `save_text_preset` (16 tokens by
    default) and a 2-layer encoder (hidden 16, at most 32 tokens, no dropout)."""
    from hub_modules import save_bert_encoder, save_bert_preprocessor

    folder = tmp_path_factory.mktemp("hub_bert")
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *BERT_WORDS]
    return {"preprocessor": save_bert_preprocessor(str(folder / "preprocess"), vocabulary),
            "encoder": save_bert_encoder(str(folder / "encoder"), len(vocabulary), dropout=0.0)}


@pytest.fixture(scope="session")
def distilbert_preset(tmp_path_factory) -> str:
    """A tiny DistilBERT preset folder: no segment ids, no pooler (see `save_text_preset`)."""
    return save_text_preset(str(tmp_path_factory.mktemp("kerashub") / "tiny_distilbert"), "DistilBert", 4)


class CtrlC(keras.callbacks.Callback):
    """Presses Ctrl-C (raises KeyboardInterrupt, as Python does on SIGINT) as epoch `at` = (stage, epoch) begins."""

    def __init__(self, at):
        super().__init__()
        self.at, self.stage = at, 1

    def on_epoch_begin(self, epoch, logs=None):
        if (self.stage, epoch + 1) == self.at:
            raise KeyboardInterrupt


@pytest.fixture
def uninstalled(monkeypatch):
    """`uninstalled("keras_hub")`: from then on importing that package fails, as if it were not installed."""
    import builtins

    real_import = builtins.__import__
    hidden = set()

    def guarded(name, *args, **kwargs):
        if name.split(".")[0] in hidden:
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", guarded)
    return hidden.add


def pytest_collection_modifyitems(config, items):
    """The slow and long runs first (a stable sort): on several processes (`pytest -n 2`) they start
    side by side and the short tests fill in, instead of one long run ending the suite alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None and item.get_closest_marker("long") is None)
