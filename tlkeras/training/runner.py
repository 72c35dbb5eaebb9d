"""Carrying out a stage: compile with the stage's optimizer, the Task's loss and metrics, then fit
(or the own tf.distribute loop), with the NaN guard and the resume bookkeeping."""

from __future__ import annotations


import dataclasses
import os
from dataclasses import dataclass
from typing import Optional

import keras
import tensorflow as tf

from tlkeras import steploop
from tlkeras._logging import get_logger
from tlkeras.errors import TrainingError
from tlkeras.config import StageConfig
from tlkeras.distribute import uses_float16
from tlkeras.optimizers import make_optimizer
from tlkeras.resume import ResumableEarlyStopping, ResumeState, RunCheckpointer, seed_states
from tlkeras.rundir import CHECKPOINT_DIR
from tlkeras.tasks import get_task
from tlkeras.model import model_info, task_of
from tlkeras.training.callbacks import BEST_WEIGHTS, StopOnNaN
from tlkeras.training.parts import InMemory, Part, count_steps
from tlkeras.runtime import progress_verbosity

AUTOTUNE = tf.data.AUTOTUNE
DRAWS_PER_BATCH = 4096  # room on a random layer's generator for one batch's draws (RandAugment's ops draw several)


@dataclass
class Stages:
    stage1: StageConfig
    stage2: StageConfig

    @property
    def stage2_learning_rate(self) -> float:
        from tlkeras.config import stage2_learning_rate

        return stage2_learning_rate(self.stage1, self.stage2)


class Runner:
    """Compiles and fits either the full model on the input pipeline or a part of it on caches."""

    def __init__(self, model, train_ds, val_ds, callbacks, class_weight, augmenter, jit_compile, verbose,
                 label_smoothing=0.0, nan_guard: Optional[StopOnNaN] = None, run_dir: Optional[str] = None,
                 checkpointer: Optional[RunCheckpointer] = None, mixing=None, seed: Optional[int] = None,
                 rebuild_train=None):
        self.model, self.val_ds, self.callbacks = model, val_ds, callbacks
        self.checkpointer = checkpointer
        self.nan_guard, self.run_dir = nan_guard, run_dir
        self.label_smoothing = label_smoothing
        self.class_weight, self.jit_compile, self.verbose = class_weight, jit_compile, verbose
        self.task = task_of(model)
        self.task_options = model_info(model).task_options  # the parts trained carry no metadata
        self.seed = seed  # each epoch's batch order on cached inputs: from it and the epoch's number
        self.units = int(model.output_shape[-1])
        self.augmenter, self.rebuild_train = augmenter, rebuild_train
        self.mixing = mixing if mixing is not None and (mixing.images or mixing.features) else None
        if self.mixing is not None and self.mixing.images and checkpointer is not None:
            checkpointer.add_random(*self.mixing.layers)
        self.train_ds = self._randomised(train_ds)
        self.steps = count_steps(train_ds)

    def _randomised(self, ds, first_batch: Optional[int] = None):
        """The training pipeline with the augmenter and the image mixers on, one batch at a time (the random layers
        draw from one generator each: batches augmented in parallel would take its draws in whatever order they
        run). With `first_batch` (the number, counted over the run, of the pipeline's first batch), each batch's draws
        are a function of its number - every random layer's generator is set from it before the batch - so that they
        do not depend on what ran before (a resumed run, batches read ahead)."""
        mixer = self.mixing.image_mixer(get_task(self.task), self.units) if (
            self.mixing is not None and self.mixing.images) else None
        if self.augmenter is None and mixer is None:
            return ds
        augmenter = self.augmenter
        states = seed_states(augmenter) if augmenter is not None else []
        states += [v for layer in (self.mixing.layers if mixer is not None else []) for v in seed_states(layer)]

        def step(index, batch):
            x, y = batch
            if first_batch is not None:
                counter = (index * DRAWS_PER_BATCH) % 2**31
                with tf.control_dependencies([v.assign(tf.stack([v[0], tf.cast(counter, v.dtype)])) for v in states]):
                    x = tf.identity(x)
            if augmenter is not None:
                x = augmenter(x, training=True)
            if mixer is not None:
                x, y = mixer(index, x, y)
            return x, y

        return ds.enumerate(start=first_batch or 0).map(step).prefetch(AUTOTUNE)

    def _pipeline_for(self, epochs_before: int, epoch: int) -> Part:
        """The whole model on its training data for a phase whose first `epochs_before` epochs are done: when the data
        can be built anew and its epoch has a known length, a pipeline of the phase's own, repeated (so that fit
        keeps one iterator, and each epoch takes the next shuffle), that has taken `epochs_before` shuffles already -
        the orders an uninterrupted phase takes next; the random layers draw by batch number, from `epoch` (the run's
        epoch it starts at) on."""
        if self.rebuild_train is None or not self.steps:
            return Part(self.model, self.train_ds, self.val_ds, self.steps)
        base = self.rebuild_train()
        for _ in range(epochs_before):
            iter(base)  # a new iterator takes the next epoch's shuffle; nothing is read
        first = epoch * self.steps
        return Part(self.model, self._randomised(base.repeat(), first), self.val_ds, self.steps, repeats=True)

    def _mixed(self, part: Optional[Part], name: str):
        """(part, soft targets?, the in-memory loop's mixer) for this stage: the image mixers where the whole model
        trains on the input pipeline, feature mixup where a part trains on cached inputs."""
        if self.mixing is None:
            return part, False, None
        where = name.replace("stage", "stage ")
        if part is None:
            if self.mixing.features and not self.mixing.images:
                get_logger().info("%s: runs on the input pipeline, so feature mixup has no cached inputs to mix",
                                  where)
            return part, self.mixing.images, None
        if not self.mixing.features:
            get_logger().info("%s: trains on cached inputs, where the image mixers do not run "
                              "(augment.feature_mixup mixes cached inputs)", where)
            return part, False, None
        task = get_task(self.task)
        train = self.mixing.feature_batches(part.train, task, self.units)
        return dataclasses.replace(part, train=train), True, self.mixing.feature_step(task, self.units)

    def stage(self, stage: StageConfig, rate: float, initial_epoch: int, part: Optional["Part"] = None,
              *, name: str = "stage1", position: tuple = (1, 0), state: Optional[ResumeState] = None,
              **options) -> int:
        part, soft, mix = self._mixed(part, name)
        planned = options.pop("epochs", None)
        planned = stage.epochs if planned is None else planned
        phase_start = initial_epoch
        if state is not None and state.resumes(*position):
            phase_start, initial_epoch = state.phase_start, state.epochs_done
            get_logger().info("%s: going on from epoch %d", name.replace("stage", "stage "), initial_epoch + 1)
        else:
            state = None
        if part is None:  # the full model on the input pipeline, the phase's own, at the phase's epoch
            part = self._pipeline_for(initial_epoch - phase_start, initial_epoch)
        if self.checkpointer is not None:
            self.checkpointer.stage, self.checkpointer.phase = position
            self.checkpointer.phase_start = phase_start
        reached = run_stage(
            part.model, part.train, part.val, stage, learning_rate=rate, steps_per_epoch=part.steps,
            epochs=phase_start + planned - initial_epoch, checkpointer=self.checkpointer, resume_from=state,
            fit_steps=part.steps if part.repeats else None, memory=part.memory, initial_epoch=initial_epoch,
            callbacks=self.callbacks,
            class_weight=self.class_weight, jit_compile=self.jit_compile, verbose=self.verbose, task=self.task,
            task_options=self.task_options, label_smoothing=self.label_smoothing, soft=soft, mix=mix, seed=self.seed,
            **options,
            # On cached inputs a step takes microseconds to milliseconds and Python's per-step
            # overhead would dominate: run up to 16 steps in each call of the compiled function.
            steps_per_execution=min(part.steps or 1, 16) if part.model is not self.model else 1,
        )
        if self.nan_guard is not None and self.nan_guard.tripped is not None:
            epoch, lr = self.nan_guard.tripped
            if self.checkpointer is not None and self.checkpointer.best_checkpoint is not None:
                self.checkpointer.best_checkpoint.flush()  # the best epoch so far, for the message to point to
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



# === One stage ===


def build_train_state(model: keras.Model, element_spec=None) -> None:
    """Make every variable the compiled `model`'s train step needs - the optimizer's slots, the compiled loss's and
    metrics' state - now, symbolically, from the data's `element_spec` (batches of (x, y)).

    Left to Keras, on one device they are made while the train step is traced, and TensorFlow traces a function that
    made variables a second time: the model's forward and backward pass twice, and the optimizer's update of every
    variable, once per stage (benchmarks/fixed_costs.py: the tiny MobileNetV2's first fit epoch 2x slower). Under a
    strategy Keras builds them itself (a no-op then).
    """
    with model.distribute_strategy.scope():
        symbolic_build = getattr(model, "_symbolic_build", None)  # Keras 3's own, which fit calls under a strategy
        if element_spec is not None and symbolic_build is not None:
            symbolic_build(data_batch=element_spec)
        elif not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)


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
    memory: Optional[InMemory] = None,
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
    task_options: Optional[dict] = None,
    soft: bool = False,
    mix=None,
    seed: Optional[int] = None,
) -> int:
    """Compile with this stage's optimizer and fit `epochs` (default: the stage's) epochs;
    return the epoch count reached (initial + run).

    `steps_per_epoch` sizes the learning-rate schedule (over the whole stage, `step_offset`
    steps in); `fit_steps` is given to fit only when the training data repeats (Keras then keeps
    one iterator across epochs); `memory`, the same data as arrays held in memory, is trained on by
    `steploop.fit_arrays` on one device; `multipliers` scale the rate per variable (layer-wise rates).
    With a `checkpointer` the state is saved after every epoch; `resume_from` restores the
    optimizer and early stopping of an interrupted run before fitting on. `task` (the full model's
    Task, `tlkeras.tasks`; single-label when None) gives the loss, the metrics and where class
    weights go; `task_options` are the full model's (`Task.options`). `soft`: the training batches carry mixed
    soft targets (`tlkeras.mixing`), so the loss and metrics take those as well as plain labels; `mix`, the mixer of batches held in memory (`fit_arrays`), whose batch order
    of each epoch comes from `seed` and the epoch's number.
    """
    task = get_task(task or "single_label")
    units = int(model.output_shape[-1])
    optimizer = make_optimizer(stage, learning_rate, steps_per_epoch, multipliers=multipliers, step_offset=step_offset)
    if uses_float16(model):
        # Keras wraps only when the model's own policy is mixed_float16; parts built later are not.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        loss=task.loss(units, label_smoothing, class_weight, soft=soft, options=task_options),
        metrics=task.training_metrics(soft=soft),
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    arrays = memory is not None and steploop.fits_arrays(model)  # cached data: fit's overheads would be most of it
    own_loop = arrays or steploop.needs_own_loop(model)  # Keras's fit fails under multi-worker (steploop docs)
    # Built here, eagerly; a resumed stage loads its saved moments into these. Keras's fit needs its compiled
    # loss's and metrics' state too, tlkeras's own loops only the optimizer's.
    build_train_state(model, None if own_loop else getattr(train_ds, "element_spec", None))
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
    if verbose == "auto":  # a progress bar on a terminal; one plain line per epoch in a log or a pipe
        verbose = progress_verbosity()
    common = dict(initial_epoch=initial_epoch, epochs=initial_epoch + (stage.epochs if epochs is None else epochs),
                  callbacks=stage_callbacks, class_weight=task.fit_class_weight(class_weight), verbose=verbose)
    if arrays:
        history = steploop.fit_arrays(model, memory.train, batch_size=memory.batch_size, validation=memory.val,
                                      task=task, mix=mix, seed=seed, **common)
    elif own_loop:
        history = steploop.fit_loop(model, train_ds, validation_data=val_ds, steps_per_epoch=fit_steps, task=task,
                                    **common)
    else:  # the tf.data pipeline shuffles (Keras warns on every fit when shuffle=True reaches a Dataset)
        history = model.fit(train_ds, validation_data=val_ds, steps_per_epoch=fit_steps, shuffle=False, **common)
    return initial_epoch + len(history.epoch)
