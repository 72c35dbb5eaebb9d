"""`steploop.fit_arrays`: the loop tlkeras trains on cached (in-memory) features with - the same training
as Keras's fit on the same batches, fit's callback hooks with each step's rate, and used where data is cached."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tlkeras
from tlkeras import steploop
from tlkeras.steploop import fit_arrays


def _arrays(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype("float32")  # 60 = 3 full batches of 16 and one of 12
    return x, (x[:, 0] + x[:, 1] > 0).astype("int64")


def _model(rate=0.01):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((5,)),
        keras.layers.Dense(8, activation="relu", kernel_regularizer=keras.regularizers.L2(0.01)),
        keras.layers.Dense(2, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(rate), loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy"])
    return model


def test_the_in_memory_loop_trains_as_fit_on_the_same_batches():
    (x, y), (vx, vy) = _arrays(), _arrays(20, seed=1)
    weights = {0: 1.0, 1: 2.0}
    looped_model = _model()
    looped = fit_arrays(looped_model, (x, y), batch_size=16, validation=(vx, vy), epochs=3, class_weight=weights,
                        seed=7).history
    # fit, one epoch at a time, on the batches fit_arrays drew (each epoch's order comes from the seed and its number)
    fitted_model, fitted = _model(), {}
    for epoch in range(3):
        order = np.random.default_rng([7, epoch]).permutation(len(y))
        ds = tf.data.Dataset.from_tensor_slices((x[order], y[order])).batch(16)
        history = fitted_model.fit(ds, initial_epoch=epoch, epochs=epoch + 1, class_weight=weights, verbose=0,
                                   validation_data=tf.data.Dataset.from_tensor_slices((vx, vy)).batch(16)).history
        for key, values in history.items():
            fitted.setdefault(key, []).extend(values)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):  # the regularisation is in the loss, as in fit
        np.testing.assert_allclose(looped[key], fitted[key], rtol=1e-5, err_msg=key)
    for a, b in zip(fitted_model.get_weights(), looped_model.get_weights()):
        np.testing.assert_allclose(b, a, atol=1e-6)


class _Steps(keras.callbacks.Callback):
    def __init__(self, stop_at=None):
        super().__init__()
        self.steps, self.epochs, self.stop_at = [], [], stop_at

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append((batch, logs["loss"], logs["learning_rate"]))
        if (len(self.epochs), batch) == self.stop_at:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_callbacks_see_every_step_with_its_rate_and_can_stop():
    x, y = _arrays()
    schedule = keras.optimizers.schedules.PolynomialDecay(0.1, decay_steps=8, end_learning_rate=0.0)
    model = _model(schedule)
    seen = _Steps()
    history = fit_arrays(model, (x, y), batch_size=16, epochs=2, callbacks=[seen])
    assert [step for step, _, _ in seen.steps] == [0, 1, 2, 3] * 2
    # each step's rate after its update, as the optimizer's schedule gives it (fit's StepLogger reads the same)
    np.testing.assert_allclose([rate for _, _, rate in seen.steps], [float(schedule(i)) for i in range(1, 9)],
                               rtol=1e-6)
    # the batch logs hold the running mean loss; the epoch's loss is the mean over its examples
    assert seen.steps[3][1] == pytest.approx(history.history["loss"][0], rel=1e-6)
    stopper = _Steps(stop_at=(1, 1))
    history = fit_arrays(_model(), (x, y), batch_size=16, initial_epoch=0, epochs=5, callbacks=[stopper])
    assert history.epoch == [0, 1] and [step for step, _, _ in stopper.steps] == [0, 1, 2, 3, 0, 1]


def test_stage_1_on_cached_features_trains_in_memory_and_stage_2_on_the_pipeline(tmp_path, image_folder, tiny,
                                                                                monkeypatch):
    used = []
    original = steploop.fit_arrays
    monkeypatch.setattr(steploop, "fit_arrays", lambda model, *a, **k: used.append(model.name) or original(
        model, *a, **k))
    result = tlkeras.build_and_finetune(image_folder, **tiny, stage1={"epochs": 2},
                                        stage2={"epochs": 1, "unfreeze": "all"}, cache_features=True,
                                        output_dir=str(tmp_path / "run"), export=False)
    assert len(used) == 1 and used[0] != result.model.name  # the head alone, on its cached features
    assert result.history["stage"] == [1, 1, 2] and np.isfinite(result.history["val_loss"]).all()


def test_fit_prints_what_keras_fit_prints(capfd):
    """verbose=2 (a log, a pipe): one line per epoch in fit's own format, with its metrics and no step rate."""
    x, y = _arrays()
    fit_arrays(_model(), (x, y), batch_size=16, validation=(x[:16], y[:16]), epochs=2, verbose=2)
    lines = [line for line in capfd.readouterr().out.splitlines() if " - loss: " in line]
    assert len(lines) == 2 and all(line.startswith("4/4 - ") for line in lines)
    assert all("val_loss: " in line and "accuracy: " in line and "learning_rate" not in line for line in lines)


def test_cached_arrays_of_texts_are_held_as_they_are():
    """Strings (a text module's inputs) are Python objects: the aligned buffer for tensors is not for them."""
    from tlkeras.caching import _concatenate
    from tlkeras.memory import aligned_empty

    assert aligned_empty((2, 3), object).shape == (2, 3)
    parts = [np.array(["a b", "c"], dtype=object), np.array(["d"], dtype=object)]
    assert _concatenate(parts).tolist() == ["a b", "c", "d"]
    floats = _concatenate([np.ones((2, 3), "float32"), np.zeros((1, 3), "float32")])
    assert floats.ctypes.data % 64 == 0 and floats.sum() == 6
