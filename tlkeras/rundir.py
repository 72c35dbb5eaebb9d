"""Reading a finished run directory back: its model, class names and config."""

from __future__ import annotations

import os

from tlkeras.errors import TlkerasError

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.txt"
CONFIG_FILE = "config.yaml"


def read_labels(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.rstrip("\n")]


def load_run(run_dir: str, *, safe_mode: bool = True):
    """(model, class_names, config) of a run directory written by `build_and_finetune`.

    `.keras` files are loaded in Keras's safe mode (no arbitrary code from lambdas).
    """
    import keras

    import tlkeras.layers  # noqa: F401  (registers ImagePreprocessing for deserialisation)
    from tlkeras.config import FinetuneConfig

    model_path = os.path.join(run_dir, MODEL_FILE)
    labels_path = os.path.join(run_dir, LABELS_FILE)
    if not os.path.isfile(model_path) or not os.path.isfile(labels_path):
        raise TlkerasError(
            f"{run_dir!r} is not a finished tlkeras run: it lacks {MODEL_FILE} or {LABELS_FILE}. "
            "Pass the output_dir of a `tlkeras train` run."
        )
    model = keras.models.load_model(model_path, safe_mode=safe_mode)
    config_path = os.path.join(run_dir, CONFIG_FILE)
    config = FinetuneConfig.from_yaml(config_path) if os.path.isfile(config_path) else None
    return model, read_labels(labels_path), config
