"""run.json: what made this model - versions, config, seed, data fingerprint, weights, devices, times.

>>> fingerprint_examples_paths(["a/1.png", "b/2.png"], [10, 20]) == fingerprint_examples_paths(["a/1.png", "b/2.png"], [10, 20])
True
>>> fingerprint_examples_paths(["a/1.png"], [10]) == fingerprint_examples_paths(["a/1.png"], [11])
False
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Optional

import numpy as np

RUN_FILE = "run.json"


def config_digest(config: dict) -> str:
    """sha256 of the resolved config as canonical JSON: equal digests, equal configs."""
    import json

    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def card_facts(record: dict, metrics: dict) -> dict:
    """The run's facts a model card carries (see `tlkeras.export.saved_model.model_card`)."""
    headline = {k: v for k, v in metrics.items()
                if k in ("split", "count", "accuracy", "loss", "expected_calibration_error", "roc_auc", "pr_auc",
                         "micro_f1", "mean_average_precision", "subset_accuracy", "hamming_loss")
                or k.startswith("top_") or k in ("macro_avg", "micro_avg")}
    return {
        "backbone": record.get("backbone"),
        "config_sha256": config_digest(record.get("config", {})),
        "seed": record.get("seed"),
        "trained": record.get("finished"),
        "data": record.get("data"),
        "validation_metrics": headline,
    }


def library_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("tlkeras", "tensorflow", "keras", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def fingerprint_examples_paths(paths: list[str], sizes: list[int]) -> str:
    """sha256 over (relative path, size in bytes) of every file, in order."""
    h = hashlib.sha256()
    for path, size in zip(paths, sizes):
        h.update(f"{path}\t{size}\n".encode("utf-8", "surrogateescape"))  # names that are not UTF-8: their bytes
    return h.hexdigest()


def _size(path: str) -> int:
    if "://" in path:  # gs://... (TPU runs read their data from GCS)
        import tensorflow as tf

        return int(tf.io.gfile.stat(path).length)
    return os.path.getsize(path)


def fingerprint(examples, root: Optional[str] = None) -> dict:
    """A fingerprint of one split: for files, their paths (relative to `root`) and sizes hashed;
    for arrays, their bytes; a tf.data.Dataset is not read again ("unknown")."""
    if examples is None:
        return {"kind": "none"}
    if hasattr(examples, "fingerprint"):  # texts
        return examples.fingerprint()
    if examples.paths is not None:
        rel = [os.path.relpath(p, root) if root else p for p in examples.paths]
        sizes = [_size(p) for p in examples.paths]
        return {"kind": "files", "files": len(rel), "bytes": int(sum(sizes)),
                "sha256": fingerprint_examples_paths(rel, sizes)}
    if examples.arrays is not None:
        h = hashlib.sha256(np.ascontiguousarray(examples.arrays).tobytes())
        h.update(np.ascontiguousarray(examples.labels).tobytes())
        return {"kind": "arrays", "shape": list(examples.arrays.shape), "sha256": h.hexdigest()}
    return {"kind": "tf.data", "sha256": "unknown (a tf.data.Dataset is not fingerprinted)"}


def weights_source(weights, backbone: str = "") -> dict:
    """Where the backbone's starting weights came from: ImageNet (Keras's download), none, or a
    file with its sha256; the source's own (a hub module's, a preset's, a backbone file's, with its sha256) when
    `weights` means them (`BackboneSource.own_weights`)."""
    from tlkeras.backbones import source_of

    source = source_of(backbone) if backbone else None
    if source is not None and source.own_weights and weights in source.own_weights_when:
        return {**weights_source(backbone), "note": source.own_weights}
    if weights is None:
        return {"weights": None, "note": "random initialisation"}
    if weights == "imagenet":
        return {"weights": "imagenet", "note": "keras.applications ImageNet weights (downloaded by Keras)"}
    path = str(weights)
    out = {"weights": path}
    if os.path.isfile(path):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out["sha256"] = h.hexdigest()
    return out


def devices(strategy=None) -> dict:
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    return {
        "physical": [d.name for d in tf.config.list_physical_devices()],
        "strategy": type(strategy).__name__,
        "replicas": int(strategy.num_replicas_in_sync),
        "op_determinism": _op_determinism(),
    }


def _op_determinism() -> bool:
    try:  # not in the public tf.config namespace (TF 2.21)
        from tensorflow.python.framework import config

        return bool(config.is_op_determinism_enabled())
    except (ImportError, AttributeError):
        return False


def build_record(*, cfg, bundle, run_dir: str, timings: dict, started: float, plan=None,
                 policy: Optional[str] = None, strategy=None) -> dict:
    """Every field of run.json."""
    root = cfg.data if isinstance(cfg.data, str) and os.path.isdir(cfg.data) else None
    val_root = cfg.val_data if isinstance(cfg.val_data, str) and os.path.isdir(cfg.val_data) else root
    return {
        "versions": library_versions(),
        "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv)),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "class_names": list(bundle.class_names),
        "class_counts": {"train": bundle.class_counts("train"), "val": bundle.class_counts("val")},
        "data": {"train": fingerprint(bundle.train_examples, root),
                 "val": fingerprint(bundle.val_examples, val_root),
                 "skipped_files": len(bundle.skipped)},
        "backbone": {"name": cfg.backbone, "options": cfg.backbone_options, **weights_source(cfg.weights, cfg.backbone)},
        "seconds": {k: round(float(v), 3) for k, v in timings.items()},
        "caching": getattr(plan, "reason", None),
        "precision_policy": policy,
        "devices": devices(strategy),
    }
