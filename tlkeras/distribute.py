"""Devices and numerics: the tf.distribute strategy and the mixed-precision policy for the hardware in use."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Mapping, Optional

import keras

from tlkeras._logging import get_logger
from tlkeras.errors import ConfigError


def strategy_name(strategy) -> str:
    """The strategy's class name as users know it: TensorFlow's private default strategy is "default".

    >>> import tensorflow as tf
    >>> strategy_name(tf.distribute.get_strategy()), strategy_name(tf.distribute.OneDeviceStrategy("/cpu:0"))
    ('default (no distribution)', 'OneDeviceStrategy')
    """
    name = type(strategy).__name__
    return "default (no distribution)" if name == "_DefaultDistributionStrategy" else name.lstrip("_")


def resolve_precision(setting: str = "auto") -> str:
    """The Keras dtype policy for `setting`: "auto" means mixed_float16 with a GPU,
    mixed_bfloat16 with a TPU, float32 on CPU (where float16 math is emulated and slower).

    >>> resolve_precision("mixed_bfloat16")
    'mixed_bfloat16'
    """
    if setting != "auto":
        return setting
    import tensorflow as tf

    if tf.config.list_logical_devices("TPU"):
        return "mixed_bfloat16"
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "float32"


@contextlib.contextmanager
def precision_policy(policy: str):
    """Build layers under `policy`, then restore the global policy (layers keep theirs)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    if policy != "float32":
        get_logger().info("mixed precision: %s (the output layer stays float32)", policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def uses_float16(model: keras.Model) -> bool:
    """Whether any layer of `model` (nested layers included) computes in float16."""
    return any(layer.dtype_policy.compute_dtype == "float16" for layer in model._flatten_layers())


# === Strategies ===


def cluster_workers(tf_config: Optional[str]) -> int:
    """How many machines TF_CONFIG names (chief + workers); 0 without a TF_CONFIG.

    >>> cluster_workers('{"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]}, "task": {"type": "chief", "index": 0}}')
    3
    """
    if not tf_config:
        return 0
    try:
        cluster = json.loads(tf_config).get("cluster", {})
    except (ValueError, AttributeError):
        raise ConfigError(f"TF_CONFIG is not valid JSON: {tf_config[:80]!r}. See the scaling guide (docs/guides/scaling.md).") from None
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def tpu_address(setting: Optional[str], env: Mapping[str, str], accelerator_present: bool) -> Optional[str]:
    """The TPU to connect to, without touching the network: the `tpu` setting, else TPU_NAME, else
    Colab's COLAB_TPU_ADDR, else "local" on a TPU VM (/dev/accel0); None when there is no sign of one.

    >>> tpu_address(None, {"TPU_NAME": "my-tpu"}, False), tpu_address(None, {}, True), tpu_address(None, {}, False)
    ('my-tpu', 'local', None)
    """
    if setting:
        return setting
    if env.get("TPU_NAME"):
        return env["TPU_NAME"]
    if env.get("COLAB_TPU_ADDR"):
        return "grpc://" + env["COLAB_TPU_ADDR"]
    return "local" if accelerator_present else None


def resolve_strategy(setting: str = "auto", tpu: Optional[str] = None, *, env: Optional[Mapping[str, str]] = None,
                     gpus: Optional[list] = None, accelerator_present: Optional[bool] = None,
                     tpu_strategy_factory=None):
    """(strategy, reason): the tf.distribute strategy for `setting`, and why it was chosen.

    auto: a strategy already in scope (the caller's `with strategy.scope()`) is used; else a TPU
    when one is configured (tpu / TPU_NAME / COLAB_TPU_ADDR / a TPU VM), MultiWorkerMirroredStrategy
    when TF_CONFIG names more than one machine, MirroredStrategy with more than one GPU, else the
    default strategy. The keyword arguments after `tpu` replace what is read from the machine (tests).

    Create it before any other TensorFlow work in the process: multi-worker collectives must be
    configured first. `tpu_strategy_factory(address)` builds the TPU strategy (default: connect
    with TPUClusterResolver, initialise the TPU system, TPUStrategy).
    """
    import tensorflow as tf

    env = os.environ if env is None else env
    if gpus is None:
        gpus = tf.config.list_physical_devices("GPU")
    if accelerator_present is None:
        accelerator_present = os.path.exists("/dev/accel0")
    factory = tpu_strategy_factory or _connect_tpu
    if setting == "auto" and tf.distribute.has_strategy():
        strategy = tf.distribute.get_strategy()
        return strategy, f"the {strategy_name(strategy)} in scope"
    if setting == "default":
        return tf.distribute.get_strategy(), "strategy: default"
    if setting == "one_device":
        device = "/gpu:0" if gpus else "/cpu:0"
        return tf.distribute.OneDeviceStrategy(device), f"strategy: one_device on {device}"
    if setting == "mirrored":
        strategy = mirrored()
        return strategy, f"strategy: mirrored over {strategy.num_replicas_in_sync} device(s)"
    if setting == "multi_worker":
        return _multi_worker(), f"strategy: multi_worker, {cluster_workers(env.get('TF_CONFIG'))} machine(s) in TF_CONFIG"
    address = tpu_address(tpu, env, accelerator_present)
    if setting == "tpu":
        if address is None:
            raise ConfigError("strategy: tpu, but no TPU is configured: set tpu: <name or grpc://address> (or TPU_NAME), "
                              "or run on a TPU VM.")
        return factory(address), f"strategy: tpu at {address}"
    # auto
    if address is not None:
        return factory(address), f"a TPU is configured ({address})"
    workers = cluster_workers(env.get("TF_CONFIG"))
    if workers > 1:
        return _multi_worker(), f"TF_CONFIG names {workers} machines"
    if len(gpus) > 1:
        return mirrored(), f"{len(gpus)} GPUs"
    return tf.distribute.get_strategy(), f"one machine, {len(gpus) or 'no'} GPU"


_MIRRORED: dict = {}


def mirrored(devices: Optional[list] = None):
    """The process's MirroredStrategy over `devices` (default: every GPU, else every CPU device).

    One instance per device set, reused by later runs in the same process (a notebook, a test
    session): two MirroredStrategy instances over the same devices number their collective ops
    alike, and a later run's all-reduce then pairs with the wrong tensors ("Shape mismatch in the
    collective instance").
    """
    import tensorflow as tf

    if devices is None:
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [
            d.name for d in tf.config.list_logical_devices("CPU")]
    key = tuple(tf.DeviceSpec.from_string(d).to_string() for d in devices)
    if key not in _MIRRORED:
        _MIRRORED[key] = tf.distribute.MirroredStrategy(list(devices))
    return _MIRRORED[key]


def static_shapes() -> bool:
    """Whether training batches must all have one shape (TPUs): pipelines then drop the remainder."""
    import tensorflow as tf

    return isinstance(tf.distribute.get_strategy(), tf.distribute.TPUStrategy)


def _multi_worker():
    import tensorflow as tf

    return tf.distribute.MultiWorkerMirroredStrategy()


def _connect_tpu(address: str):
    import tensorflow as tf

    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def worker_role(strategy, env: Optional[Mapping[str, str]] = None) -> tuple[bool, str]:
    """(is_chief, task id) of this process: the chief task, or worker 0 when the cluster has no
    chief; a single machine is always the chief.

    >>> import tensorflow as tf
    >>> worker_role(tf.distribute.get_strategy(), env={})
    (True, 'chief')
    """
    env = os.environ if env is None else env
    if not is_multi_worker(strategy):
        return True, "chief"
    spec = json.loads(env.get("TF_CONFIG", "{}"))
    task = spec.get("task", {})
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    has_chief = bool(spec.get("cluster", {}).get("chief"))
    chief = kind == "chief" or (kind == "worker" and index == 0 and not has_chief)
    return chief, f"{kind}-{index}"


def is_multi_worker(strategy) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def replicas() -> int:
    """Replicas in sync of the strategy in scope (1 outside any)."""
    import tensorflow as tf

    return int(tf.distribute.get_strategy().num_replicas_in_sync)


def gather_from_workers(strategy, values: list) -> list[list[int]]:
    """Each replica's copy of the integers `values` (one row per replica), through the strategy's
    collectives: how multi-worker runs check that every worker resumes from the same epoch.

    >>> import tensorflow as tf
    >>> gather_from_workers(tf.distribute.get_strategy(), [2, 1])
    [[2, 1]]
    """
    import tensorflow as tf

    local = tf.constant([list(values)], tf.int64)
    with strategy.scope():
        rows = strategy.gather(strategy.run(lambda: tf.identity(local)), axis=0)
    return [[int(v) for v in row] for row in rows.numpy()]
