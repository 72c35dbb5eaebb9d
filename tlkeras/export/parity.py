"""Parity of an exported classifier with the Keras model it came from, enforced before its file lands.

Every format (TFLite, ONNX) is run on the same validation pixels as the Keras model; the agreement
of their answers as the model's Task counts it (top-1 for single-label, each label at its threshold
for multi-label; `measure` says which) and the largest probability difference go to
`<out_dir>/parity.json`, and a file whose agreement is below its threshold is not written.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from tlkeras._logging import get_logger
from tlkeras.errors import ExportError, TlkerasError
from tlkeras.rundir import LABELS_FILE
from tlkeras.model import model_info, predict_function, to_probabilities
from tlkeras.atomic import read_json, write_bytes_atomic, write_json_atomic, write_text_atomic

PARITY_FILE = "parity.json"


@dataclass
class Parity:
    kind: str
    images: int
    top1_agreement: float  # the Task's agreement (`measure`); the name is kept from single-label days
    max_abs_diff: float
    threshold: float
    measure: str = "top-1 class"
    ties: int = 0  # images whose answer is a tie in the Keras model itself (not counted as flips)
    selective: Optional[dict] = None  # int8 with some layers kept in float (tlkeras.export.selective_int8)


def measure(model, classifier: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, kind: str,
            threshold: float) -> Parity:
    """Agreement (as the model's Task counts it) and max |Δp| of `classifier` against `model` on
    `pixels` [N, H, W, 3]."""
    expected = np.asarray(to_probabilities(predict_function(model)(tf.constant(pixels)), model))
    got = classifier(pixels)
    info = model_info(model)
    return Parity(
        kind=kind,
        images=int(len(pixels)),
        top1_agreement=round(info.task_role.agreement(expected, got, info.decision), 4),
        max_abs_diff=round(float(np.max(np.abs(expected - got))), 6),
        threshold=threshold,
        measure=info.task_role.agreement_measure,
        ties=info.task_role.ties(expected, info.decision),
    )


def require_images(pixels: np.ndarray, what: str) -> None:
    if not len(pixels):
        raise ExportError(f"{what} parity needs validation images to check on; none were given.")


def refusal(parity: Parity, what: str, filename: str) -> str:
    """The one-line reason a converted model below its bar is not written."""
    unsure = (f" The Keras model itself is unsure on {parity.ties} of these images (its answers tie), so it "
              "has hardly learned: train it longer before exporting." if parity.ties > parity.images // 2 else "")
    return (f"the {what} model agrees with the Keras model on {parity.top1_agreement:.1%} of {parity.images} "
            f"validation images (max |Δp| {parity.max_abs_diff:.3g}; ties are not counted as flips), below the "
            f"{parity.threshold:.1%} required; {filename} was not written.{unsure}")


def write_if_faithful(model, classifier, content: bytes, out_dir: str, filename: str, pixels: np.ndarray,
                      what: str, kind: str, threshold: float, class_names: Sequence[str]) -> Parity:
    """Measure `classifier` (the converted `content`) against `model`; write `filename`, labels.txt
    and the parity record when top-1 agreement reaches `threshold`, else raise ExportError."""
    require_images(pixels, what)
    parity = measure(model, classifier, pixels, kind, threshold)
    if parity.top1_agreement < threshold:
        raise ExportError(refusal(parity, what, filename))
    return write_measured(parity, content, out_dir, filename, class_names, what)


def write_measured(parity: Parity, content: bytes, out_dir: str, filename: str, class_names: Sequence[str],
                   what: str) -> Parity:
    """Write a converted model that reached its bar: the file, labels.txt and its record in parity.json."""
    os.makedirs(out_dir, exist_ok=True)
    write_bytes_atomic(os.path.join(out_dir, filename), content)
    write_text_atomic(os.path.join(out_dir, LABELS_FILE), "\n".join(class_names) + "\n")
    path = os.path.join(out_dir, PARITY_FILE)
    record = {}
    if os.path.isfile(path):
        try:
            record = read_json(path)
        except TlkerasError:  # damaged (a kill while it was written by hand): measured again from here
            record = {}
    record[parity.kind] = asdict(parity)
    write_json_atomic(path, record)
    get_logger().info("%s: %s (%.1f kB), agreement %.2f%% (%s), max |dp| %.2g on %d images", what,
                      os.path.join(out_dir, filename), len(content) / 1024, 100 * parity.top1_agreement,
                      parity.measure, parity.max_abs_diff, parity.images)
    return parity
