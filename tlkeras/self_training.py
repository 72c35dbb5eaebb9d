"""Self-training: the unlabelled data a user already has, labelled by a teacher model, trains a student.

Pseudo-labelling (Lee 2013) as Noisy Student (Xie et al. 2020) runs it, fitted to the two stages: a teacher is
trained on the labelled data alone (both stages, as any run); it labels the unlabelled examples; those it is sure of -
at least `threshold` confident, at most `cap` x the class's labelled count per class, the most confident first, so
that no class is swamped by the classes the teacher finds easy - join the labelled ones, and a student starts again
from the pretrained weights on both. With `rounds` > 1 each student teaches the next. Pseudo-labels never enter
validation: the split is made once, before the teacher. A student that does worse on validation than an earlier
round's model is not kept: the run keeps that model and says so (on scikit-image's textures, whose teacher was right
on 55 % of test images, the pseudo-labels cost 1.3 points; benchmarks/RESULTS.md).

Each round lives in RUN_DIR/self_training/round-N (N from 1: the teacher on labelled data only): its checkpoints
(a killed round goes on from its last finished epoch), its finished weights and the pseudo-labels it gave
(pseudo_labels.csv), so a resumed run redoes nothing finished. The last student is the run's model.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from tlkeras._logging import get_logger
from tlkeras.rundir import ROUND_WEIGHTS, SELF_TRAINING_DIR, STATE_PATH
from tlkeras.atomic import atomic_path, write_text_atomic

PSEUDO_FILE = "pseudo_labels.csv"  # row of the unlabelled data, class, confidence
SCORE_FILE = "score.json"  # the round's model's validation accuracy


@dataclass
class PseudoLabels:
    """The unlabelled rows a teacher labelled with confidence, with the class it gave each."""

    rows: np.ndarray  # int64 rows of the unlabelled examples
    labels: np.ndarray  # int64 class indices
    confidence: np.ndarray  # float32, the teacher's probability of that class

    def counts(self, classes: int) -> list[int]:
        return np.bincount(self.labels, minlength=classes).astype(int).tolist()

    def write(self, path: str, class_names: list[str]) -> None:
        lines = ["row,class,confidence\n"] + [
            f"{r},{_quoted(class_names[c])},{p:.6f}\n" for r, c, p in zip(self.rows, self.labels, self.confidence)]
        write_text_atomic(path, "".join(lines))

    @classmethod
    def read(cls, path: str, class_names: list[str]) -> "PseudoLabels":
        index = {name: i for i, name in enumerate(class_names)}
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return cls(np.array([int(r["row"]) for r in rows], np.int64),
                   np.array([index[r["class"]] for r in rows], np.int64),
                   np.array([float(r["confidence"]) for r in rows], np.float32))


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"' if any(c in name for c in ',"') else name


def select(probabilities: np.ndarray, labelled_counts, threshold: float, cap: float) -> PseudoLabels:
    """The pseudo-labels kept from a teacher's `probabilities` [N, C] of the unlabelled rows: per class, the rows
    it predicts as that class with probability >= `threshold`, the most confident first, at most `cap` x that
    class's labelled count (`labelled_counts[c]`).

    >>> p = np.array([[0.99, 0.01], [0.95, 0.05], [0.6, 0.4], [0.02, 0.98], [0.97, 0.03]])
    >>> kept = select(p, [1, 1], threshold=0.9, cap=2)
    >>> kept.rows.tolist(), kept.labels.tolist()   # class 0: the two surest of three; class 1: row 3
    ([0, 3, 4], [0, 1, 0])
    """
    probabilities = np.asarray(probabilities, np.float32)
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    keep = []
    for c, count in enumerate(labelled_counts):
        rows = np.flatnonzero((predicted == c) & (confidence >= threshold))
        rows = rows[np.argsort(-confidence[rows], kind="stable")][: int(np.floor(cap * count))]
        keep.append(rows)
    rows = np.sort(np.concatenate(keep)).astype(np.int64) if keep else np.zeros((0,), np.int64)
    return PseudoLabels(rows, predicted[rows].astype(np.int64), confidence[rows])


def run_rounds(settings, *, bundle, unlabeled, class_names: list[str], run_dir: str, resuming: bool,
               build: Callable, train: Callable, predict: Callable, with_training: Callable):
    """The teacher rounds of self-training; returns (the student's data bundle, what each round did for run.json).

    `build(n)` a model with its pretrained weights, its new layers initialised from the seed + n (round n + 1); `train(model, bundle, directory, resume)` both stages into
    `directory`, returning the trained model's validation accuracy (None without validation); `predict(model,
    unlabeled)` the probabilities of the unlabelled examples; `with_training(bundle, examples)` the bundle training
    on `examples` instead (same validation). Each round's entry holds its model's validation accuracy (`val_accuracy`)
    and its weights file (`weights`), for `better_round`.
    """
    log = get_logger()
    labelled = bundle.task.class_counts(bundle.train_examples.labels, len(class_names))
    student, record = bundle, []
    for n in range(settings.rounds):
        directory = os.path.join(run_dir, SELF_TRAINING_DIR, f"round-{n + 1}")
        os.makedirs(directory, exist_ok=True)
        pseudo_path = os.path.join(directory, PSEUDO_FILE)
        if os.path.isfile(pseudo_path):
            log.info("self-training round %d/%d: finished before, its pseudo-labels reused (%s)", n + 1,
                     settings.rounds, pseudo_path)
            pseudo = PseudoLabels.read(pseudo_path, class_names)
            score = _read_score(directory)
        else:
            log.info("self-training round %d/%d: the %s on %d labelled%s examples", n + 1, settings.rounds,
                     "teacher" if n == 0 else "student of the last round",
                     len(bundle.train_examples), "" if n == 0 else f" and {len(record[-1]['rows'])} pseudo-labelled")
            model, score = _trained(lambda: build(n), train, student, directory, resuming)
            pseudo = select(predict(model, unlabeled), labelled, settings.threshold, settings.cap)
            pseudo.write(pseudo_path, class_names)
            del model
        counts = pseudo.counts(len(class_names))
        log.info("self-training round %d: %d of %d unlabelled examples pseudo-labelled (confidence >= %g, at most %g x "
                 "each class's labelled count): %s", n + 1, len(pseudo.rows), len(unlabeled), settings.threshold,
                 settings.cap, ", ".join(f"{name} {k}" for name, k in zip(class_names, counts)))
        record.append({"round": n + 1, "val_accuracy": score, "pseudo_labels": len(pseudo.rows),
                       "per_class": dict(zip(class_names, counts)), "file": os.path.relpath(pseudo_path, run_dir),
                       "weights": os.path.relpath(os.path.join(directory, ROUND_WEIGHTS), run_dir),
                       "rows": pseudo.rows})
        extra = unlabeled.subset(pseudo.rows)  # subset sorts its rows, as pseudo.rows are
        extra.labels = pseudo.labels
        student = with_training(bundle, bundle.train_examples.joined(extra))
    for entry in record:
        entry.pop("rows")
    return student, record


def _trained(build, train, bundle, directory: str, resuming: bool):
    """(the round's model, its validation accuracy): its finished weights when a killed run left them, else trained
    (going on from the round's last finished epoch when there is one)."""
    model = build()
    path = os.path.join(directory, ROUND_WEIGHTS)
    if os.path.isfile(path):
        model.load_weights(path)
        return model, _read_score(directory)
    score = train(model, bundle, directory, resuming and os.path.isfile(os.path.join(directory, STATE_PATH)))
    write_text_atomic(os.path.join(directory, SCORE_FILE), json.dumps({"val_accuracy": score}))
    with atomic_path(path, suffix=".weights.h5") as tmp:  # last: a round with weights is finished
        model.save_weights(tmp)
    return model, score


def _read_score(directory: str) -> Optional[float]:
    path = os.path.join(directory, SCORE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("val_accuracy")


def better_round(record: list[dict], student: Optional[float]) -> Optional[dict]:
    """The round whose model beat the student on validation (the best of them), or None when the student is at least
    as good - self-training must not leave a user worse off than the labelled data alone did.

    >>> better_round([{"round": 1, "val_accuracy": 0.8}], 0.75)["round"], better_round([{"round": 1, "val_accuracy": 0.8}], 0.8)
    (1, None)
    """
    scored = [entry for entry in record if entry.get("val_accuracy") is not None]
    if student is None or not scored:
        return None
    best = max(scored, key=lambda entry: entry["val_accuracy"])
    return best if best["val_accuracy"] > student else None
