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


import contextlib
import dataclasses
import os
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from tlkeras import caching, freezing, recompute
from tlkeras._logging import get_logger
from tlkeras.errors import Interrupted, TrainingError
from tlkeras.config import StageConfig
from tlkeras.methods import get_method
from tlkeras.resume import RunCheckpointer
from tlkeras.rundir import CHECKPOINT_DIR
from tlkeras.atomic import write_text_atomic
from tlkeras.model import task_of
from tlkeras.training.callbacks import BEST_WEIGHTS, AccuracyThenLoss, BestCheckpoint, RunHistory, StopOnNaN
from tlkeras.training.budget import MIN_EPOCHS, is_auto, resolve_budget
from tlkeras.training.parts import CachedValidation, Caches, count_steps
from tlkeras.training.plan import CachePlan, plan_caching
from tlkeras.training.runner import Runner, Stages


class StageClock:
    """Wall seconds of each step of training ("cache", "stage1", "stage2") over every process of a
    run: what the earlier processes had spent by their last saved epoch (kept in the resume state),
    plus this process's. Work an interruption threw away is not counted.

    >>> clock = StageClock({"stage1": 2.0})
    >>> with clock.timing("stage1"):
    ...     pass
    >>> 2.0 <= clock.totals()["stage1"] < 2.5
    True
    """

    def __init__(self, earlier: Optional[dict] = None):
        self._spent = {k: float(v) for k, v in (earlier or {}).items()}
        self._running: dict = {}

    @contextlib.contextmanager
    def timing(self, key: str):
        self._running[key] = time.time()
        try:
            yield
        finally:
            self._spent[key] = self._spent.get(key, 0.0) + time.time() - self._running.pop(key)

    def totals(self) -> dict:
        """Seconds so far, the steps still running included."""
        now = time.time()
        out = dict(self._spent)
        for key, since in self._running.items():
            out[key] = out.get(key, 0.0) + now - since
        return out


class FinetuneHistory(dict):
    """Column-form history {"epoch": [...], "stage": [...], "loss": [...], ...} of both stages.

    `stage_seconds` holds the wall time of each stage (feature caching included in it, and also
    given alone), e.g. {"cache": 3.1, "stage1": 5.1, "stage2": 40.1}, summed over the processes of
    a resumed run (see `StageClock`); `cache_plan` says what was cached and why; `best` keeps the
    weights of the run's best epoch; `cached_validation` (with `keep_cached_validation`) the
    validation split's cached inputs and the part of the model they feed, when those still hold
    for the whole model (the last stage trained above frozen layers cached in memory), else None.
    """

    def __init__(self, columns: dict, stage_seconds: dict, cache_plan: Optional["CachePlan"] = None,
                 best: Optional[BestCheckpoint] = None, cached_validation: Optional[CachedValidation] = None):
        super().__init__(columns)
        self.stage_seconds = dict(stage_seconds)
        self.cache_plan = cache_plan
        self.best = best  # the run's best epoch (`BestCheckpoint.epoch`, `.put_back()`); None without a run_dir
        self.cached_validation = cached_validation


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
    mixing=None,
    cache_features="auto",
    cache_views: int = 4,
    memory_budget_mb: int = 1024,
    jit_compile="auto",
    inputs_random: Optional[bool] = None,
    label_smoothing: float = 0.0,
    resume: bool = False,
    verbose: int | str = "auto",
    keep_cached_validation: bool = False,
    seed: Optional[int] = None,
    rebuild_train=None,
    caches=None,
) -> FinetuneHistory:
    """Train `model` (from `build_model`) in two stages and return the combined history.

    Args:
        model: a tlkeras model (it has a nested layer "backbone").
        train_ds / val_ds: batched tf.data of (pixels in [0, 255], integer label).
        stage1 / stage2: `StageConfig` or dicts of its fields, over the defaults (stage 1: Adam
            at 1e-2; stage 2: everything unfrozen, layer_decay 0.7, cosine with 1 warm-up epoch,
            peak rate stage 1's / 3). epochs=0 skips a stage. stage2 `method` says how the backbone trains
            (`tlkeras.methods`): "full" (what `unfreeze` says), "bitfit" (only its bias terms) or "lora"
            (adapters on the `lora_targets` layers, the head too; the model then comes back with its adapters
            on, and the method's `finish(model, run_dir)` folds them into the kernels: build_and_finetune
            calls it after putting the best epoch back).
        run_dir: where the best checkpoint and history.json go (nothing is written if None).
        class_weight: Keras class weights {class index: weight}.
        callbacks: extra Keras callbacks, used in both stages (their `model` is the part that fits;
            a callback with a `stage` attribute has it set to 1 or 2 as each stage starts).
        augmenter: random augmentation applied to training batches (e.g. a Sequential of
            keras.layers.Random* layers), on the fly or once per cached view.
        mixing: a `tlkeras.mixing.Mixing`: MixUp / CutMix of training images (random, like `augmenter`), feature
            mixup of what the cached stages train on; labels mixed as soft targets.
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
        keep_cached_validation: keep the validation split's cached inputs after training when they
            still hold for the whole model (`FinetuneHistory.cached_validation`), so that evaluating
            it need not run the frozen layers again; the caller drops them when done.
        seed: decides each epoch's batch order on cached inputs (with the epoch's number: a resumed run goes on in
            the order an uninterrupted one takes); None draws one from NumPy's global generator.
        rebuild_train: fn() -> `train_ds` built anew (its shuffle from the start): each phase that trains the whole
            model on the pipeline takes its own, so that a resumed phase takes the epoch orders of an uninterrupted
            one (`DataBundle.rebuild_train`); None trains on `train_ds` throughout.
        caches: a `tlkeras.training.parts.SharedCaches` on this model and data, kept across calls (a search's
            trials); None: the frozen part's outputs are computed for this call and freed at its end.

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
    options = FinetuneOptions(
        run_dir=run_dir, class_weight=class_weight, callbacks=list(callbacks or []), augmenter=augmenter,
        mixing=mixing, cache_features=cache_features, cache_views=cache_views, memory_budget_mb=memory_budget_mb,
        jit_compile=jit_compile, inputs_random=inputs_random, label_smoothing=label_smoothing, resume=resume,
        verbose=verbose, keep_cached_validation=keep_cached_validation, seed=seed, rebuild_train=rebuild_train,
        caches=caches)
    training = _Training(model, train_ds, val_ds, stage1, stage2, options)
    training.go_on_from_saved_state()
    training.plan()
    try:
        training.stage1()
        training.stage2()
    except KeyboardInterrupt:
        raise training.interrupted() from None
    finally:
        training.caches.close()
    return training.history()


@dataclasses.dataclass
class FinetuneOptions:
    """The settings of `finetune` beyond the model, the data and the stages (see its arguments)."""

    run_dir: Optional[str] = None
    class_weight: Optional[dict] = None
    callbacks: list = dataclasses.field(default_factory=list)
    augmenter: object = None
    mixing: object = None
    cache_features: object = "auto"
    cache_views: int = 4
    memory_budget_mb: int = 1024
    jit_compile: object = "auto"
    inputs_random: Optional[bool] = None
    label_smoothing: float = 0.0
    resume: bool = False
    verbose: object = "auto"
    keep_cached_validation: bool = False
    seed: Optional[int] = None
    rebuild_train: object = None
    caches: object = None


class _Training:
    """One `finetune` call: the stages' settings and method, the callbacks every stage shares, the resume state,
    what is cached, and the clock. Its steps are `finetune`'s plan."""

    def __init__(self, model, train_ds, val_ds, stage1, stage2, options: FinetuneOptions):
        from tlkeras.config import stage_configs

        self.log, self.model, self.train_ds, self.val_ds, self.options = get_logger(), model, train_ds, val_ds, options
        budget = resolve_budget(*stage_configs(stage1, stage2), count_steps(train_ds))
        if budget.reason:
            self.log.info("epochs: %s", budget.reason)
        self.cfg = Stages(budget.stage1, budget.stage2)
        self.method = get_method(self.cfg.stage2.method)  # how stage 2 trains the backbone (tlkeras.methods)
        if self.cfg.stage2.epochs > 0:
            self.method.prepare(model, self.cfg.stage2)  # before the checkpointer indexes the weights (LoRA's adapters)
        run_dir = options.run_dir
        self.recorder = RunHistory(os.path.join(run_dir, "history.json") if run_dir else None)
        nan_guard = StopOnNaN()
        self.shared = [self.recorder, nan_guard, *options.callbacks]
        self.best = self.checkpointer = self.state = None
        if run_dir:
            os.makedirs(os.path.join(run_dir, CHECKPOINT_DIR), exist_ok=True)
            self.best = BestCheckpoint(model, os.path.join(run_dir, CHECKPOINT_DIR, BEST_WEIGHTS),
                                       best_epoch_monitor(task_of(model), validation=val_ds is not None))
            self.shared.append(self.best)
            self.checkpointer = RunCheckpointer(model, os.path.join(run_dir, CHECKPOINT_DIR))
            self.checkpointer.recorder, self.checkpointer.best_checkpoint = self.recorder, self.best
            self.checkpointer.add_random(options.augmenter)
            if options.resume:
                self.state = self.checkpointer.load()
            elif os.path.exists(self.checkpointer.path):
                os.remove(self.checkpointer.path)  # a fresh run: an old state must not be mixed in later
        elif options.resume:
            raise TrainingError("resume=True needs the run_dir that holds the state to resume from.")
        seed = int(np.random.randint(2**31)) if options.seed is None else int(options.seed)
        self.run = Runner(model, train_ds, val_ds, self.shared, options.class_weight, options.augmenter,
                          options.jit_compile, options.verbose, options.label_smoothing, nan_guard=nan_guard,
                          run_dir=run_dir, checkpointer=self.checkpointer, mixing=options.mixing, seed=seed,
                          rebuild_train=options.rebuild_train)
        self.epochs_done = 0
        self.last_part = None  # what the last stage that ran here trained: a cached part, or None (the whole model)
        freezing.freeze_backbone(model)

    def go_on_from_saved_state(self) -> None:
        """A resumed run: its weights, random states, history and best epoch as the last finished epoch left them."""
        state, best = self.state, self.best
        if state is None:
            return
        self.checkpointer.restore_weights(state)
        self.checkpointer.restore_random(state)
        self.recorder.records = list(state.records)
        kept = state.best_checkpoint or {}
        written = kept.get("written_epoch")
        if state.best_weights is not None:  # the best epoch's weights were newer than the file
            best.restore(kept.get("best"), kept.get("epoch"), state.best_weights, state.best, written)
        elif state.best is not None:  # the file holds the best epoch
            best.restore(state.best, kept.get("epoch", written), None, state.best, written)
        self.log.info("resuming: %s; finished epochs are kept", state.describe())

    def plan(self) -> None:
        """Where stage 2's cut is, what each stage caches (and why), the clock and the caches."""
        cfg, options, model = self.cfg, self.options, self.model
        self.cut = self.method.cut(model, cfg.stage2) if cfg.stage2.epochs > 0 else None  # below it nothing trains
        mixing = options.mixing
        self.cache_plan = plan_caching(
            options.cache_features, self.train_ds, options.augmenter, cfg.stage1.epochs, cfg.stage2.epochs, self.cut,
            options.cache_views, options.inputs_random,
            bottom_computes=bool(self.cut) and caching.computes_below(model, self.cut),
            mixes_images=mixing is not None and mixing.images)
        self.log.info("caching: %s", self.cache_plan.reason)
        if mixing is not None and (mixing.images or mixing.features):
            self.log.info("mixing: %s; labels mixed alike (soft targets)", mixing.describe())
        self.clock = StageClock(self.state.seconds if self.state is not None else None)
        if self.checkpointer is not None:
            self.checkpointer.clock = self.clock  # each saved epoch keeps the seconds spent so far
        self.caches = options.caches or Caches(model, self.train_ds, self.val_ds,
                                               int(options.memory_budget_mb * 2**20), options.run_dir,
                                               progress=options.verbose not in (0, "0"))

    def stage1(self) -> None:
        """The head on a frozen backbone (on cached features when the plan says so)."""
        cfg, state, plan = self.cfg, self.state, self.cache_plan
        if state is not None and state.after(1):
            self.epochs_done = state.epochs_done
            if cfg.stage1.epochs > 0:
                self.log.info("stage 1: finished before the interruption, skipped")
            return
        if cfg.stage1.epochs == 0:
            return
        self.log.info("stage 1: backbone frozen; training the head (%s)", _trainable_summary(self.model))
        _enter_stage(self.shared, 1)
        with self.clock.timing("stage1"):
            part = None
            if plan.stage1:
                with self.clock.timing("cache"):
                    part = self.caches.for_head(augmenter=self.options.augmenter if plan.views > 1 else None,
                                                views=plan.views, cut=self.cut if plan.stage2 else None)
            self.epochs_done = self.run.stage(cfg.stage1, cfg.stage1.learning_rate, 0, part, position=(1, 0),
                                              state=state)
            self.last_part = part

    def stage2(self) -> None:
        """The method's phases (one, or a block more each): what trains is the method's, at layer-wise rates."""
        cfg, state, model = self.cfg, self.state, self.model
        phases = self.method.phases(model, cfg.stage2) if cfg.stage2.epochs > 0 else []
        if not phases or (state is not None and state.after(2, len(phases) - 1)):
            return
        with self.clock.timing("stage2"):
            rate = cfg.stage2_learning_rate
            multipliers = self.method.multipliers(model, cfg.stage2)
            _enter_stage(self.shared, 2)
            part = None
            if self.cache_plan.stage2:
                names = [layer.name for layer in freezing.backbone_layers(model)]
                part = self.caches.for_cut(names[self.cut] if self.cut < len(names) else None)  # the lowest cut
            else:
                self.caches.close()  # free memory before the full model trains
            self.last_part = part
            steps_done = 0
            with recompute.recomputed(_recomputed_layers(model, cfg.stage2, self.cut, self.method)):
                for index, (unfreeze, epochs) in enumerate(phases):
                    if state is not None and state.after(2, index):
                        steps_done += epochs * ((part.steps if part else self.run.steps) or 0)
                        if (state.stage, state.phase) == (2, index):
                            self.epochs_done = state.epochs_done
                        continue
                    self._phase(index, phases, unfreeze, epochs, rate, multipliers, part, steps_done)
                    steps_done += epochs * ((part.steps if part else self.run.steps) or 0)

    def _phase(self, index, phases, unfreeze, epochs, rate, multipliers, part, steps_done) -> None:
        cfg, run_dir = self.cfg, self.options.run_dir
        trained = self.method.train(self.model, cfg.stage2, unfreeze, rate, multipliers)
        where = f" phase {index + 1}/{len(phases)} ({epochs} epochs)" if len(phases) > 1 else ""
        self.log.info("stage 2%s: %s", where, trained.summary)
        last = index == len(phases) - 1
        if last and run_dir:
            write_text_atomic(os.path.join(run_dir, "stage2_trainable_layers.txt"),
                              "".join(name + "\n" for name in trained.units))
        self.epochs_done = self.run.stage(cfg.stage2, rate, self.epochs_done, part, name="stage2", epochs=epochs,
                                          multipliers=multipliers, step_offset=steps_done, early_stopping=last,
                                          position=(2, index), state=self.state)

    def interrupted(self) -> Interrupted:
        """Ctrl-C: the best epoch written, and what the user can do next."""
        run_dir = self.options.run_dir
        if self.best is not None:
            self.best.flush()
        done = self.recorder.records[-1]["epoch"] if self.recorder.records else 0
        saved = (f"{done} finished epoch(s) are saved in {os.path.join(run_dir, CHECKPOINT_DIR)}; run the same "
                 "command again (or add --resume) to continue from there" if run_dir and done else
                 "no epoch had finished, so there is nothing to resume")
        return Interrupted(f"interrupted: {saved}.")

    def history(self) -> FinetuneHistory:
        """Both stages' history, the best epoch written once at the end, and the cached validation inputs when they
        still hold for the whole model."""
        if self.best is not None:
            self.best.flush()  # the run's best epoch, written once at its end
        # Nothing below the cached part has trained since its inputs were computed (stage 2's cut is the lowest
        # of all its phases; restore_best puts back weights those layers never changed), so they stay valid.
        part = self.last_part
        kept = (CachedValidation(part.model, part.val)
                if self.options.keep_cached_validation and part is not None and part.val_exact else None)
        return FinetuneHistory(self.recorder.as_dict(), self.clock.totals(), self.cache_plan, self.best, kept)


def best_epoch_monitor(task, validation: bool):
    """What picks the run's best epoch (restore_best): the Task's own choice (`Task.best_epoch_by`) - single-label:
    the accuracy, the loss breaking ties - on the validation split, or on the training data without one."""
    prefix = "val_" if validation else ""
    if task.best_epoch_by == "accuracy":
        return AccuracyThenLoss(prefix + task.accuracy_key, prefix + "loss")
    return prefix + "loss"


def _recomputed_layers(model: keras.Model, stage2: StageConfig, cut: Optional[int], method) -> list:
    """The backbone's layers whose activations stage 2 recomputes (`stage2.recompute`, else the method's default):
    the composite ones (transformer layers) from the cut up, where the backward pass goes; logged, or why there are
    none."""
    if not method.recomputes(stage2):
        return []
    names = [layer.name for layer in freezing.backbone_layers(model)][cut or 0:]
    layers = recompute.candidates(model, names)
    why = ("stage2.recompute" if stage2.recompute else
           f"the default with method: {method.name}; stage2.recompute: false keeps them")
    if layers:
        get_logger().info("stage 2: the activations of %d layer(s) (%s ... %s) are recomputed in the backward pass, "
                          "not kept (%s)", len(layers), layers[0].name, layers[-1].name, why)
    else:
        get_logger().info("stage 2: nothing to recompute: no layer above the cut holds layers of its own and takes a "
                          "training argument (%s)", why)
    return layers


def check_stages(model: keras.Model, stage1: StageConfig | dict | None = None,
                 stage2: StageConfig | dict | None = None) -> None:
    """Refuse stage settings that do not fit `model` - an `unfreeze` layer it does not have,
    `blocks:N` without a block map, a gradual unfreeze it cannot split - changing nothing; what
    `finetune` would find only when stage 2 starts, found before any work.

    >>> import tlkeras
    >>> model = tlkeras.build_model("mobilenetv2", 2, image_size=32, weights=None,
    ...                             backbone_options={"alpha": 0.35})
    >>> check_stages(model, stage2={"unfreeze": "block_99_add"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    tlkeras.errors.BackboneError: stage2.unfreeze: the backbone has no layer 'block_99_add'. Did you mean ...
    """
    from tlkeras.config import stage_configs

    _, second = stage_configs(stage1, stage2)
    if is_auto(second.epochs):  # the phases' shape, not their length, is checked here
        second = dataclasses.replace(second, epochs=MIN_EPOCHS)
    if second.runs:
        method = get_method(second.method)
        method.check_settings(second)
        method.check(model, second)


def _enter_stage(callbacks: list, stage: int) -> None:
    """Tell the callbacks that keep a `stage` attribute (history, TensorBoard step log) which stage runs."""
    for callback in callbacks:
        if hasattr(callback, "stage"):
            callback.stage = stage


def _trainable_summary(model) -> str:
    params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return f"{params:,} trainable parameters"
