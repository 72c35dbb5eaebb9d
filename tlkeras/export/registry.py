"""Export formats in a registry: each says how a finished run is exported in it and, for file
formats, how `predict` and `evaluate` load the file. `tlkeras export --format` takes their names.

A new format is one module (its converter and parity check) plus one `ExportFormat` line here.

>>> sorted(FORMATS)
['onnx', 'saved_model', 'tflite', 'tflite-float16', 'tflite-int8']
>>> format_for_file("run/tflite/model_int8.tflite").name
'tflite'
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from tlkeras.errors import ExportError

CALIBRATION_IMAGES = 100  # int8's calibration sample of the training images (class-balanced)


@dataclass
class ExportJob:
    """A finished run being exported: its model, names, card facts, and its own images on demand."""

    model: object
    run_dir: str
    class_names: list
    top_k: int
    card: Optional[dict]
    export_dir: Optional[str] = None
    thresholds: dict = field(default_factory=dict)  # a kind's parity bar when not its default (--int8-min-agreement)
    tta: str = "none"  # test-time augmentation inside the SavedModel's graph
    _pixels: dict = field(default_factory=dict)

    def pixels(self, split: str, limit: Optional[int] = None) -> np.ndarray:
        """Decoded, resized pixels of the run's own split (a seeded, class-balanced sample when limited), read
        once."""
        key = (split, limit)
        if key not in self._pixels:
            self._pixels[key] = _run_pixels(self, split, limit)
        return self._pixels[key]


@dataclass(frozen=True)
class ExportFormat:
    """name: the --format value; write(job) -> the path written; suffix + classifier: a file format's
    ending and `module:Class` that runs it on pixels (for predict/evaluate)."""

    name: str
    write: Callable[[ExportJob], str]
    suffix: Optional[str] = None
    classifier: Optional[str] = None

    @property
    def is_file(self) -> bool:
        return self.suffix is not None


def _saved_model(job: ExportJob) -> str:
    from tlkeras.export.saved_model import export_saved_model

    return export_saved_model(job.model, job.export_dir or os.path.join(job.run_dir, "export"), job.class_names,
                              top_k=job.top_k, card=job.card, tta=job.tta)


def _tflite(kind: str):
    def write(job: ExportJob) -> str:
        from tlkeras.export.tflite import FILES, export_tflite

        folder = os.path.join(job.run_dir, "tflite")
        representative = job.pixels("train", CALIBRATION_IMAGES) if kind == "int8" else None
        export_tflite(job.model, folder, job.class_names, kinds=[kind], check_pixels=job.pixels("val"),
                      representative=representative, thresholds=job.thresholds)
        return os.path.join(folder, FILES[kind])

    return write


def _onnx(job: ExportJob) -> str:
    from tlkeras.export import onnx

    folder = os.path.join(job.run_dir, "onnx")
    onnx.export_onnx(job.model, folder, job.class_names, check_pixels=job.pixels("val"))
    return os.path.join(folder, onnx.FILE)


FORMATS: dict[str, ExportFormat] = {
    "saved_model": ExportFormat("saved_model", _saved_model),
    "tflite": ExportFormat("tflite", _tflite("float32"), ".tflite", "tlkeras.export.tflite:TFLiteClassifier"),
    "tflite-float16": ExportFormat("tflite-float16", _tflite("float16"), ".tflite",
                                   "tlkeras.export.tflite:TFLiteClassifier"),
    "tflite-int8": ExportFormat("tflite-int8", _tflite("int8"), ".tflite", "tlkeras.export.tflite:TFLiteClassifier"),
    "onnx": ExportFormat("onnx", _onnx, ".onnx", "tlkeras.export.onnx:ONNXClassifier"),
}


def balanced_sample(labels: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """`limit` row numbers, as many of each class as it has to give (seeded): a calibration set where a rare
    class is not left out. Multi-hot labels [N, C] count each row under its rarest label.

    >>> labels = np.array([0] * 90 + [1] * 10)
    >>> np.bincount(labels[balanced_sample(labels, 20)]).tolist()
    [10, 10]
    """
    labels = np.asarray(labels)
    if labels.ndim == 2:  # multi-label: the row's rarest label (rows without any label count as their own class)
        counts = labels.sum(axis=0)
        labels = np.where(labels.any(axis=1), np.argmin(np.where(labels > 0, counts, np.inf), axis=1), -1)
    limit, rng = min(int(limit), len(labels)), np.random.default_rng(seed)
    pools = [rng.permutation(np.flatnonzero(labels == c)).tolist() for c in np.unique(labels)]
    picked: list = []
    while len(picked) < limit:  # round robin over the classes, each in a seeded order
        for pool in pools:
            if pool and len(picked) < limit:
                picked.append(pool.pop())
    return np.sort(np.asarray(picked, int))


def get_format(name: str) -> ExportFormat:
    if name not in FORMATS:
        from tlkeras.errors import did_you_mean

        raise ExportError(f"format {name} is not one of {', '.join(FORMATS)} (e.g. --format saved_model,tflite)."
                          f"{did_you_mean(name, list(FORMATS))}")
    return FORMATS[name]


def format_for_file(path: str) -> Optional[ExportFormat]:
    """The file format whose files end like `path` (None: not a file format's file)."""
    return next((f for f in FORMATS.values() if f.suffix and path.endswith(f.suffix)), None)


def file_classifier(path: str):
    """The classifier (called on pixels [N, H, W, 3] -> probabilities) of an exported file."""
    import importlib

    fmt = format_for_file(path)
    if fmt is None:
        raise ExportError(f"{path!r} is not a file of an export format ({', '.join(sorted({f.suffix for f in FORMATS.values() if f.suffix}))}).")
    module, name = fmt.classifier.split(":")
    runtime = getattr(importlib.import_module(module), name)
    try:
        return runtime(path)
    except (ImportError, ExportError):
        raise
    except Exception as e:  # noqa: BLE001 - the runtime's parse error, in one line naming the file
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1][:160]
        raise ExportError(f"{path!r} cannot be read as a {fmt.suffix} model ({first}); export it again with "
                          f"`tlkeras export RUN --format {fmt.name}`.") from None


def _run_pixels(job: ExportJob, split: str, limit: Optional[int]) -> np.ndarray:
    import tensorflow as tf

    from tlkeras.data.images import decode_and_resize
    from tlkeras.model import image_size_of, model_info
    from tlkeras.rundir import run_examples

    info = model_info(job.model)
    examples, _ = run_examples(job.run_dir, None, job.class_names, split=split, inputs=info.inputs, task=info.task)
    rows = np.arange(len(examples.labels))
    if limit is not None and len(rows) > limit:
        rows = balanced_sample(np.asarray(examples.labels), limit)
    size = image_size_of(job.model)
    return np.stack([np.asarray(decode_and_resize(tf.constant(b), size)) for b in examples.encoded(rows)])
