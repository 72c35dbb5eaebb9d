"""Training loops for where `model.fit` cannot serve: `fit_loop` on tf.distribute's documented custom-training
API, and `fit_arrays` on data held in memory (tlkeras's caches), where fit's overheads are most of the time.

Keras 3.15's `fit` dies at the first step under MultiWorkerMirroredStrategy ("Attempt to convert a
value (PerReplica:...)", keras-team/keras#20585, open). `fit_loop` trains a compiled model the way
the tf.distribute guide does it - `strategy.run` of a step inside a `tf.function`, the per-example
loss averaged over the global batch, the model's own losses scaled by the replica count, the
gradients all-reduced by the Keras optimizer - and keeps fit's contract for the parts tlkeras
uses: `initial_epoch`/`epochs`, `steps_per_epoch` on repeating data, `class_weight`, validation
data, the loss and accuracy in the logs (`loss`, `accuracy`, `val_loss`, `val_accuracy`), and
Keras callbacks (train/epoch/batch hooks, `model.stop_training`).

It runs under any strategy (the default one included), so it is tested against `fit` on one
device and under MirroredStrategy on two, and runs the real two-process multi-worker test.
"""

from __future__ import annotations

from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from tlkeras._logging import get_logger
from tlkeras.tasks import get_task


class LoopHistory:
    """What `fit` returns, as far as tlkeras reads it: `.epoch` and `.history`."""

    def __init__(self):
        self.epoch: list[int] = []
        self.history: dict[str, list] = {}

    def record(self, epoch: int, logs: dict) -> None:
        """Keep an epoch's logs, as fit's History callback does."""
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)


def needs_own_loop(model: keras.Model) -> bool:
    """Whether tlkeras trains `model` with `fit_loop` rather than `model.fit`: under a mirrored
    strategy with more than one replica. Multi-worker: `fit` fails (keras-team/keras#20585).
    MirroredStrategy on one machine: `fit` runs, but a two-stage run on 2 replicas did not match
    the same run on one device at the same global batch (validation loss 2.52 vs 2.61 after the
    first cached epoch), while `fit_loop` matches it to float precision on both - one loop, checked,
    for every mirrored case. TPUs keep `fit` (Keras's TPU path, static shapes)."""
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    mirrored = (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)
    return isinstance(strategy, mirrored) and (
        strategy.num_replicas_in_sync > 1 or isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy))


def distribute(strategy: tf.distribute.Strategy, ds: tf.data.Dataset):
    """A distributed dataset, sharded by data (each worker keeps its part of every global batch:
    tlkeras's pipelines read from lists of paths or arrays, not from files TF could shard)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(ds.with_options(options))


def fit_loop(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    *,
    validation_data: Optional[tf.data.Dataset] = None,
    initial_epoch: int = 0,
    epochs: int = 1,
    steps_per_epoch: Optional[int] = None,
    callbacks: Optional[list] = None,
    class_weight: Optional[dict] = None,
    verbose=0,
    task=None,
) -> LoopHistory:
    """Train the compiled `model` on batched (x, label) data under the current strategy. `task`
    (`tlkeras.tasks`; single-label when None) counts the right answers logged as its accuracy.

    Example:

    >>> import numpy as np, tensorflow as tf, keras
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    >>> model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy())
    >>> x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    >>> ds = tf.data.Dataset.from_tensor_slices((x, (x[:, 0] > 0).astype("int64"))).batch(8)
    >>> history = fit_loop(model, ds, validation_data=ds, epochs=2)
    >>> history.epoch, sorted(history.history)
    ([0, 1], ['accuracy', 'loss', 'val_accuracy', 'val_loss'])
    """
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    with strategy.scope():
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        return _fit(strategy, model, train_ds, validation_data, initial_epoch, epochs, steps_per_epoch, callbacks,
                    class_weight, verbose not in (0, "0"), get_task(task or "single_label"))


def _step_functions(model, task, class_weight, replicas: int = 1):
    """(train_step, eval_step) of one batch (x, y) -> (loss sum with the penalty, correct count,
    example count): fit's loss (mean over the global batch, class weights per example, the model's
    own losses once per global batch), its gradient applied by the model's optimizer."""
    loss_object = model.loss
    weights_table = None
    if class_weight:
        size = max(int(k) for k in class_weight) + 1
        table = np.ones(size, np.float32)
        for k, v in class_weight.items():
            table[int(k)] = float(v)
        weights_table = tf.constant(table)

    def per_example(y, probabilities):
        values = loss_object.call(y, probabilities)  # unreduced
        return tf.cast(values, tf.float32)

    def train_step(batch):
        x, y = batch
        with tf.GradientTape() as tape:
            probabilities = model(x, training=True)
            losses = per_example(y, probabilities)
            if weights_table is not None:
                losses = losses * tf.gather(weights_table, tf.cast(task.dominant_class(y), tf.int32))
            global_batch = tf.cast(tf.shape(y)[0] * replicas, tf.float32)
            penalty = _penalty(model)
            loss = tf.reduce_sum(losses) / global_batch + penalty / replicas
            scaled = model.optimizer.scale_loss(loss) if hasattr(model.optimizer, "scale_loss") else loss
        variables = model.trainable_variables
        gradients = tape.gradient(scaled, variables)
        model.optimizer.apply(gradients, variables)
        return _sums(task, losses, y, probabilities, penalty)

    def eval_step(batch):
        x, y = batch
        probabilities = model(x, training=False)
        return _sums(task, per_example(y, probabilities), y, probabilities, _penalty(model))

    if getattr(model, "jit_compile", False) is True:  # as fit: XLA for the per-replica step
        train_step = tf.function(train_step, jit_compile=True)
        eval_step = tf.function(eval_step, jit_compile=True)
    return train_step, eval_step


def _fit(strategy, model, train_ds, validation_data, initial_epoch, epochs, steps_per_epoch, callbacks, class_weight,
         report: bool, task):
    accuracy = task.accuracy_key
    train_step, eval_step = _step_functions(model, task, class_weight, strategy.num_replicas_in_sync)

    # The batch is taken outside the compiled step, through get_next_as_optional (which the
    # workers agree on): a step that runs into the end of the data inside the graph still bumps
    # the optimizer's step counter - Adam's bias correction then drifts from fit's.
    @tf.function(reduce_retracing=True)
    def train_on(batch):
        return _reduce(strategy, strategy.run(train_step, args=(batch,)))

    @tf.function(reduce_retracing=True)
    def eval_on(batch):
        return _reduce(strategy, strategy.run(eval_step, args=(batch,)))

    callback_list = keras.callbacks.CallbackList(callbacks or [], model=model)
    history = LoopHistory()
    model.stop_training = False
    train_data = distribute(strategy, train_ds)
    val_data = distribute(strategy, validation_data) if validation_data is not None else None
    repeating = steps_per_epoch is not None
    iterator = iter(train_data) if repeating else None
    callback_list.on_train_begin()
    logs: dict = {}
    for epoch in range(initial_epoch, epochs):
        callback_list.on_epoch_begin(epoch)
        totals = np.zeros(3)
        if not repeating:
            iterator = iter(train_data)
        step = 0
        while steps_per_epoch is None or step < steps_per_epoch:
            batch = iterator.get_next_as_optional()
            if not batch.has_value():
                break
            callback_list.on_train_batch_begin(step)
            sums = train_on(batch.get_value())
            totals += [float(v) for v in sums]
            logs = _logs(totals, accuracy)
            callback_list.on_train_batch_end(step, logs)
            step += 1
            if model.stop_training:
                break
        logs = _logs(totals, accuracy)
        if val_data is not None and not model.stop_training:
            val_totals = np.zeros(3)
            val_iterator = iter(val_data)
            while True:
                batch = val_iterator.get_next_as_optional()
                if not batch.has_value():
                    break
                val_totals += [float(v) for v in eval_on(batch.get_value())]
            logs.update({f"val_{k}": v for k, v in _logs(val_totals, accuracy).items()})
        callback_list.on_epoch_end(epoch, logs)
        if report:  # fit's progress bar, in one line per epoch
            get_logger().info("epoch %d/%d: %s", epoch + 1, epochs,
                              " - ".join(f"{k} {v:.4f}" for k, v in logs.items()))
        history.record(epoch, logs)
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    return history


def fits_arrays(model: keras.Model) -> bool:
    """Whether `fit_arrays` can train `model`: on one device (no strategy, or one replica that is no TPU)."""
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    tpu = isinstance(strategy, (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy))
    return strategy.num_replicas_in_sync == 1 and not tpu


def fit_arrays(
    model: keras.Model,
    train: tuple,
    *,
    batch_size: int,
    validation: Optional[tuple] = None,
    initial_epoch: int = 0,
    epochs: int = 1,
    callbacks: Optional[list] = None,
    class_weight: Optional[dict] = None,
    verbose=0,
    task=None,
    seed: Optional[int] = None,
    mix=None,
) -> LoopHistory:
    """Train the compiled `model` on data held in memory, `(inputs, labels)` with inputs an array or a
    tuple of arrays: each epoch is one call of a compiled loop over its shuffled batches, the validation
    one more. For what tlkeras trains on cached features and activations, where a step takes microseconds
    and `fit`'s per-step and per-epoch overhead and the tracing of its multi-step function cost more than
    the training (benchmarks/RESULTS.md, issue 17). One device (`fits_arrays`).

    Same loss, metrics, class weights and model losses as `fit_loop` (and `fit`); batches of
    `batch_size` in a new order every epoch, a function of `seed` (else one drawn from NumPy's global generator,
    which `keras.utils.set_random_seed` seeds) and the epoch's number: a run resumed at epoch k takes epoch k's
    order, as the uninterrupted run did. `mix`, fn(inputs, labels, [epoch, step]) -> a mixed training batch
    (`tlkeras.mixing.Mixing.feature_step`). Callbacks get fit's hooks; the batch hooks run after each
    epoch's loop, with the running loss and each step's `learning_rate` in their logs.

    >>> import numpy as np, keras
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    >>> model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy())
    >>> x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    >>> history = fit_arrays(model, (x, (x[:, 0] > 0).astype("int64")), batch_size=8, validation=(x[:8], np.zeros(8)),
    ...                      epochs=2)
    >>> history.epoch, sorted(history.history)
    ([0, 1], ['accuracy', 'loss', 'val_accuracy', 'val_loss'])
    """
    from tlkeras.memory import as_tensor

    task = get_task(task or "single_label")
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    train_step, eval_step = _step_functions(model, task, class_weight)

    def tensors(data):
        inputs, labels = data
        inputs = tuple(as_tensor(a) for a in inputs) if isinstance(inputs, (list, tuple)) else as_tensor(inputs)
        return inputs, as_tensor(np.asarray(labels)), len(labels)

    def batch_of(inputs, labels, rows):
        return keras.tree.map_structure(lambda t: tf.gather(t, rows), inputs), tf.gather(labels, rows)

    x, y, n = tensors(train)
    steps = -(-n // batch_size)

    validation = tensors(validation) if validation is not None else None

    # One traced function per stage runs an epoch's batches and then its validation. The loops are
    # tf.while_loop, traced without AutoGraph: converting every function the step calls (the model's
    # layers, the loss, the task) was most of the cost of tracing a stage on cached data, and nothing in a
    # Keras 3 layer needs it.
    @tf.function(autograph=False)
    def run_epoch(order, epoch):
        def train(step, sums, rates):
            rows = order[step * batch_size:(step + 1) * batch_size]
            batch = batch_of(x, y, rows)
            if mix is not None:
                batch = mix(*batch, tf.stack([epoch, step]))
            sums = sums.write(step, tf.stack(train_step(batch)))
            return step + 1, sums, rates.write(step, tf.cast(model.optimizer.learning_rate, tf.float32))

        _, sums, rates = tf.while_loop(lambda step, *_: step < steps, train, (
            tf.constant(0), tf.TensorArray(tf.float32, size=steps), tf.TensorArray(tf.float32, size=steps)))
        done = (sums.stack(), rates.stack())
        if validation is None:
            return done
        vx, vy, vn = validation

        def evaluate(step, totals):
            rows = tf.range(step * batch_size, tf.minimum((step + 1) * batch_size, vn))
            return step + 1, totals + tf.stack(eval_step(batch_of(vx, vy, rows)))

        with tf.control_dependencies(done):  # on the weights of the epoch's last step
            totals = tf.while_loop(lambda step, _: step < -(-vn // batch_size), evaluate,
                                   (tf.constant(0), tf.zeros([3])))[1]
        return (*done, totals)

    seed = int(seed) if seed is not None else int(np.random.randint(2**31))
    accuracy = task.accuracy_key
    # fit's own progress output (a bar on a terminal, one line per epoch with verbose=2), from the same logger fit uses
    progress = [_ProgressBar()] if verbose not in (0, "0") else []
    callback_list = keras.callbacks.CallbackList(list(callbacks or []) + progress, model=model, verbose=verbose,
                                                 epochs=epochs, steps=steps)
    history = LoopHistory()
    model.stop_training = False
    callback_list.on_train_begin()
    logs: dict = {}
    for epoch in range(initial_epoch, epochs):
        callback_list.on_epoch_begin(epoch)
        order = tf.constant(np.random.default_rng([seed, epoch]).permutation(n), tf.int32)
        per_step, rates, *validated = (t.numpy() for t in run_epoch(order, tf.constant(epoch, tf.int32)))
        totals = np.zeros(3)
        for step, (row, rate) in enumerate(zip(per_step, rates)):
            callback_list.on_train_batch_begin(step)
            totals += row
            callback_list.on_train_batch_end(step, {"loss": totals[0] / totals[2], "learning_rate": float(rate)})
            if model.stop_training:
                break
        logs = _logs(totals, accuracy)
        if validated and not model.stop_training:
            logs.update({f"val_{k}": v for k, v in _logs(np.asarray(validated[0], np.float64), accuracy).items()})
        callback_list.on_epoch_end(epoch, logs)
        history.record(epoch, logs)
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    return history


class _ProgressBar(keras.callbacks.ProgbarLogger):
    """fit's progress output, without the per-step learning rate fit_arrays gives the other callbacks."""

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, {k: v for k, v in (logs or {}).items() if k != "learning_rate"})


def _penalty(model):
    """The model's own losses (regularisation), as fit adds them to the loss it trains and logs."""
    if not model.losses:
        return tf.constant(0.0)
    return tf.add_n([tf.cast(v, tf.float32) for v in model.losses])


def _sums(task, losses, y, probabilities, penalty):
    """Per-replica (loss sum incl. the penalty per example, correct count, example count); the
    Task says what a right answer is."""
    correct = tf.reduce_sum(task.correct(y, probabilities))
    count = tf.cast(tf.shape(losses)[0], tf.float32)
    return tf.reduce_sum(losses) + penalty * count, correct, count


def _reduce(strategy, sums):
    return [strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in sums]


def _logs(totals, accuracy: str = "accuracy") -> dict:
    loss, correct, count = totals
    if count == 0:
        return {"loss": float("nan"), accuracy: float("nan")}
    return {"loss": loss / count, accuracy: correct / count}
