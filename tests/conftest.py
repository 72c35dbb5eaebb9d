"""Shared fixtures: tiny image folders, a tiny "pretrained" backbone and a trained run. No network."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

import tlkeras

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
    backbone = model.get_layer("backbone")
    for layer in backbone.layers:
        if hasattr(layer, "momentum"):
            layer.momentum = 0.0
    rng = np.random.default_rng(1)
    pixels = np.stack([make_image(rng, c, (32, 32)) for c in list(COLORS.values()) * 6]).astype("float32")
    backbone(model.get_layer("preprocess")(pixels), training=True)
    path = str(tmp_path_factory.mktemp("weights") / "tiny_backbone.weights.h5")
    backbone.save_weights(path)
    return path


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
