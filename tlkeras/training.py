"""Two-stage fine-tuning. A stage is: freeze/unfreeze -> compile -> fit.

Stage 1 trains the head on a frozen backbone; stage 2 unfreezes the top of the backbone
and recompiles at a lower rate. Stage 2 counts epochs on from stage 1 (`initial_epoch`),
so the history, the logs and the checkpoints read as one run.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from tlkeras import freezing
from tlkeras._logging import get_logger
from tlkeras.config import StageConfig
from tlkeras.utils import write_json_atomic

CHECKPOINT_DIR = "checkpoints"
BEST_WEIGHTS = "best.weights.h5"


class RunHistory(keras.callbacks.Callback):
    """Per-epoch metrics of both stages in one record, written to history.json every epoch.

    `records` holds one dict per finished epoch: {"epoch": 1-based, "stage": 1 or 2, metrics...}.
    """

    def __init__(self, path: Optional[str] = None):
        super().__init__()
        self.path = path
        self.records: list[dict] = []
        self.stage = 1

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1, "stage": self.stage}
        for key, value in (logs or {}).items():
            record[key] = float(np.asarray(value))
        if "learning_rate" not in record:
            record["learning_rate"] = current_learning_rate(self.model.optimizer)
        self.records.append(record)
        if self.path:
            write_json_atomic(self.path, self.as_dict())

    def as_dict(self) -> dict[str, list]:
        """Column form: {"epoch": [...], "stage": [...], "loss": [...], ...}."""
        keys: list[str] = []
        for record in self.records:
            keys.extend(k for k in record if k not in keys)
        return {k: [record.get(k) for record in self.records] for k in keys}


def current_learning_rate(optimizer) -> float:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def finetune(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    val_ds: Optional[tf.data.Dataset] = None,
    *,
    stage1: StageConfig | dict | None = None,
    stage2: StageConfig | dict | None = None,
    run_dir: Optional[str] = None,
    class_weight: Optional[dict] = None,
    callbacks: Optional[list] = None,
    verbose: int | str = "auto",
) -> dict[str, list]:
    """Train `model` (from `build_model`) in two stages and return the combined history.

    Args:
        model: a tlkeras model (it has a nested layer "backbone").
        train_ds / val_ds: batched tf.data of (pixels in [0, 255], integer label).
        stage1 / stage2: `StageConfig` or dicts of its fields. Stage 2's learning_rate None
            means stage 1's rate x 0.01. epochs=0 skips a stage.
        run_dir: where the best checkpoint and history.json go (nothing is written if None).
        class_weight: Keras class weights {class index: weight}.
        callbacks: extra Keras callbacks, used in both stages.

    Returns:
        {"epoch": [...], "stage": [...], "loss": [...], "accuracy": [...], "val_loss": ..., ...}

    Example:

    >>> import numpy as np, tensorflow as tf, tlkeras
    >>> model = tlkeras.build_model("mobilenetv2", 2, image_size=32, weights=None,
    ...                             backbone_options={"alpha": 0.35})
    >>> x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    >>> ds = tf.data.Dataset.from_tensor_slices((x, np.arange(8) % 2)).batch(4)
    >>> history = finetune(model, ds, stage1={"epochs": 1}, stage2={"epochs": 1, "unfreeze": 5},
    ...                    verbose=0)
    >>> history["epoch"], history["stage"]
    ([1, 2], [1, 2])
    """
    from tlkeras.config import FinetuneConfig

    cfg = FinetuneConfig.from_dict(
        {"stage1": _as_dict(stage1), "stage2": _as_dict(stage2)}
    )
    log = get_logger()
    recorder = RunHistory(os.path.join(run_dir, "history.json") if run_dir else None)
    shared = [recorder, keras.callbacks.TerminateOnNaN(), *(callbacks or [])]
    if run_dir:
        monitor = "val_loss" if val_ds is not None else "loss"
        os.makedirs(os.path.join(run_dir, CHECKPOINT_DIR), exist_ok=True)
        # One instance across both stages: it keeps the best value seen in the whole run.
        shared.append(
            keras.callbacks.ModelCheckpoint(
                os.path.join(run_dir, CHECKPOINT_DIR, BEST_WEIGHTS),
                monitor=monitor,
                save_best_only=True,
                save_weights_only=True,
            )
        )
    steps = _steps_per_epoch(train_ds)
    epochs_done = 0

    # === Stage 1: the head on a frozen backbone ===
    freezing.freeze_backbone(model)
    if cfg.stage1.epochs > 0:
        log.info("stage 1: backbone frozen; training the head (%s)", _head_summary(model))
        recorder.stage = 1
        epochs_done = run_stage(
            model, train_ds, val_ds, cfg.stage1, learning_rate=cfg.stage1.learning_rate,
            steps_per_epoch=steps, initial_epoch=0, callbacks=shared, class_weight=class_weight, verbose=verbose,
        )

    # === Stage 2: unfreeze the top of the backbone at a lower rate ===
    if cfg.stage2.epochs > 0:
        plan = freezing.unfreeze(
            model,
            cfg.stage2.unfreeze,
            train_bn=cfg.stage2.train_bn,
            bn_momentum=cfg.stage2.bn_momentum if cfg.stage2.train_bn else None,
        )
        rate = cfg.stage2_learning_rate
        log.info("stage 2: unfreeze=%r at learning rate %g: %s", cfg.stage2.unfreeze, rate, plan.describe())
        if run_dir:
            with open(os.path.join(run_dir, "stage2_trainable_layers.txt"), "w", encoding="utf-8") as f:
                f.write("\n".join(plan.layers) + ("\n" if plan.layers else ""))
        recorder.stage = 2
        run_stage(
            model, train_ds, val_ds, cfg.stage2, learning_rate=rate, steps_per_epoch=steps,
            initial_epoch=epochs_done, callbacks=shared, class_weight=class_weight, verbose=verbose,
        )
    return recorder.as_dict()


def run_stage(
    model: keras.Model,
    train_ds,
    val_ds,
    stage: StageConfig,
    *,
    learning_rate: float,
    steps_per_epoch: Optional[int],
    initial_epoch: int,
    callbacks: list,
    class_weight: Optional[dict] = None,
    verbose: int | str = "auto",
) -> int:
    """Compile with this stage's optimizer and fit; return the epoch count reached (initial + run)."""
    model.compile(
        optimizer=make_optimizer(stage, learning_rate, steps_per_epoch),
        loss=loss_for(model),
        metrics=["accuracy"],
    )
    stage_callbacks = list(callbacks)
    if stage.early_stopping:
        stage_callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss" if val_ds is not None else "loss",
                patience=stage.early_stopping,
                restore_best_weights=True,
            )
        )
    history = model.fit(
        train_ds,
        validation_data=val_ds,
        initial_epoch=initial_epoch,
        epochs=initial_epoch + stage.epochs,
        callbacks=stage_callbacks,
        class_weight=class_weight,
        shuffle=False,  # the tf.data pipeline shuffles
        verbose=verbose,
    )
    return initial_epoch + len(history.epoch)


def loss_for(model: keras.Model):
    """Sparse categorical cross-entropy, or binary cross-entropy for a one-unit sigmoid head."""
    if model.output_shape[-1] == 1:
        return keras.losses.BinaryCrossentropy()
    return keras.losses.SparseCategoricalCrossentropy()


def make_optimizer(stage: StageConfig, learning_rate: float, steps_per_epoch: Optional[int]):
    """The stage's optimizer, with warm-up and cosine decay when asked; no weight decay on BN or biases."""
    rate = _schedule(stage, learning_rate, steps_per_epoch)
    decay = stage.weight_decay or None
    if stage.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(rate, weight_decay=stage.weight_decay)
    elif stage.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(rate, momentum=stage.momentum, weight_decay=decay)
    else:
        optimizer = keras.optimizers.Adam(rate, weight_decay=decay)
    if stage.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def _schedule(stage: StageConfig, learning_rate: float, steps_per_epoch: Optional[int]):
    if stage.schedule == "constant" and not stage.warmup_epochs:
        return learning_rate
    if not steps_per_epoch:
        raise ValueError("a learning-rate schedule needs a training dataset of known length")
    total = max(1, stage.epochs * steps_per_epoch)
    warmup = int(math.ceil(stage.warmup_epochs * steps_per_epoch))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else learning_rate,
        decay_steps=max(1, total - warmup),
        # alpha=1 keeps the rate constant after the warm-up
        alpha=1.0 if stage.schedule == "constant" else 0.0,
        warmup_target=learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def _steps_per_epoch(ds) -> Optional[int]:
    n = int(ds.cardinality())
    return n if n > 0 else None


def _head_summary(model) -> str:
    params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return f"{params:,} trainable parameters"


def _as_dict(stage) -> dict:
    import dataclasses

    if stage is None:
        return {}
    if dataclasses.is_dataclass(stage):
        return dataclasses.asdict(stage)
    return dict(stage)
