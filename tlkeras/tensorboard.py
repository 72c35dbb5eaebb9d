"""TensorBoard logs of a whole run: both stages in one log, epochs continuing across them, the
learning rate of every step, the stage number and the model graph.

`tensorboard --logdir RUN_DIR/tensorboard` shows them.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from tlkeras.training import current_learning_rate

LOG_DIR = "tensorboard"


class StepLogger(keras.callbacks.Callback):
    """Writes `learning_rate` and `stage` against one global step counter over every fit of the
    run (each stage, and each gradual-unfreezing phase, compiles a fresh optimizer whose own
    step counter starts again at 0)."""

    def __init__(self, log_dir: str):
        super().__init__()
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "steps"))
        self.done = 0  # steps of the fits before this one
        self.stage = 0

    def on_train_begin(self, logs=None):
        self._start = int(self.model.optimizer.iterations.numpy())
        self._seen = 0  # steps of this fit logged so far

    def on_train_batch_end(self, batch, logs=None):
        optimizer = self.model.optimizer
        steps = int(optimizer.iterations.numpy()) - self._start
        # a loop that runs an epoch in one call gives each step's rate in the logs, after the fact
        if logs and "learning_rate" in logs:
            rate, steps = float(f"{logs['learning_rate']:.7g}"), self._seen + 1
        else:
            rate = current_learning_rate(optimizer)
        self._seen = steps
        with self.writer.as_default():
            tf.summary.scalar("learning_rate", rate, step=self.done + steps)
            tf.summary.scalar("stage", self.stage, step=self.done + steps)

    def on_train_end(self, logs=None):
        self.done += int(self.model.optimizer.iterations.numpy()) - self._start
        self.writer.flush()


def tensorboard_callbacks(run_dir: str) -> list:
    """Keras's TensorBoard callback (epoch scalars of both stages, the graph) and the step logger."""
    log_dir = os.path.join(run_dir, LOG_DIR)
    return [
        keras.callbacks.TensorBoard(log_dir=log_dir, write_graph=True, update_freq="epoch", profile_batch=0),
        StepLogger(log_dir),
    ]
