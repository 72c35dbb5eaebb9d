"""Resumable runs: after every finished epoch, the state needed to go on from there.

One file, RUN_DIR/checkpoints/resume.npz, written aside and renamed (a run killed with SIGKILL
mid-write leaves the previous one whole). It holds

- the weights of the part of the model that trains in the current stage (the head on cached
  features, the top of the model on cached activations, or the whole model): what does not train
  is the pretrained backbone, which is rebuilt the same way on resume;
- the optimizer's variables (step count, moments), so the schedule and Adam's state go on;
- early stopping's state (wait, best value, best weights) and the best checkpoint's: its value and epoch, and the
  best epoch's weights while `best.weights.h5` does not hold them yet (`BestCheckpoint` writes that file rarely);
- the history so far, the stage, the gradual-unfreeze phase and whether it finished;
- the random states that decide the next epoch: every Keras seed generator's state in the model (dropout) and in
  the training pipeline's random layers (augmentation, the image mixers). Each epoch's batch order on cached
  inputs is a function of the run's seed and the epoch's number (`tlkeras.steploop.fit_arrays`), so it needs none.

No pickle: arrays, and one JSON string stored as a NumPy unicode scalar (`np.load(...,
allow_pickle=False)` reads it).

On resume `tlkeras.training.finetune` puts the weights back, skips finished stages and phases,
rebuilds the caches (frozen layers give the same activations), recompiles the stage that was
running with the right layers trainable, restores its optimizer and early stopping, and fits on
from the next epoch (`initial_epoch`): at most the interrupted epoch is redone.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Optional

import keras
import numpy as np

from tlkeras._logging import get_logger
from tlkeras.errors import TlkerasError
from tlkeras.rundir import STATE_FILE
from tlkeras.atomic import atomic_path

FORMAT = 1


@dataclass
class ResumeState:
    """What `resume.npz` holds (see the module docstring)."""

    stage: int
    phase: int
    phase_start: int  # the run's epoch count when this stage/phase began
    epochs_done: int
    finished: bool
    records: list
    best: Optional[float] = None  # the value of the epoch in best.weights.h5
    best_checkpoint: Optional[dict] = None  # BestCheckpoint's best, epoch, written_epoch
    best_weights: Optional[dict] = None  # index in model.weights -> the best epoch's value, if the file lacks it
    early_stopping: Optional[dict] = None
    weights: dict = field(default_factory=dict)  # index in model.weights -> array
    optimizer: list = field(default_factory=list)
    early_stopping_weights: Optional[dict] = None  # index in model.weights -> array
    seconds: dict = field(default_factory=dict)  # wall seconds of each training step so far (`StageClock`)
    random_states: list = field(default_factory=list)  # the seed generators' states (`RunCheckpointer.random`)

    def after(self, stage: int, phase: int = 0) -> bool:
        """Whether (stage, phase) is already finished in this state."""
        return (self.stage, self.phase) > (stage, phase) or ((self.stage, self.phase) == (stage, phase) and self.finished)

    def resumes(self, stage: int, phase: int = 0) -> bool:
        """Whether (stage, phase) is the one to go on with (started, not finished)."""
        return (self.stage, self.phase) == (stage, phase) and not self.finished

    def describe(self) -> str:
        where = f"stage {self.stage}" + (f" phase {self.phase + 1}" if self.phase else "")
        return f"{where} {'finished' if self.finished else 'in progress'}, {self.epochs_done} epoch(s) done"


def peek(folder: str) -> Optional[tuple]:
    """(stage, phase, epochs_done, finished) of the state in `folder`, or None (no model needed)."""
    path = os.path.join(folder, STATE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            state = json.loads(str(data["state"][()]))
        return state["stage"], state["phase"], state["epochs_done"], bool(state["finished"])
    except Exception:  # noqa: BLE001 - `RunCheckpointer.load` reports a damaged file properly
        return None


class RunCheckpointer:
    """Writes and reads `resume.npz` for `model` (the whole model; parts share its variables)."""

    def __init__(self, model: keras.Model, folder: str):
        self.model = model
        self.path = os.path.join(folder, STATE_FILE)
        self._index = {id(w): i for i, w in enumerate(model.weights)}
        self.stage, self.phase, self.phase_start = 1, 0, 0  # what runs now, and its first epoch
        self.recorder = None  # RunHistory, whose records are saved
        self.best_checkpoint = None  # BestCheckpoint, whose written value is saved
        self.clock = None  # StageClock, whose seconds so far are saved
        self.random = seed_states(model)  # the seed generators whose states are saved (`add_random`)

    def add_random(self, *holders) -> None:
        """Save and restore the seed generators of `holders` too (layers or models outside the model: the
        augmenter, the image mixers), after the model's own."""
        for holder in holders:
            if holder is not None:
                self.random += [v for v in seed_states(holder) if all(v is not w for w in self.random)]

    # --- Writing ---

    def save(self, part: keras.Model, epochs_done: int, finished: bool, early_stopping=None) -> None:
        """Save the state after `epochs_done` epochs of the run; `part` is the model that fits."""
        arrays: dict = {}
        for w in part.weights:
            arrays[f"w{self._index_of(w)}"] = np.asarray(w.numpy())
        optimizer = getattr(part, "optimizer", None)
        variables = list(optimizer.variables) if optimizer is not None and optimizer.built else []
        for j, v in enumerate(variables):
            arrays[f"o{j}"] = np.asarray(v.numpy())
        es = None
        if early_stopping is not None and not finished:
            es = {"wait": int(early_stopping.wait), "best_epoch": int(early_stopping.best_epoch),
                  "best": None if early_stopping.best is None else float(early_stopping.best)}
            if early_stopping.best_weights is not None:
                for w, value in zip(part.weights, early_stopping.best_weights):
                    arrays[f"e{self._index_of(w)}"] = np.asarray(value)
        checkpoint, best, kept = self.best_checkpoint, None, None
        if checkpoint is not None:
            best = checkpoint.written_best
            kept = {"best": checkpoint.best if math.isfinite(checkpoint.best) else None, "epoch": checkpoint.epoch,
                    "written_epoch": checkpoint.written_epoch}
            if checkpoint.pending and checkpoint.values is not None:  # the file does not hold them yet
                for index, value in checkpoint.values.items():
                    arrays[f"b{index}"] = value
        state = {
            "format": FORMAT, "stage": self.stage, "phase": self.phase, "phase_start": self.phase_start,
            "epochs_done": int(epochs_done),
            "finished": bool(finished), "optimizer_variables": len(variables), "early_stopping": es,
            "best": best if best is not None and math.isfinite(best) else None,
            "best_checkpoint": kept,
            "records": list(self.recorder.records) if self.recorder is not None else [],
            "paths": {str(self._index_of(w)): w.path for w in part.weights},
            "seconds": {k: round(v, 3) for k, v in self.clock.totals().items()} if self.clock is not None else {},
        }
        for j, v in enumerate(self.random):
            arrays[f"r{j}"] = np.asarray(v.numpy())
        state["random_states"] = len(self.random)
        arrays["state"] = np.array(json.dumps(state))
        with atomic_path(self.path, suffix=".npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)

    def _index_of(self, variable) -> int:
        try:
            return self._index[id(variable)]
        except KeyError:
            raise RuntimeError(f"variable {variable.path} is not one of the model's weights") from None

    def callback(self, early_stopping=None) -> keras.callbacks.Callback:
        """The per-epoch writer; goes after every other callback so their epoch is included."""
        return _SaveEachEpoch(self, early_stopping)

    # --- Reading ---

    def load(self) -> Optional[ResumeState]:
        """The saved state, or None when there is none."""
        if not os.path.isfile(self.path):
            return None
        try:
            with np.load(self.path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except Exception as e:  # noqa: BLE001 - a damaged file is reported, not guessed at
            raise TlkerasError(
                f"the resume state {self.path!r} cannot be read ({type(e).__name__}: {e}); "
                "start again with --overwrite."
            ) from None
        try:
            state = json.loads(str(arrays.pop("state")[()]))
            return self._state(state, arrays)
        except TlkerasError:
            raise
        except (KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise TlkerasError(
                f"the resume state {self.path!r} is damaged ({type(e).__name__}: {e}); start again with --overwrite."
            ) from None

    def _state(self, state: dict, arrays: dict) -> ResumeState:
        if state.get("format") != FORMAT:
            raise TlkerasError(f"{self.path!r} was written by another version of tlkeras; start again with --overwrite.")
        weights = {int(k[1:]): v for k, v in arrays.items() if k.startswith("w")}
        es_weights = {int(k[1:]): v for k, v in arrays.items() if k.startswith("e")}
        best_weights = {int(k[1:]): v for k, v in arrays.items() if k.startswith("b")}
        for index, path in state["paths"].items():
            index = int(index)
            if index >= len(self.model.weights) or self.model.weights[index].path != path:
                raise TlkerasError(
                    f"the resume state {self.path!r} does not fit this model (weight {path!r}); "
                    "was the backbone or head changed? Start again with --overwrite."
                )
        return ResumeState(
            stage=state["stage"], phase=state["phase"], phase_start=state["phase_start"], epochs_done=state["epochs_done"],
            finished=state["finished"], records=state["records"], best=state["best"],
            best_checkpoint=state.get("best_checkpoint"), best_weights=best_weights or None,  # states before: none
            early_stopping=state["early_stopping"], weights=weights,
            optimizer=[arrays[f"o{j}"] for j in range(state["optimizer_variables"])],
            early_stopping_weights=es_weights or None,
            seconds={str(k): float(v) for k, v in (state.get("seconds") or {}).items()},  # states written before it had none
            random_states=[arrays[f"r{j}"] for j in range(state.get("random_states", 0))],
        )

    def restore_weights(self, state: ResumeState) -> None:
        """Put the saved weights back into the model."""
        for index, value in state.weights.items():
            variable = self.model.weights[index]
            if tuple(variable.shape) != value.shape:
                raise TlkerasError(
                    f"the resume state {self.path!r} holds {variable.path} with shape {value.shape}, the model "
                    f"{tuple(variable.shape)}; start again with --overwrite."
                )
            variable.assign(value)

    def restore_random(self, state: ResumeState) -> None:
        """Put the seed generators' saved states back (a state of another layout - written before these were kept, or
        by another model - leaves them as they are, with a line)."""
        if len(state.random_states) != len(self.random) or any(
                tuple(v.shape) != value.shape for v, value in zip(self.random, state.random_states)):
            if state.random_states or self.random:
                get_logger().warning("the saved random states (%d) do not fit this run's (%d): dropout and augmentation "
                                     "draw afresh", len(state.random_states), len(self.random))
            return
        for variable, value in zip(self.random, state.random_states):
            variable.assign(value)

    def restore_optimizer(self, part: keras.Model, state: ResumeState) -> None:
        """Load the saved optimizer variables into `part`'s compiled and built optimizer (`run_stage` builds it)."""
        variables = list(part.optimizer.variables)
        if len(variables) != len(state.optimizer):
            get_logger().warning(
                "the saved optimizer state has %d variables, this stage's optimizer %d: its moments start afresh",
                len(state.optimizer), len(variables),
            )
            return
        for variable, value in zip(variables, state.optimizer):
            variable.assign(value)

    def early_stopping_state(self, part: keras.Model, state: ResumeState) -> Optional[dict]:
        """Early stopping's saved state with its best weights in `part.weights` order."""
        if state.early_stopping is None:
            return None
        out = dict(state.early_stopping)
        if state.early_stopping_weights:
            out["best_weights"] = [state.early_stopping_weights[self._index_of(w)] for w in part.weights]
        return out


def seed_states(holder) -> list:
    """The state variables of the Keras seed generators in `holder` (a model or a layer, with what it holds), in a
    fixed order: what dropout and the random layers draw from next.

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dropout(0.5), keras.layers.Dense(2)])
    >>> [v.name for v in seed_states(model)]
    ['seed_generator_state']
    """
    return [v for v in holder.variables if v.name == "seed_generator_state"]


class _SaveEachEpoch(keras.callbacks.Callback):
    def __init__(self, checkpointer: RunCheckpointer, early_stopping=None):
        super().__init__()
        self.checkpointer, self.early_stopping = checkpointer, early_stopping

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(np.asarray(loss))):
            return  # a NaN epoch is never a state to go on from (StopOnNaN puts the last good weights back)
        self.checkpointer.save(self.model, epoch + 1, finished=False, early_stopping=self.early_stopping)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """keras.callbacks.EarlyStopping that can start from a saved wait/best/best weights."""

    def __init__(self, *args, initial_state: Optional[dict] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.initial_state = initial_state

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.initial_state:
            self.wait = self.initial_state["wait"]
            self.best = self.initial_state["best"]
            self.best_epoch = self.initial_state["best_epoch"]
            self.best_weights = self.initial_state.get("best_weights")
