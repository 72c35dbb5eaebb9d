"""Two-stage fine-tuning. A stage is: freeze/unfreeze -> compile -> fit.

Stage 1 trains the head on a frozen backbone; stage 2 unfreezes what `unfreeze` says (by default
all of it, each block at a rate falling with its depth: `layer_decay`, see `tlkeras.optimizers`),
optionally a block at a time (`gradual_unfreeze`), and recompiles. Stage 2 counts epochs on from
stage 1 (`initial_epoch`), so the history, the logs and the checkpoints read as one run.

What stays frozen is computed once, not every epoch (see `tlkeras.caching`): stage 1 trains the
head on cached backbone features, stage 2 trains the top of the backbone on cached activations
at the unfreeze cut - whenever the training inputs are not randomly augmented.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from dataclasses import dataclass
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from tlkeras import caching, freezing, steploop
from tlkeras._logging import get_logger
from tlkeras.errors import Interrupted, TrainingError
from tlkeras.config import StageConfig
from tlkeras.distribute import uses_float16
from tlkeras.optimizers import make_optimizer
from tlkeras.resume import ResumableEarlyStopping, ResumeState, RunCheckpointer
from tlkeras.rundir import CHECKPOINT_DIR
from tlkeras.tasks import get_task
from tlkeras.model import get_backbone, get_head_pool, get_preprocessing, task_of
from tlkeras.utils import atomic_path, write_json_atomic, write_text_atomic

BEST_WEIGHTS = "best.weights.h5"
AUTOTUNE = tf.data.AUTOTUNE


class FinetuneHistory(dict):
    """Column-form history {"epoch": [...], "stage": [...], "loss": [...], ...} of both stages.

    `stage_seconds` holds the wall time of each stage that ran (feature caching included), e.g.
    {"cache": 3.1, "stage1": 2.0, "stage2": 40.1}; `cache_plan` says what was cached and why.
    """

    def __init__(self, columns: dict, stage_seconds: dict, cache_plan: Optional["CachePlan"] = None):
        super().__init__(columns)
        self.stage_seconds = dict(stage_seconds)
        self.cache_plan = cache_plan


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
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


# === What to cache ===


@dataclass
class CachePlan:
    """Which stages train on cached inputs, and why (logged)."""

    stage1: bool
    stage2: bool
    views: int
    reason: str


def plan_caching(
    setting, train_ds, augmenter, stage1_epochs: int, stage2_epochs: int, cut: Optional[int], views: int,
    inputs_random: Optional[bool] = None,
) -> CachePlan:
    """Decide what to cache. `setting` is cache_features: "auto", True or False.

    auto caches when the training inputs carry no randomness; with random augmentation it runs
    uncached. True with augmentation caches `views` augmented views per image for stage 1.
    """
    if setting is False:
        return CachePlan(False, False, 1, "cache_features=false: the backbone runs on every batch")
    random = augmenter is not None or inputs_random
    if not random and inputs_random is None:
        random = caching.has_random_ops(train_ds)
    stage2_frozen_bottom = cut is not None and cut > 0
    if random is None and setting == "auto":
        return CachePlan(False, False, 1, "cannot tell whether the training data is randomly augmented; running "
                         "uncached (set cache_features: true if it is not)")
    if random:
        if setting == "auto":
            return CachePlan(
                False, False, 1,
                "random augmentation is on, so the backbone runs on every augmented batch "
                f"(set cache_features: true to cache {views} augmented views per image for stage 1 instead)",
            )
        return CachePlan(
            stage1_epochs > 0, False, views,
            f"cache_features=true with random augmentation: stage 1 trains on {views} cached augmented views "
            "per image; stage 2 runs uncached (its inputs change every epoch)",
        )
    s2 = stage2_epochs > 0 and stage2_frozen_bottom
    why2 = (
        "stage 2 trains only above the unfreeze cut on cached activations"
        if s2
        else "stage 2 runs the whole model (nothing below the cut stays frozen)" if stage2_epochs > 0 else ""
    )
    return CachePlan(
        stage1_epochs > 0, s2, 1,
        "inputs are not randomly augmented: stage 1 trains the head on cached backbone features"
        + (f"; {why2}" if why2 else ""),
    )


# === Finetune ===


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
    augmenter=None,
    cache_features="auto",
    cache_views: int = 4,
    memory_budget_mb: int = 1024,
    jit_compile="auto",
    inputs_random: Optional[bool] = None,
    label_smoothing: float = 0.0,
    resume: bool = False,
    verbose: int | str = "auto",
) -> FinetuneHistory:
    """Train `model` (from `build_model`) in two stages and return the combined history.

    Args:
        model: a tlkeras model (it has a nested layer "backbone").
        train_ds / val_ds: batched tf.data of (pixels in [0, 255], integer label).
        stage1 / stage2: `StageConfig` or dicts of its fields, over the defaults (stage 1: Adam
            at 3e-3; stage 2: everything unfrozen, layer_decay 0.7, cosine with 1 warm-up epoch,
            peak rate stage 1's / 3). epochs=0 skips a stage.
        run_dir: where the best checkpoint and history.json go (nothing is written if None).
        class_weight: Keras class weights {class index: weight}.
        callbacks: extra Keras callbacks, used in both stages (their `model` is the part that fits;
            a callback with a `stage` attribute has it set to 1 or 2 as each stage starts).
        augmenter: random augmentation applied to training batches (e.g. a Sequential of
            keras.layers.Random* layers), on the fly or once per cached view.
        cache_features: "auto" (cache what stays frozen unless training inputs are randomly
            augmented), True, or False. See `tlkeras.caching`.
        cache_views: augmented views per image cached for stage 1 when cache_features=True and
            augmentation is on.
        memory_budget_mb: caches larger than this are stored as float16 or spilled to disk.
        jit_compile: XLA for the train step: "auto" (Keras's choice: on with a GPU/TPU), True, False.
        inputs_random: whether `train_ds` itself applies random augmentation; None looks for
            random ops in its graph (`augmenter` counts as random either way).
        label_smoothing: label smoothing of the cross-entropy, in [0, 1).
        resume: go on from run_dir/checkpoints/resume.npz (written after every epoch): finished
            stages and phases are skipped, the running one continues from its next epoch with its
            optimizer and early-stopping state (see `tlkeras.resume`). False starts afresh.

    Interrupted (Ctrl-C), it raises `tlkeras.errors.Interrupted` saying how to resume.

    Returns:
        FinetuneHistory: {"epoch": [...], "stage": [...], "loss": [...], "val_loss": ..., ...}.

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
    from tlkeras.config import stage_configs

    cfg = _Stages(*stage_configs(stage1, stage2))
    log = get_logger()
    recorder = RunHistory(os.path.join(run_dir, "history.json") if run_dir else None)
    nan_guard = StopOnNaN()
    shared = [recorder, nan_guard, *(callbacks or [])]
    best = checkpointer = state = None
    if run_dir:
        os.makedirs(os.path.join(run_dir, CHECKPOINT_DIR), exist_ok=True)
        monitor = "val_loss" if val_ds is not None else "loss"
        best = BestCheckpoint(model, os.path.join(run_dir, CHECKPOINT_DIR, BEST_WEIGHTS), monitor)
        shared.append(best)
        checkpointer = RunCheckpointer(model, os.path.join(run_dir, CHECKPOINT_DIR))
        checkpointer.recorder, checkpointer.best_checkpoint = recorder, best
        if resume:
            state = checkpointer.load()
        elif os.path.exists(checkpointer.path):
            os.remove(checkpointer.path)  # a fresh run: an old state must not be mixed in later
    elif resume:
        raise TrainingError("resume=True needs the run_dir that holds the state to resume from.")
    run = _Runner(model, train_ds, val_ds, shared, class_weight, augmenter, jit_compile, verbose, label_smoothing,
                  nan_guard=nan_guard, run_dir=run_dir, checkpointer=checkpointer)

    freezing.freeze_backbone(model)
    if state is not None:
        checkpointer.restore_weights(state)
        recorder.records = list(state.records)
        if state.best is not None:
            best.best = best.written_best = state.best
        log.info("resuming: %s; finished epochs are kept", state.describe())
    cut = None
    if cfg.stage2.epochs > 0:
        cut, _ = freezing.plan_cut(model, cfg.stage2.unfreeze, train_bn=cfg.stage2.train_bn)
    plan = plan_caching(cache_features, train_ds, augmenter, cfg.stage1.epochs, cfg.stage2.epochs, cut, cache_views,
                        inputs_random)
    log.info("caching: %s", plan.reason)
    seconds: dict = {}
    caches = _Caches(model, train_ds, val_ds, int(memory_budget_mb * 2**20), run_dir,
                     progress=verbose not in (0, "0"))
    epochs_done = 0
    try:
        # === Stage 1: the head on a frozen backbone ===
        if state is not None and state.after(1):
            epochs_done = state.epochs_done
            if cfg.stage1.epochs > 0:
                log.info("stage 1: finished before the interruption, skipped")
        elif cfg.stage1.epochs > 0:
            log.info("stage 1: backbone frozen; training the head (%s)", _trainable_summary(model))
            _enter_stage(shared, 1)
            start = time.time()
            if plan.stage1:
                part = caches.for_head(
                    augmenter=augmenter if plan.views > 1 else None,
                    views=plan.views,
                    cut=cut if plan.stage2 else None,
                )
                seconds["cache"] = time.time() - start
                epochs_done = run.stage(cfg.stage1, cfg.stage1.learning_rate, 0, part, position=(1, 0), state=state)
            else:
                epochs_done = run.stage(cfg.stage1, cfg.stage1.learning_rate, 0, position=(1, 0), state=state)
            seconds["stage1"] = time.time() - start

        # === Stage 2: unfreeze (the top of) the backbone, layer-wise rates ===
        phases = unfreeze_phases(model, cfg.stage2) if cfg.stage2.epochs > 0 else []
        if phases and not (state is not None and state.after(2, len(phases) - 1)):
            start = time.time()
            rate = cfg.stage2_learning_rate
            multipliers = None
            if cfg.stage2.layer_decay is not None and cfg.stage2.layer_decay < 1:
                multipliers = freezing.layer_multipliers(model, cfg.stage2.layer_decay)
            _enter_stage(shared, 2)
            part = None
            if plan.stage2:
                names = [layer.name for layer in freezing.backbone_layers(model)]
                part = caches.for_cut(names[cut] if cut < len(names) else None)  # the lowest cut of all phases
            else:
                caches.close()  # free memory before the full model trains
            steps_done = 0
            for index, (unfreeze, epochs) in enumerate(phases):
                if state is not None and state.after(2, index):
                    steps_done += epochs * ((part.steps if part else run.steps) or 0)
                    if (state.stage, state.phase) == (2, index):
                        epochs_done = state.epochs_done
                    continue
                layers = freezing.unfreeze(
                    model, unfreeze, train_bn=cfg.stage2.train_bn,
                    bn_momentum=cfg.stage2.bn_momentum if cfg.stage2.train_bn else None,
                )
                where = f" phase {index + 1}/{len(phases)} ({epochs} epochs)" if len(phases) > 1 else ""
                decay = f", layer_decay {cfg.stage2.layer_decay}" if multipliers else ""
                log.info("stage 2%s: unfreeze=%r at learning rate %g%s: %s", where, unfreeze, rate, decay,
                         layers.describe())
                last = index == len(phases) - 1
                if last and run_dir:
                    write_text_atomic(os.path.join(run_dir, "stage2_trainable_layers.txt"),
                                      "".join(name + "\n" for name in layers.layers))
                epochs_done = run.stage(cfg.stage2, rate, epochs_done, part, name="stage2", epochs=epochs,
                                        multipliers=multipliers, step_offset=steps_done, early_stopping=last,
                                        position=(2, index), state=state)
                steps_done += epochs * ((part.steps if part else run.steps) or 0)
            seconds["stage2"] = time.time() - start
    except KeyboardInterrupt:
        if best is not None:
            best.flush()
        done = recorder.records[-1]["epoch"] if recorder.records else 0
        saved = (f"{done} finished epoch(s) are saved in {os.path.join(run_dir, CHECKPOINT_DIR)}; run the same "
                 "command again (or add --resume) to continue from there" if run_dir and done else
                 "no epoch had finished, so there is nothing to resume")
        raise Interrupted(f"interrupted: {saved}.") from None
    finally:
        caches.close()
    return FinetuneHistory(recorder.as_dict(), seconds, plan)


def _enter_stage(callbacks: list, stage: int) -> None:
    """Tell the callbacks that keep a `stage` attribute (history, TensorBoard step log) which stage runs."""
    for callback in callbacks:
        if hasattr(callback, "stage"):
            callback.stage = stage


def unfreeze_phases(model: keras.Model, stage: StageConfig) -> list[tuple]:
    """[(unfreeze, epochs)] of stage 2: one phase, or with `gradual_unfreeze` N one more block
    every N epochs from the top block down to what `unfreeze` allows; the last phase is always
    the full extent and takes the remaining epochs."""
    if not stage.gradual_unfreeze:
        return [(stage.unfreeze, stage.epochs)]
    cut, n = freezing.plan_cut(model, stage.unfreeze, train_bn=stage.train_bn)
    if cut >= n:
        return [(stage.unfreeze, stage.epochs)]
    names = [layer.name for layer in freezing.backbone_layers(model)]
    starts = [names.index(block[0]) for block in freezing.list_blocks(model)]
    cuts = []
    for first in reversed(starts):
        cuts.append(max(cut, first))
        if cuts[-1] <= cut:
            break
    count = min(len(cuts), max(1, math.ceil(stage.epochs / stage.gradual_unfreeze)))
    cuts = cuts[: count - 1] + [cut]
    epochs = [stage.gradual_unfreeze] * (count - 1)
    epochs.append(stage.epochs - sum(epochs))
    return [(names[c], e) for c, e in zip(cuts, epochs)]


@dataclass
class _Stages:
    stage1: StageConfig
    stage2: StageConfig

    @property
    def stage2_learning_rate(self) -> float:
        from tlkeras.config import stage2_learning_rate

        return stage2_learning_rate(self.stage1, self.stage2)


class _Runner:
    """Compiles and fits either the full model on the input pipeline or a part of it on caches."""

    def __init__(self, model, train_ds, val_ds, callbacks, class_weight, augmenter, jit_compile, verbose,
                 label_smoothing=0.0, nan_guard: Optional[StopOnNaN] = None, run_dir: Optional[str] = None,
                 checkpointer: Optional[RunCheckpointer] = None):
        self.model, self.val_ds, self.callbacks = model, val_ds, callbacks
        self.checkpointer = checkpointer
        self.nan_guard, self.run_dir = nan_guard, run_dir
        self.label_smoothing = label_smoothing
        self.class_weight, self.jit_compile, self.verbose = class_weight, jit_compile, verbose
        self.task = task_of(model)
        self.train_ds = train_ds
        if augmenter is not None:
            self.train_ds = train_ds.map(lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=AUTOTUNE)
        self.steps = _steps_per_epoch(train_ds)

    def stage(self, stage: StageConfig, rate: float, initial_epoch: int, part: Optional["_Part"] = None,
              *, name: str = "stage1", position: tuple = (1, 0), state: Optional[ResumeState] = None,
              **options) -> int:
        if part is None:  # the full model on the input pipeline
            part = _Part(self.model, self.train_ds, self.val_ds, self.steps)
        planned = options.pop("epochs", None)
        planned = stage.epochs if planned is None else planned
        phase_start = initial_epoch
        if state is not None and state.resumes(*position):
            phase_start, initial_epoch = state.phase_start, state.epochs_done
            get_logger().info("%s: going on from epoch %d", name.replace("stage", "stage "), initial_epoch + 1)
        else:
            state = None
        if self.checkpointer is not None:
            self.checkpointer.stage, self.checkpointer.phase = position
            self.checkpointer.phase_start = phase_start
        reached = run_stage(
            part.model, part.train, part.val, stage, learning_rate=rate, steps_per_epoch=part.steps,
            epochs=phase_start + planned - initial_epoch, checkpointer=self.checkpointer, resume_from=state,
            fit_steps=part.steps if part.repeats else None, initial_epoch=initial_epoch, callbacks=self.callbacks,
            class_weight=self.class_weight, jit_compile=self.jit_compile, verbose=self.verbose, task=self.task,
            label_smoothing=self.label_smoothing, **options,
            # On cached inputs a step takes microseconds to milliseconds and Python's per-step
            # overhead would dominate: run up to 16 steps in each call of the compiled function.
            steps_per_execution=min(part.steps or 1, 16) if part.model is not self.model else 1,
        )
        if self.nan_guard is not None and self.nan_guard.tripped is not None:
            epoch, lr = self.nan_guard.tripped
            best = os.path.join(self.run_dir, CHECKPOINT_DIR, BEST_WEIGHTS) if self.run_dir else None
            kept = f"; the best epoch so far is in {best}" if best and os.path.isfile(best) else ""
            raise TrainingError(
                f"the loss became NaN in epoch {epoch} at learning rate {lr:.3g}: training stopped and the weights from "
                f"before that epoch were put back{kept}. Lower {name}.learning_rate (e.g. to {lr / 10:.3g}) "
                f"or find one with `tlkeras find-lr --stage {name[-1]}`."
            )
        if self.checkpointer is not None:
            self.checkpointer.save(part.model, reached, finished=True)
        return reached


@dataclass
class _Part:
    """What one stage fits: the model (or part of it), its data and the steps of an epoch."""

    model: keras.Model
    train: tf.data.Dataset
    val: Optional[tf.data.Dataset]
    steps: Optional[int]
    repeats: bool = False  # the training data repeats; an epoch is `steps` batches


class _Caches:
    """Computes the caches lazily, at most one pass over the data per kind, and frees them."""

    def __init__(self, model, train_ds, val_ds, budget: int, run_dir: Optional[str], progress: bool = False):
        self.model, self.train_ds, self.val_ds, self.budget = model, train_ds, val_ds, budget
        self.progress = progress
        self.spill_dir = run_dir
        self.batch_size = _batch_size(train_ds)
        self.train: Optional[caching.Cache] = None
        self.val: Optional[caching.Cache] = None
        self.cut: Optional[str] = None

    def _compute(self, fn, augmenter=None, views=1):
        log = get_logger()
        spec = keras.tree.flatten(self.train_ds.element_spec)[0]
        # One trace for every batch size and both splits: tracing a backbone takes seconds.
        fn = tf.function(fn, input_signature=[tf.TensorSpec([None, *spec.shape[1:]], spec.dtype)])
        # The passes run at the training batch size: batches of 128 run ~15 % faster on CPU but
        # hold 4x the activations (+480 MB at 128 px, see benchmarks/RESULTS.md); memory counts.
        self.train = caching.compute_cache(fn, self.train_ds, self.budget, self.spill_dir, views, augmenter,
                                           progress="caching training features" if self.progress else None)
        if self.val_ds is not None:
            self.val = caching.compute_cache(fn, self.val_ds, self.budget, self.spill_dir,
                                             progress="caching validation features" if self.progress else None)
        size = self.train.nbytes + (self.val.nbytes if self.val else 0)
        notes = "; ".join(self.train.notes + (self.val.notes if self.val else [])) or "in memory"
        log.info("cached %d training%s rows (%.1f MB, %s)", len(self.train.labels),
                 f" and {len(self.val.labels)} validation" if self.val else "", size / 2**20, notes)

    def for_head(self, augmenter=None, views=1, cut: Optional[int] = None):
        """Stage 1 on cached features: the head, its data and steps. With `cut` (index of the
        lowest backbone layer stage 2 trains), the same pass also caches the activations
        crossing that cut."""
        extractor, head = caching.split_at_head(self.model)
        if cut is not None and 0 < cut < len(freezing.backbone_layers(self.model)):
            layer = freezing.backbone_layers(self.model)[cut].name
            fn = self._features_and_crossing(layer)
            self.cut = layer
        else:
            def fn(pixels):
                return extractor(pixels, training=False)
        if self.train is None:
            self._compute(fn, augmenter, views)
        rows = len(self.train.labels) // views
        train = caching.cached_dataset(self.train.select([0]), self.batch_size, shuffle=True,
                                       epoch_rows=rows if views > 1 else None)
        val = caching.cached_dataset(self.val.select([0]), self.batch_size, shuffle=False) if self.val else None
        return _Part(head, train, val, caching.steps_for(rows, self.batch_size), repeats=views > 1)

    def for_cut(self, cut_layer: Optional[str]):
        """Stage 2 on cached activations at `cut_layer`: the top of the model, its data and steps.
        With no cut layer (no backbone layer trains), stage 2 trains the head on the features."""
        if cut_layer is None:
            return self.for_head()
        extract, top, crossing = caching.split_at_cut(self.model, cut_layer)
        if self.cut != cut_layer:  # not computed with stage 1 (stage 1 skipped or uncached)
            self.close()
            self._compute(extract)
            self.cut = cut_layer
            first = 0
        else:
            first = 1  # column 0 holds the stage-1 features
        columns = list(range(first, first + len(crossing)))
        train = caching.cached_dataset(self.train.select(columns), self.batch_size, shuffle=True)
        val = caching.cached_dataset(self.val.select(columns), self.batch_size, shuffle=False) if self.val else None
        return _Part(top, train, val, caching.steps_for(len(self.train.labels), self.batch_size))

    def _features_and_crossing(self, cut_layer: str):
        """One frozen pass giving the head's input features and the stage-2 cut activations."""
        backbone = get_backbone(self.model)
        crossing = caching.crossing_tensors(self.model, cut_layer)
        both = keras.Model(backbone.input, [backbone.output, *crossing])
        preprocess = get_preprocessing(self.model) or (lambda x: x)
        pool = get_head_pool(self.model)

        def fn(pixels):
            out = both(preprocess(pixels), training=False)
            features = pool(out[0]) if pool is not None else out[0]
            return [features, *out[1:]]

        return fn

    def close(self):
        for cache in (self.train, self.val):
            if cache is not None:
                cache.close()
        self.train = self.val = None
        self.cut = None


# === One stage ===


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
    epochs: Optional[int] = None,
    class_weight: Optional[dict] = None,
    fit_steps: Optional[int] = None,
    multipliers: Optional[dict] = None,
    step_offset: int = 0,
    early_stopping: bool = True,
    label_smoothing: float = 0.0,
    jit_compile="auto",
    steps_per_execution: int = 1,
    checkpointer: Optional[RunCheckpointer] = None,
    resume_from: Optional[ResumeState] = None,
    verbose: int | str = "auto",
    task=None,
) -> int:
    """Compile with this stage's optimizer and fit `epochs` (default: the stage's) epochs;
    return the epoch count reached (initial + run).

    `steps_per_epoch` sizes the learning-rate schedule (over the whole stage, `step_offset`
    steps in); `fit_steps` is given to fit only when the training data repeats (Keras then keeps
    one iterator across epochs); `multipliers` scale the rate per variable (layer-wise rates).
    With a `checkpointer` the state is saved after every epoch; `resume_from` restores the
    optimizer and early stopping of an interrupted run before fitting on. `task` (the full model's
    Task, `tlkeras.tasks`; single-label when None) gives the loss, the metrics and where class
    weights go.
    """
    task = get_task(task or "single_label")
    units = int(model.output_shape[-1])
    optimizer = make_optimizer(stage, learning_rate, steps_per_epoch, multipliers=multipliers, step_offset=step_offset)
    if uses_float16(model):
        # Keras wraps only when the model's own policy is mixed_float16; parts built later are not.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        loss=task.loss(units, label_smoothing, class_weight),
        metrics=task.training_metrics(),
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    stage_callbacks = list(callbacks)
    stopper = None
    if resume_from is not None:
        checkpointer.restore_optimizer(model, resume_from)
    if stage.early_stopping and early_stopping:
        stopper = ResumableEarlyStopping(
            monitor="val_loss" if val_ds is not None else "loss",
            patience=stage.early_stopping,
            restore_best_weights=True,
            initial_state=checkpointer.early_stopping_state(model, resume_from) if resume_from is not None else None,
        )
        stage_callbacks.append(stopper)
    if checkpointer is not None:
        stage_callbacks.append(checkpointer.callback(stopper))  # last: sees every other callback's epoch
    fit = model.fit
    if steploop.needs_own_loop(model):  # Keras's fit fails under multi-worker (steploop docs)
        fit = functools.partial(steploop.fit_loop, model, task=task)
    history = fit(
        train_ds,
        validation_data=val_ds,
        initial_epoch=initial_epoch,
        epochs=initial_epoch + (stage.epochs if epochs is None else epochs),
        steps_per_epoch=fit_steps,
        callbacks=stage_callbacks,
        class_weight=task.fit_class_weight(class_weight),
        verbose=verbose,
        **({} if fit is not model.fit else {"shuffle": False}),  # the tf.data pipeline shuffles
    )
    return initial_epoch + len(history.epoch)


def _steps_per_epoch(ds) -> Optional[int]:
    n = int(ds.cardinality())
    return n if n > 0 else None


def _batch_size(ds) -> int:
    images, _ = next(iter(ds))
    return int(keras.tree.flatten(images)[0].shape[0])


def _trainable_summary(model) -> str:
    params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return f"{params:,} trainable parameters"
