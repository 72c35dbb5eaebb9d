"""Callbacks of a run: the history of both stages, the best checkpoint, the NaN guard."""

from __future__ import annotations


import math
import time
from typing import Optional

import keras
import numpy as np

from tlkeras.atomic import check_free_space, atomic_path, write_json_atomic

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


class AccuracyThenLoss:
    """Which epoch is best, as one number to minimise (what `BestCheckpoint` and the resume state keep): the highest
    `accuracy`, and among epochs of equal accuracy the lowest `loss` - what a user watching the run calls best. The
    loss alone can pick an epoch far less accurate than the last (a confident early epoch: 0.33 against 0.64 seen on a
    3-class task). Encoded as -accuracy + 1e-7 * loss / (1 + loss): the loss term stays below 1e-7, less than any
    difference of accuracy on fewer than ten million examples.

    >>> score = AccuracyThenLoss("val_accuracy", "val_loss")
    >>> score({"val_accuracy": 0.64, "val_loss": 1.27}) < score({"val_accuracy": 0.33, "val_loss": 1.20})
    True
    >>> score({"val_accuracy": 0.5, "val_loss": 0.7}) < score({"val_accuracy": 0.5, "val_loss": 0.9})
    True
    """

    def __init__(self, accuracy: str, loss: str):
        self.accuracy, self.loss = accuracy, loss

    def __call__(self, logs: dict) -> Optional[float]:
        accuracy, loss = logs.get(self.accuracy), logs.get(self.loss)
        if accuracy is None or loss is None or not (math.isfinite(accuracy) and math.isfinite(loss)):
            return None
        loss = max(float(loss), 0.0)
        return -float(accuracy) + 1e-7 * loss / (1.0 + loss)

    def __repr__(self) -> str:
        return f"{self.accuracy} (ties: {self.loss})"

    def clearly_better(self, best: dict, last: dict, count: int) -> bool:
        """Whether the `best` epoch's accuracy beats the `last` one's by more than `count` examples can tell apart
        by chance: two standard errors of an accuracy at their mean, and at least one example - or the last epoch's
        loss diverged (above twice the best's and 1 more). The best of many epochs on 20 validation images is
        mostly the luckiest: restore_best puts an earlier epoch back only when it is clearly better (a stage that
        diverged), else the last epoch - the end of the schedule - stays.

        >>> rule = AccuracyThenLoss("val_accuracy", "val_loss")
        >>> rule.clearly_better({"val_accuracy": 0.85}, {"val_accuracy": 0.75}, 20)  # 2 images of 20
        False
        >>> rule.clearly_better({"val_accuracy": 0.85}, {"val_accuracy": 0.75}, 500)
        True
        >>> rule.clearly_better({"val_accuracy": 0.9}, {"val_accuracy": 0.2}, 20)  # diverged
        True
        >>> rule.clearly_better({"val_accuracy": 0.67, "val_loss": 1.08}, {"val_accuracy": 0.33, "val_loss": 424.0}, 6)
        True
        """
        mine, theirs = best.get(self.accuracy), last.get(self.accuracy)
        if mine is None or theirs is None or not math.isfinite(theirs):
            return True
        best_loss, last_loss = best.get(self.loss), last.get(self.loss)
        if best_loss is not None and last_loss is not None and (
                not math.isfinite(last_loss) or last_loss > max(2 * best_loss, best_loss + 1.0)):
            return True  # the loss diverged, whatever a few examples' accuracy says
        p = (mine + theirs) / 2
        margin = max(2 * math.sqrt(max(p * (1 - p), 0.0) / max(count, 1)), 1 / max(count, 1))
        return mine - theirs > margin


class BestCheckpoint(keras.callbacks.Callback):
    """Keep the weights of the best epoch (by `monitor`: a logs key to minimise, or a function of the epoch's logs
    that returns a number to minimise, e.g. `AccuracyThenLoss`) of the whole run in `path`.

    The model that fits may be a part of `model` (the head, the top of the backbone); the file
    always holds the whole model. The best weights are copied in memory when they improve (those
    of the part that fits: the rest of the model does not change while it fits) and written when
    `min_interval` seconds have passed since the last write (or since the run began), when the run
    ends (`flush`) and when it is interrupted - not after every stage: a short run writes the file
    once. `RunCheckpointer` keeps the copy in `resume.npz` after every epoch, so a killed run loses
    no best epoch either. Written aside and renamed, so never half-written.

    When a later stage begins, the copy is completed with the rest of the model (that stage may change
    weights the best epoch's did not train), up to `in_memory_bytes`; a model larger than that is written
    then. A run whose best epoch is in its last stage never copies the rest. `put_back` returns the model
    to the best epoch without reading the file.
    """

    def __init__(self, model: keras.Model, path: str, monitor: str = "val_loss", min_interval: float = 60.0,
                 in_memory_bytes: int = 256 << 20):
        super().__init__()
        self.target, self.path, self.monitor, self.min_interval = model, path, monitor, min_interval
        self.in_memory_bytes = in_memory_bytes
        self._weights = list(model.weights)  # once: Keras walks every layer for `weights` (0.1 s on MobileNetV2)
        self._index = {id(w): i for i, w in enumerate(self._weights)}
        self.best = math.inf
        self.epoch: Optional[int] = None  # 1-based epoch of the run the best weights are from
        # index in model.weights -> the best epoch's value (every weight that changed since); None: in the file only
        self.values: Optional[dict] = {}
        self.written_best = math.inf  # the value of the epoch in the file
        self.written_epoch: Optional[int] = None
        self._last_write = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = self.monitor(logs) if callable(self.monitor) else logs.get(self.monitor)
        if value is None or not value < self.best:
            return
        self.best, self.epoch = float(value), epoch + 1
        self.values = {self._index[id(w)]: w.numpy().copy() for w in self.model.weights}
        if time.monotonic() - self._last_write >= self.min_interval:
            self._flush()

    def on_train_begin(self, logs=None):
        # Before this stage changes anything: the rest of the model still holds the best epoch's values.
        if self.epoch is None or self.values is None:
            return
        weights = self._weights
        rest = [i for i in range(len(weights)) if i not in self.values]
        size = sum(int(np.prod(weights[i].shape)) * np.dtype(weights[i].dtype).itemsize for i in rest)
        if size > self.in_memory_bytes:
            self.flush()
            self.values = None  # from now on in the file only
        else:
            self.values.update({i: weights[i].numpy().copy() for i in rest})

    @property
    def pending(self) -> bool:
        """Whether the best epoch's weights are newer than the file."""
        return self.epoch is not None and self.epoch != self.written_epoch

    def restore(self, best: Optional[float], epoch: Optional[int], values: Optional[dict],
                written_best: Optional[float], written_epoch: Optional[int]) -> None:
        """Go on from a saved state (`RunCheckpointer`): the best so far, its epoch and weights (None: the file's)."""
        self.best = math.inf if best is None else float(best)
        self.epoch, self.values = epoch, None if values is None else dict(values)
        self.written_best = math.inf if written_best is None else float(written_best)
        self.written_epoch = written_epoch

    def flush(self):
        """Write the best weights now if the file does not hold them yet (at the end of a run, when it
        is interrupted)."""
        if self.pending:
            self._flush()

    def put_back(self) -> None:
        """Return the model to the best epoch's weights: the copy in memory, or the file when the model was too
        large to keep one."""
        if self.values is None:
            import warnings

            with warnings.catch_warnings():  # only the model's weights matter; the optimizer's are not used again
                warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
                self.target.load_weights(self.path)
            return
        for index, value in self.values.items():
            self._weights[index].assign(value)

    def _flush(self):
        if self.epoch is None or self.values is None:
            return
        current = {i: self._weights[i].numpy() for i in self.values}
        # Often the best epoch is the last one (and at the run's end restore_best puts it back anyway):
        # then the model holds it already and is written as it is, without two rounds of assigning.
        if all(np.array_equal(current[i], value) for i, value in self.values.items()):
            current = {}
        else:
            self.put_back()
        try:
            # HDF5 does not survive a full disk (a segfault, or a RuntimeError from h5py): refuse first
            optimizer = getattr(self.target, "optimizer", None)  # save_weights writes its variables too
            variables = list(self._weights) + list(getattr(optimizer, "variables", None) or [])
            sizes = [int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables]
            check_free_space(self.path, int(sum(sizes) * 1.1) + (512 << 10))
            with atomic_path(self.path, suffix=".weights.h5") as tmp:
                self.target.save_weights(tmp)
        finally:
            for i, value in current.items():
                self._weights[i].assign(value)
        self.written_best, self.written_epoch = self.best, self.epoch
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
            rate = logs.get("learning_rate")  # the step's own, from a loop that gives it
            self.tripped = (self._epoch + 1, current_learning_rate(self.model.optimizer) if rate is None else
                            float(f"{rate:.7g}"))
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
