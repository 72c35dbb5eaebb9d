"""Callbacks of a run: the history of both stages, the best checkpoint, the NaN guard."""

from __future__ import annotations


import math
import time
from typing import Optional

import keras
import numpy as np

from tlkeras.utils import check_free_space, atomic_path, write_json_atomic

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


class BestCheckpoint(keras.callbacks.Callback):
    """Keep the weights of the best epoch (by `monitor`) of the whole run in `path`.

    The model that fits may be a part of `model` (the head, the top of the backbone); the file
    always holds the whole model. The best weights are copied in memory when they improve and
    written at most every `min_interval` seconds and at the end of each stage, so a cached stage
    whose epochs take milliseconds does not spend its time writing files. Written aside and
    renamed, so never half-written.
    """

    def __init__(self, model: keras.Model, path: str, monitor: str = "val_loss", min_interval: float = 60.0):
        super().__init__()
        self.target, self.path, self.monitor, self.min_interval = model, path, monitor, min_interval
        self.best = math.inf
        self.written_best = math.inf  # the value of the epoch in the file
        self._pending: Optional[list] = None
        self._pending_best = math.inf
        self._last_write = -math.inf

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not value < self.best:
            return
        self.best = self._pending_best = float(value)
        self._pending = [w.numpy().copy() for w in self.model.weights]
        if time.monotonic() - self._last_write >= self.min_interval:
            self._flush()

    def on_train_end(self, logs=None):
        self._flush()

    def flush(self):
        """Write the pending best weights now (also called when a run is interrupted)."""
        self._flush()

    def _flush(self):
        if self._pending is None:
            return
        current = [w.numpy() for w in self.model.weights]
        for w, value in zip(self.model.weights, self._pending):
            w.assign(value)
        try:
            # HDF5 does not survive a full disk (a segfault, or a RuntimeError from h5py): refuse first
            optimizer = getattr(self.target, "optimizer", None)  # save_weights writes its variables too
            variables = list(self.target.weights) + list(getattr(optimizer, "variables", None) or [])
            sizes = [int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables]
            check_free_space(self.path, int(sum(sizes) * 1.1) + (512 << 10))
            with atomic_path(self.path, suffix=".weights.h5") as tmp:
                self.target.save_weights(tmp)
        finally:
            for w, value in zip(self.model.weights, current):
                w.assign(value)
        self._pending = None
        self.written_best = self._pending_best
        self._last_write = time.monotonic()


class StopOnNaN(keras.callbacks.Callback):
    """Stop a stage on the first non-finite loss and put back the weights of the last finished
    epoch (or of the stage's start), so what the run keeps is never NaN. `tripped` then holds
    (epoch, learning rate) for the error message."""

    def __init__(self):
        super().__init__()
        self.tripped: Optional[tuple] = None
        self._good: Optional[list] = None
        self._epoch = 0

    def on_train_begin(self, logs=None):
        self.tripped = None
        self._good = [w.numpy().copy() for w in self.model.weights]

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(np.asarray(loss))) and self.tripped is None:
            self.tripped = (self._epoch + 1, current_learning_rate(self.model.optimizer))
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.tripped is None:
            self._good = [w.numpy().copy() for w in self.model.weights]

    def on_train_end(self, logs=None):
        if self.tripped is not None and self._good is not None:
            for w, value in zip(self.model.weights, self._good):
                w.assign(value)


def current_learning_rate(optimizer) -> float:
    """The optimizer's rate now, as the float32 it is (7 significant digits: 0.01, not 0.009999999776)."""
    return float(f"{float(keras.ops.convert_to_numpy(optimizer.learning_rate)):.7g}")
