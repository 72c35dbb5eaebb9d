"""Layer-wise learning rates, schedules, weight decay and label smoothing, checked by hand."""

import keras
import tensorflow as tf
import numpy as np
import pytest

from tlkeras import distribute
from tlkeras.config import StageConfig
from tlkeras.optimizers import LayerwiseAdam, LayerwiseSGD, SparseCrossentropy, make_optimizer


def _vars():
    # distinct paths, as variables of different layers have ("head/kernel", "block_1/kernel")
    head = keras.Variable(np.ones(3, "float32"), name="head_kernel")
    low = keras.Variable(np.ones(3, "float32"), name="low_kernel")
    bias = keras.Variable(np.ones(3, "float32"), name="low_bias")
    return head, low, bias


def test_sgd_moves_each_variable_by_its_own_rate():
    head, low, bias = _vars()
    opt = LayerwiseSGD(learning_rate=0.1, multipliers={low.path: 0.25, bias.path: 0.5})
    grad = np.array([1.0, -2.0, 0.5], "float32")
    opt.apply([grad, grad, grad], [head, low, bias])
    np.testing.assert_allclose(head.numpy(), 1 - 0.1 * grad, rtol=1e-6)
    np.testing.assert_allclose(low.numpy(), 1 - 0.1 * 0.25 * grad, rtol=1e-6)
    np.testing.assert_allclose(bias.numpy(), 1 - 0.1 * 0.5 * grad, rtol=1e-6)


def test_adam_first_step_is_the_per_variable_rate_times_the_gradient_sign():
    # Adam's first step is lr * m / (sqrt(v) + eps) = lr * sign(g) (bias-corrected, eps ~ 0):
    # the multiplier must scale the step itself, not the gradient (which Adam would cancel).
    head, low, _ = _vars()
    opt = LayerwiseAdam(learning_rate=0.01, epsilon=1e-12, multipliers={low.path: 0.1})
    grad = np.array([3.0, -0.5, 100.0], "float32")
    opt.apply([grad, grad], [head, low])
    np.testing.assert_allclose(head.numpy(), 1 - 0.01 * np.sign(grad), rtol=1e-5)
    np.testing.assert_allclose(low.numpy(), 1 - 0.001 * np.sign(grad), rtol=1e-5)


def test_decoupled_weight_decay_uses_the_variable_rate_and_spares_biases():
    head, low, bias = _vars()
    opt = LayerwiseSGD(learning_rate=0.1, decay=0.5, multipliers={low.path: 0.2})
    zero = np.zeros(3, "float32")
    opt.apply([zero, zero, zero], [head, low, bias])
    np.testing.assert_allclose(head.numpy(), 1 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(low.numpy(), 1 - 0.1 * 0.2 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(bias.numpy(), 1.0)


def test_optimizer_config_round_trips():
    opt = LayerwiseAdam(learning_rate=0.01, multipliers={"a/kernel": 0.5}, decay=1e-4)
    again = LayerwiseAdam.from_config(opt.get_config())
    assert again.multipliers == {"a/kernel": 0.5} and again.decay == 1e-4


def test_warmup_then_cosine_schedule():
    stage = StageConfig(epochs=4, schedule="cosine", warmup_epochs=1)
    schedule = make_optimizer(stage, 0.1, steps_per_epoch=10)._learning_rate
    rates = [float(schedule(step)) for step in (0, 5, 10, 25, 40)]
    assert rates[0] == pytest.approx(0.0, abs=1e-9)
    assert rates[1] == pytest.approx(0.05, rel=1e-5)  # half-way through the warm-up
    assert rates[2] == pytest.approx(0.1, rel=1e-5)  # peak
    assert rates[3] == pytest.approx(0.05, rel=1e-4)  # half-way through the decay
    assert rates[4] == pytest.approx(0.0, abs=1e-7)


def test_warmup_then_constant_schedule():
    stage = StageConfig(epochs=3, schedule="constant", warmup_epochs=0.5)
    schedule = make_optimizer(stage, 0.02, steps_per_epoch=10)._learning_rate
    assert float(schedule(0)) == pytest.approx(0.0, abs=1e-9)
    assert [float(schedule(s)) for s in (5, 15, 29)] == pytest.approx([0.02, 0.02, 0.02], rel=1e-5)


def test_one_cycle_schedule():
    stage = StageConfig(epochs=10, schedule="one_cycle")
    schedule = make_optimizer(stage, 0.04, steps_per_epoch=10)._learning_rate
    assert float(schedule(0)) == pytest.approx(0.04 / 25, rel=1e-5)
    assert float(schedule(30)) == pytest.approx(0.04, rel=1e-5)  # peak after 30 % of 100 steps
    assert float(schedule(65)) == pytest.approx(0.02, rel=1e-4)  # half-way down
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-7)


def test_shifted_schedule_continues_a_stage():
    stage = StageConfig(epochs=4, schedule="cosine")
    full = make_optimizer(stage, 0.1, 10)._learning_rate
    later = make_optimizer(stage, 0.1, 10, step_offset=20)._learning_rate
    assert float(later(0)) == pytest.approx(float(full(20)), rel=1e-6)


def test_label_smoothing_on_integer_labels_matches_the_formula():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], "float32")
    labels = np.array([0, 2])
    loss = float(SparseCrossentropy(label_smoothing=0.3)(labels, probs))
    target = np.full((2, 3), 0.1)
    target[0, 0] += 0.7
    target[1, 2] += 0.7
    expected = float(np.mean(-(target * np.log(probs)).sum(axis=1)))
    assert loss == pytest.approx(expected, rel=1e-5)
    assert float(SparseCrossentropy(0.0)(labels, probs)) == pytest.approx(-np.mean(np.log([0.7, 0.8])), rel=1e-5)


def _two_layer_model(policy=None):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(4, name="low", dtype=policy)(inputs)
    outputs = keras.layers.Dense(2, name="head", dtype=policy)(hidden)
    return keras.Model(inputs, outputs)


def _one_step_deltas(multipliers_for, policy=None, strategy=None):
    """Kernel changes of one full-batch SGD step, with and without the multipliers."""
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    y = np.random.default_rng(1).normal(size=(8, 2)).astype("float32")
    deltas = []
    for scaled in (False, True):
        with (strategy or tf.distribute.get_strategy()).scope():
            model = _two_layer_model(policy)
            multipliers = {model.get_layer("low").kernel.path: multipliers_for} if scaled else None
            model.compile(LayerwiseSGD(0.1, multipliers=multipliers), loss="mse")
        before = {n: model.get_layer(n).kernel.numpy().astype("float32") for n in ("low", "head")}
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        deltas.append({n: model.get_layer(n).kernel.numpy().astype("float32") - before[n] for n in before})
    return deltas


def test_multipliers_hold_under_a_mirrored_strategy():
    # conftest splits the CPU in two: two replicas each compute half the batch's gradient
    strategy = distribute.mirrored()  # one instance per process (see tlkeras.distribute.mirrored)
    assert strategy.num_replicas_in_sync == 2
    plain, scaled = _one_step_deltas(0.25, strategy=strategy)
    assert np.abs(plain["low"]).max() > 0
    np.testing.assert_allclose(scaled["low"], 0.25 * plain["low"], rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(scaled["head"], plain["head"], rtol=1e-5)


def test_multipliers_hold_with_mixed_precision():
    # mixed_float16: Keras wraps the optimizer in a LossScaleOptimizer, which calls ours inside
    plain, scaled = _one_step_deltas(0.25, policy="mixed_float16")
    assert np.abs(plain["low"]).max() > 0
    np.testing.assert_allclose(scaled["low"], 0.25 * plain["low"], rtol=1e-3, atol=1e-7)


def test_a_saved_model_resumes_with_its_multipliers_and_optimizer_state(tmp_path):
    """Two Adam steps in one go equal one step, save to .keras, load, one more step."""
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    y = np.random.default_rng(1).normal(size=(8, 2)).astype("float32")

    def compiled():
        model = _two_layer_model()
        model.compile(LayerwiseAdam(0.05, multipliers={model.get_layer("low").kernel.path: 0.3}), loss="mse")
        return model

    straight = compiled()
    straight.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)

    first = compiled()
    first.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    first.save(tmp_path / "m.keras")
    resumed = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(resumed.optimizer, LayerwiseAdam)
    assert resumed.optimizer.multipliers == {"low/kernel": 0.3}
    resumed.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert int(resumed.optimizer.iterations) == 2
    for name in ("low", "head"):
        np.testing.assert_allclose(resumed.get_layer(name).kernel.numpy(), straight.get_layer(name).kernel.numpy(),
                                   rtol=1e-6, atol=1e-7)


def test_warmup_takes_at_most_half_of_a_short_stage():
    stage = StageConfig(epochs=1, schedule="cosine", warmup_epochs=1)
    schedule = make_optimizer(stage, 0.1, steps_per_epoch=10)._learning_rate
    assert float(schedule(5)) == pytest.approx(0.1)  # the peak at the middle, then down
    assert float(schedule(9)) < 0.1


def test_a_schedule_over_data_of_unknown_length_falls_back_to_the_constant_rate_and_says_so(caplog):
    import logging

    logging.getLogger("tlkeras").propagate = True
    try:
        with caplog.at_level(logging.WARNING, logger="tlkeras"):
            opt = make_optimizer(StageConfig(epochs=2, schedule="cosine", warmup_epochs=1), 0.01, steps_per_epoch=None)
    finally:
        logging.getLogger("tlkeras").propagate = False
    assert float(opt.learning_rate) == pytest.approx(0.01)
    assert "no known length" in caplog.text and "assert_cardinality" in caplog.text


def _fit_kernels(optimizer, strategy=None, steps=3, policy=None):
    """The two kernels after `steps` full-batch steps of fit, the same data and start every time."""
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    y = np.random.default_rng(1).normal(size=(8, 2)).astype("float32")
    with (strategy or tf.distribute.get_strategy()).scope():
        model = _two_layer_model(policy)
        model.compile(optimizer(), loss="mse")
    model.fit(x, y, batch_size=8, epochs=steps, shuffle=False, verbose=0)
    return [model.get_layer(n).kernel.numpy().astype("float32") for n in ("low", "head")]


@pytest.mark.parametrize("ours, keras_own", [
    (lambda: LayerwiseAdam(0.05), lambda: keras.optimizers.Adam(0.05)),
    (lambda: LayerwiseAdam(0.05, amsgrad=True), lambda: keras.optimizers.Adam(0.05, amsgrad=True)),
    (lambda: LayerwiseSGD(0.1, momentum=0.9), lambda: keras.optimizers.SGD(0.1, momentum=0.9)),
    (lambda: LayerwiseSGD(0.1, momentum=0.9, nesterov=True), lambda: keras.optimizers.SGD(0.1, momentum=0.9,
                                                                                           nesterov=True)),
    (lambda: LayerwiseSGD(0.1), lambda: keras.optimizers.SGD(0.1)),
], ids=["adam", "amsgrad", "momentum", "nesterov", "plain_sgd"])
@pytest.mark.parametrize("where", ["one_device", "mirrored", "mixed_float16"])
def test_the_fused_update_is_keras_own_rule(ours, keras_own, where):
    """Our optimizers apply Adam's and SGD's rule with TensorFlow's fused kernels: the same weights as Keras's own
    optimizer after three steps, on one device, on two replicas and under a LossScaleOptimizer (the kernels round
    differently in the last bit, which float16 forward passes carry into the next steps: a looser tolerance there)."""
    strategy = distribute.mirrored() if where == "mirrored" else None
    policy = "mixed_float16" if where == "mixed_float16" else None
    got, want = _fit_kernels(ours, strategy, policy=policy), _fit_kernels(keras_own, strategy, policy=policy)
    start = _fit_kernels(ours, strategy, steps=0, policy=policy)
    assert all(np.abs(w - s).max() > 1e-3 for w, s in zip(want, start))  # the steps moved every kernel
    tolerance = {"rtol": 1e-3, "atol": 1e-5} if policy else {"rtol": 1e-5, "atol": 1e-6}
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **tolerance)


def test_the_fused_update_traces_less_than_half_the_ops_of_keras_rule(monkeypatch):
    variables = [keras.Variable(np.ones((3, 3), "float32"), name=f"kernel_{i}") for i in range(10)]
    grads = [tf.ones((3, 3))] * 10

    def ops_per_variable():
        optimizer = LayerwiseAdam(0.01)
        optimizer.build(variables)
        graph = tf.function(lambda: optimizer.apply(grads, variables)).get_concrete_function().graph
        return len(graph.get_operations()) / len(variables)

    fused = ops_per_variable()  # 19 here
    monkeypatch.setattr(LayerwiseAdam, "_fusable", lambda self, gradient, variable: False)
    own = ops_per_variable()  # 43 here
    assert fused * 2 < own, (fused, own)
