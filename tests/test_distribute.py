"""tf.distribute: strategy resolution, tlkeras's own loop against fit, MirroredStrategy against one device,
and a real two-process MultiWorkerMirroredStrategy run on 127.0.0.1 (completed, and killed and resumed)."""

import json
import os
import signal
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tlkeras
from tlkeras import distribute
from tlkeras.config import FinetuneConfig
from tlkeras.errors import ConfigError
from tlkeras.steploop import fit_loop
from tlkeras.workflow import _distributed_settings

WORKER = os.path.join(os.path.dirname(__file__), "multiworker_worker.py")


# === Strategy resolution (machines mocked; TPUClusterResolver is never called) ===


def _tpu_factory(calls):
    def factory(address):
        calls.append(address)
        return tf.distribute.get_strategy()  # stands in for the TPUStrategy

    return factory


def test_auto_picks_a_configured_tpu_first():
    calls = []
    strategy, why = distribute.resolve_strategy("auto", env={"TPU_NAME": "node-1", "TF_CONFIG": ""}, gpus=[],
                                                accelerator_present=False, tpu_strategy_factory=_tpu_factory(calls))
    assert calls == ["node-1"] and why == "a TPU is configured (node-1)"
    distribute.resolve_strategy("auto", env={"COLAB_TPU_ADDR": "10.0.0.2:8470"}, gpus=[], accelerator_present=False,
                                tpu_strategy_factory=_tpu_factory(calls))
    distribute.resolve_strategy("auto", env={}, gpus=[], accelerator_present=True,  # a TPU VM
                                tpu_strategy_factory=_tpu_factory(calls))
    distribute.resolve_strategy("tpu", "my-tpu", env={"TPU_NAME": "other"}, gpus=[], accelerator_present=False,
                                tpu_strategy_factory=_tpu_factory(calls))
    assert calls == ["node-1", "grpc://10.0.0.2:8470", "local", "my-tpu"]


def test_auto_picks_multi_worker_from_tf_config(monkeypatch):
    made = []
    monkeypatch.setattr(distribute, "_multi_worker", lambda: made.append(1) or tf.distribute.get_strategy())
    tf_config = json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}})
    _, why = distribute.resolve_strategy("auto", env={"TF_CONFIG": tf_config}, gpus=[], accelerator_present=False)
    assert made == [1] and why == "TF_CONFIG names 2 machines"
    one = json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}})
    strategy, why = distribute.resolve_strategy("auto", env={"TF_CONFIG": one}, gpus=[], accelerator_present=False)
    assert made == [1] and strategy is tf.distribute.get_strategy() and why == "one machine, no GPU"


def test_auto_mirrors_over_several_gpus():
    strategy, why = distribute.resolve_strategy("auto", env={}, gpus=["gpu0", "gpu1"], accelerator_present=False)
    assert isinstance(strategy, tf.distribute.MirroredStrategy) and why == "2 GPUs"
    assert strategy is distribute.mirrored()  # one instance per device set and process


def test_a_strategy_in_scope_is_used():
    strategy = distribute.mirrored()
    with strategy.scope():
        chosen, why = distribute.resolve_strategy("auto", env={"TPU_NAME": "x"}, gpus=[], accelerator_present=False)
    assert chosen is strategy and why == "the MirroredStrategy in scope"


def test_tpu_without_a_tpu_is_explained():
    with pytest.raises(ConfigError, match=r"strategy: tpu, but no TPU is configured: set tpu: <name or grpc://address>"):
        distribute.resolve_strategy("tpu", env={}, gpus=[], accelerator_present=False)
    with pytest.raises(ConfigError, match=r"strategy: 'mirored' is not valid: use one of .* Did you mean 'mirrored'"):
        FinetuneConfig.from_dict({"strategy": "mirored"})


@pytest.mark.parametrize("spec, expected", [
    ({"cluster": {"worker": ["a", "b"]}, "task": {"type": "worker", "index": 0}}, (True, "worker-0")),
    ({"cluster": {"worker": ["a", "b"]}, "task": {"type": "worker", "index": 1}}, (False, "worker-1")),
    ({"cluster": {"chief": ["c"], "worker": ["a"]}, "task": {"type": "worker", "index": 0}}, (False, "worker-0")),
    ({"cluster": {"chief": ["c"], "worker": ["a"]}, "task": {"type": "chief", "index": 0}}, (True, "chief-0")),
])
def test_the_chief_is_the_chief_task_or_worker_0(monkeypatch, spec, expected):
    monkeypatch.setattr(distribute, "is_multi_worker", lambda strategy: True)
    assert distribute.worker_role(None, env={"TF_CONFIG": json.dumps(spec)}) == expected


def test_batch_size_is_per_replica_and_rates_scale_on_request():
    cfg = FinetuneConfig.from_dict({"batch_size": 8, "stage1": {"learning_rate": 0.01}})
    assert _distributed_settings(cfg, 1) is cfg
    two = _distributed_settings(cfg, 2)
    assert two.batch_size == 16 and two.stage1.learning_rate == 0.01
    scaled = _distributed_settings(cfg.merged({"scale_learning_rate": True}), 4)
    assert scaled.batch_size == 32 and scaled.stage1.learning_rate == pytest.approx(0.04)
    assert scaled.stage2_learning_rate == pytest.approx(4 * cfg.stage2_learning_rate)


# === tlkeras's own loop ===


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)).astype("float32")  # 60 = 3 full batches of 16 and one of 12
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(16)


def _model():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((5,)),
        keras.layers.Dense(8, activation="relu", kernel_regularizer=keras.regularizers.L2(0.01)),
        keras.layers.Dense(2, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy"])
    return model


def test_own_loop_trains_exactly_as_fit():
    ds = _data()
    weights = {0: 1.0, 1: 2.0}
    a = _model()
    fitted = a.fit(ds, epochs=3, validation_data=ds, class_weight=weights, verbose=0).history
    b = _model()
    looped = fit_loop(b, ds, epochs=3, validation_data=ds, class_weight=weights).history
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):  # the regularisation is in the loss, as in fit
        np.testing.assert_allclose(looped[key], fitted[key], rtol=1e-5, err_msg=key)
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(y, x, atol=1e-6)


def test_own_loop_on_two_replicas_matches_one_device():
    ds = _data()
    one = _model()
    fit_loop(one, ds, epochs=3)
    strategy = distribute.mirrored()  # the two logical CPUs conftest makes
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        two = _model()
    fit_loop(two, ds, epochs=3)
    for x, y in zip(one.get_weights(), two.get_weights()):
        np.testing.assert_allclose(y, x, atol=1e-6)


class _StopAfter(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = []

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append((batch, round(float(logs["loss"]), 6)))
        if batch == 1:
            self.model.stop_training = True


def test_own_loop_honours_callbacks_and_initial_epoch():
    stop = _StopAfter()
    history = fit_loop(_model(), _data(), initial_epoch=2, epochs=5, callbacks=[stop])
    assert history.epoch == [2] and [b for b, _ in stop.batches] == [0, 1]


def test_mirrored_two_stage_run_matches_one_device(tmp_path, image_folder, tiny):
    # The same global batch (32 = 16 per replica x 2) on two logical CPUs and on one device; one batch
    # per epoch (18 training images), so the order of the examples cannot differ. No mixing: the rows of a batch
    # are paired in their order, which the two paths keep differently.
    options = {**tiny, "data": image_folder, "val_split": 0.25, "export": False, "head": {"dropout": 0.0},
               "augment": "none",
               "stage1": {"epochs": 2}, "stage2": {"epochs": 2, "unfreeze": "blocks:2"}, "verbose": 0}
    one = tlkeras.build_and_finetune(**{**options, "batch_size": 32}, strategy="default", output_dir=str(tmp_path / "a"))
    two = tlkeras.build_and_finetune(**{**options, "batch_size": 16}, strategy="mirrored", output_dir=str(tmp_path / "b"))
    assert two.history["epoch"] == [1, 2, 3, 4]
    np.testing.assert_allclose(two.history["val_loss"], one.history["val_loss"], rtol=1e-4)
    for x, y in zip(one.model.get_weights(), two.model.get_weights()):
        np.testing.assert_allclose(y, x, atol=1e-4)


# === A real two-process multi-worker run on 127.0.0.1 ===


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _run_cluster(options, tmp_path, kill_worker_1_at=()):
    """Start two workers, wait for both (at most 5 minutes), always clean up; (returncodes, outputs)."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    procs = []
    try:
        for index in range(2):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            extra = list(map(str, kill_worker_1_at)) if index == 1 else []
            procs.append(subprocess.Popen(
                [sys.executable, WORKER, tf_config, json.dumps(options), str(tmp_path / f"weights{index}.npz"), *extra],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            ))
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs], outputs


def _result(output):
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture
def cluster_options(tmp_path, image_folder, tiny):
    return {**tiny, "data": image_folder, "val_split": 0.25, "batch_size": 8, "head": {"dropout": 0.0}, "output_dir": str(tmp_path / "run"),
            "stage1": {"epochs": 2}, "stage2": {"epochs": 3, "unfreeze": "blocks:2"}}


def _check_finished_cluster(codes, outputs, tmp_path, options):
    assert codes == [0, 0], "\n".join(o[-3000:] for o in outputs)
    chief, worker = _result(outputs[0]), _result(outputs[1])
    assert "MultiWorkerMirroredStrategy" in outputs[0] or "CollectiveAllReduceStrategy" in outputs[0]
    assert "global batch 16 = batch_size 8 x 2 replicas" in outputs[0]
    assert chief["epochs"] == worker["epochs"] == [1, 2, 3, 4, 5]
    assert chief["stages"] == [1, 1, 2, 2, 2]
    # only the chief wrote the run directory; the other worker's folder is gone
    assert chief["export_dir"] and worker["export_dir"] is None and worker["run_dir"] == options["output_dir"]
    assert "worker-1 is not the chief" in outputs[1]
    folder = [line for line in outputs[1].splitlines() if "its files go to" in line][0].split("its files go to ")[1]
    assert not os.path.exists(folder.split(" ")[0])
    # the workers end with identical weights
    a, b = np.load(tmp_path / "weights0.npz"), np.load(tmp_path / "weights1.npz")
    assert a.files == b.files
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key])
    with open(os.path.join(options["output_dir"], "run.json"), encoding="utf-8") as f:
        record = json.load(f)
    assert record["devices"]["replicas"] == 2 and "Strategy" in record["devices"]["strategy"]
    assert record["devices"]["strategy"] != "_DefaultDistributionStrategy"
    # the chief's export loads and predicts
    served = tf.saved_model.load(chief["export_dir"]).signatures["serving_default"]
    with open(os.path.join(options["data"], "red", sorted(os.listdir(os.path.join(options["data"], "red")))[0]), "rb") as f:
        out = served(image_bytes=tf.constant([f.read()]))
    assert out["probabilities"].shape == (1, 3)
    np.testing.assert_allclose(float(tf.reduce_sum(out["probabilities"])), 1.0, atol=1e-5)
    return chief


@pytest.mark.slow
def test_a_killed_worker_and_the_cluster_resume_in_stage_2(tmp_path, cluster_options):
    """A two-worker run killed in stage 2, refused while the workers disagree, then restarted: the
    restarted cluster completes both stages and passes every check of a finished cluster (epochs and
    stages, chief-only writes, identical weights on both workers, the chief's export)."""
    codes, outputs = _run_cluster(cluster_options, tmp_path, kill_worker_1_at=(2, 4))
    assert codes[1] == -signal.SIGKILL
    assert codes[0] != 0 and "lost contact with a worker of the cluster" in outputs[0], outputs[0][-3000:]
    # a worker whose saved state is lost would start afresh: the workers find out before training
    folder = [line for line in outputs[1].splitlines() if "its files go to" in line][0].split("its files go to ")[1]
    state = os.path.join(folder.split(" ")[0], "checkpoints", "resume.npz")
    os.replace(state, tmp_path / "aside.npz")
    codes, outputs = _run_cluster(cluster_options, tmp_path)
    assert codes == [1, 1], outputs[0][-2000:]
    for output in outputs:
        assert ("the workers would start from different points (stage 2 after epoch 3, fresh start)" in output), output[-2000:]
    os.makedirs(os.path.dirname(state), exist_ok=True)
    os.replace(tmp_path / "aside.npz", state)
    # restart every worker with the same command
    codes, outputs = _run_cluster(cluster_options, tmp_path)
    for output in outputs:
        assert "resuming: stage 2 in progress, 3 epoch(s) done" in output and "stage 2: going on from epoch 4" in output
        assert "stage 1: finished before the interruption, skipped" in output
    _check_finished_cluster(codes, outputs, tmp_path, cluster_options)
    with open(os.path.join(cluster_options["output_dir"], "history.json"), encoding="utf-8") as f:
        history = json.load(f)
    assert history["epoch"] == [1, 2, 3, 4, 5] and history["stage"] == [1, 1, 2, 2, 2]


def test_own_loop_with_xla_matches_without():
    ds = _data()
    plain = _model()
    fit_loop(plain, ds, epochs=2)
    jitted = _model()
    jitted.compile(optimizer=keras.optimizers.Adam(0.01), loss=keras.losses.SparseCategoricalCrossentropy(),
                   jit_compile=True)
    assert jitted.jit_compile is True
    fit_loop(jitted, ds, epochs=2)
    for x, y in zip(plain.get_weights(), jitted.get_weights()):
        np.testing.assert_allclose(y, x, atol=1e-5)


def test_training_bn_is_synchronised_across_replicas(tiny_model):
    from tlkeras import freezing

    with distribute.mirrored().scope():
        freezing.unfreeze(tiny_model, "blocks:1", train_bn=True)
    trained = [layer for layer in freezing.backbone_layers(tiny_model) if freezing.is_batch_norm(layer) and layer.trainable]
    assert trained and all(layer.synchronized for layer in trained)
    frozen = [layer for layer in freezing.backbone_layers(tiny_model) if freezing.is_batch_norm(layer) and not layer.trainable]
    assert frozen and not any(layer.synchronized for layer in frozen)


def test_tpu_pipelines_keep_one_batch_shape(monkeypatch):
    from tlkeras import caching
    from tlkeras.data import datasets

    examples = datasets.Examples(np.arange(10) % 2, arrays=np.zeros((10, 8, 8, 3), "uint8"))
    sizes = lambda ds: [int(x.shape[0]) for x, _ in ds]  # noqa: E731
    assert sizes(datasets.build_pipeline(examples, (8, 8), 4, training=True, cache=False, seed=0)) == [4, 4, 2]
    monkeypatch.setattr(datasets, "static_shapes", lambda: True)
    assert sizes(datasets.build_pipeline(examples, (8, 8), 4, training=True, cache=False, seed=0)) == [4, 4]
    assert sizes(datasets.build_pipeline(examples, (8, 8), 4, training=False, cache=False, seed=0)) == [4, 4, 2]
    monkeypatch.setattr(caching, "static_shapes", lambda: True)
    cache = caching.Cache(arrays=[np.zeros((10, 3), "float32")], labels=np.arange(10) % 2)
    assert sizes(caching.cached_dataset(cache, 4, shuffle=True)) == [4, 4]


def test_own_loop_with_mixed_precision_on_two_replicas():
    # float16 compute with loss scaling (LossScaleOptimizer) under MirroredStrategy: the loss falls and
    # the result stays within float16 noise of the float32 run.
    ds = _data()
    reference = _model()
    fit_loop(reference, ds, epochs=3)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with distribute.mirrored().scope():
            model = _model()
            model.compile(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(0.01)),
                          loss=keras.losses.SparseCategoricalCrossentropy())
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert model.layers[0].compute_dtype == "float16"
    history = fit_loop(model, ds, epochs=3)
    assert history.history["loss"][-1] < history.history["loss"][0]
    for x, y in zip(reference.get_weights(), model.get_weights()):
        np.testing.assert_allclose(y, x, atol=2e-2)
