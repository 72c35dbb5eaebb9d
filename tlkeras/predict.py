"""Batch prediction through an exported SavedModel's `serving_default` signature: image files, or
for a text classifier, lines of text."""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from tlkeras.data.images import is_image_file
from tlkeras.errors import ExportError
from tlkeras.export.saved_model import LABELS_FILE
from tlkeras.rundir import read_labels

FORMATS = ("table", "json", "csv")


def resolve_export(path: str) -> str:
    """A SavedModel folder: `path` itself, or its highest integer version subfolder."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    if os.path.isdir(path):
        versions = sorted(
            (int(n) for n in os.listdir(path) if n.isdigit() and os.path.isfile(os.path.join(path, n, "saved_model.pb"))),
        )
        if versions:
            return os.path.join(path, str(versions[-1]))
        if os.path.isdir(os.path.join(path, "export")):  # a run directory
            return resolve_export(os.path.join(path, "export"))
    raise ExportError(
        f"{path!r} holds no SavedModel (no saved_model.pb in it or in a numbered version folder); "
        "pass an export folder such as runs/NAME/export or runs/NAME/export/1."
    )


def is_export(path: str) -> bool:
    """Whether `path` is a SavedModel folder or a folder of numbered SavedModel versions."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return True
    return os.path.isdir(path) and any(
        n.isdigit() and os.path.isfile(os.path.join(path, n, "saved_model.pb")) for n in os.listdir(path)
    )


def load_export(path: str):
    """(serve, class names, artefact path) of an export: a SavedModel (its serving_default
    signature) or a .tflite file (labels.txt beside it), both called as serve(image_bytes=...)."""
    if path.endswith((".tflite", ".onnx")):
        return _load_file_model(path)
    folder = resolve_export(path)
    loaded = tf.saved_model.load(folder)
    serve = loaded.signatures["serving_default"]
    serve._tlkeras_keepalive = loaded  # the signature needs its object alive
    return serve, read_labels(os.path.join(folder, "assets", LABELS_FILE)), folder


def _load_file_model(path: str):
    """A .tflite or .onnx classifier with the labels.txt beside it, called as serve(image_bytes=...)."""
    from tlkeras.data.images import decode_and_resize

    if not os.path.isfile(path):
        raise ExportError(f"{path!r} does not exist; pass a file written by `tlkeras export --format tflite|onnx`.")
    labels = os.path.join(os.path.dirname(path), LABELS_FILE)
    if not os.path.isfile(labels):
        raise ExportError(f"{labels!r} is missing: {os.path.basename(path)} needs its labels.txt beside it.")
    class_names = read_labels(labels)
    if path.endswith(".onnx"):
        from tlkeras.export.onnx import ONNXClassifier as Classifier
    else:
        from tlkeras.export.tflite import TFLiteClassifier as Classifier
    classifier = Classifier(path)

    def serve(image_bytes):
        pixels = np.stack([np.asarray(decode_and_resize(b, classifier.image_size)) for b in image_bytes])
        return {"probabilities": tf.constant(classifier(pixels))}

    return serve, class_names, path


def export_input(serve) -> str:
    """What a loaded export takes: "text" (a text classifier's signature) or "image_bytes"."""
    signature = getattr(serve, "structured_input_signature", None)  # .tflite/.onnx wrappers: images
    return "text" if signature and sorted(signature[1]) == ["text"] else "image_bytes"


def predict_inputs(export_path: str, inputs: list[str], **options) -> "Predictions":
    """`predict_texts` or `predict_files`, whichever the export takes (loaded once)."""
    export = load_export(export_path)
    run = _predict_texts if export_input(export[0]) == "text" else _predict_files
    return run(export, inputs, **options)


def _ranked(probabilities, class_names: list[str], k: int) -> dict:
    """{"classes", "scores"}: the k most probable classes, best first."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return {"classes": [class_names[i] for i in order], "scores": [float(probabilities[i]) for i in order]}


def expand_texts(inputs: list[str]) -> list[tuple[str, str]]:
    """(source, text) pairs: an existing file gives one text per non-empty line ("file:line"),
    "-" the lines of standard input, anything else is a text itself."""
    import contextlib
    import sys

    out = []
    for item in inputs:
        if item != "-" and not os.path.isfile(item):
            out.append((item, item))
            continue
        name = "stdin" if item == "-" else item
        with (contextlib.nullcontext(sys.stdin) if item == "-" else open(item, encoding="utf-8-sig")) as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    out.append((f"{name}:{number}", line.rstrip("\r\n")))
    return out


def predict_texts(export_path: str, inputs: list[str], *, top_k: int = 3, batch_size: int = 32,
                  progress=None) -> "Predictions":
    """Classify texts with an exported text classifier: each input is a text, or a file (or "-"
    for standard input) of one text per line. Rows: {"text", "source", "classes", "scores"}.

    Example (with an export made by `tlkeras train` on a CSV of reviews):

        predict_texts("runs/reviews/export", ["loved every minute", "reviews.txt"]).rows[0]["classes"]
    """
    return _predict_texts(load_export(export_path), inputs, top_k=top_k, batch_size=batch_size, progress=progress)


def _predict_texts(export, inputs, *, top_k=3, batch_size=32, progress=None) -> "Predictions":
    serve, class_names, _ = export
    k = max(1, min(top_k, len(class_names)))
    result = Predictions()
    items = expand_texts(inputs)
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        probs = serve(text=tf.constant([t for _, t in batch], dtype=tf.string))["probabilities"].numpy()
        for (source, text), p in zip(batch, probs):
            result.rows.append({"text": text, "source": source, **_ranked(p, class_names, k)})
        if progress is not None:
            progress(min(start + batch_size, len(items)), len(items))
    return result


def expand_inputs(inputs: list[str]) -> list[str]:
    """Image files from files and folders (searched recursively), in a stable order."""
    files = []
    for item in inputs:
        if os.path.isdir(item):
            for dirpath, dirnames, filenames in os.walk(item):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                files.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_image_file(f))
        else:
            files.append(item)
    return files


@dataclass
class Predictions:
    rows: list[dict] = field(default_factory=list)  # {"path" (or "text", "source"), "classes", "scores"}
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def predict_files(export_path: str, inputs: list[str], *, top_k: int = 3, batch_size: int = 32,
                  progress=None) -> Predictions:
    """Classify image files (and folders of them) with an exported SavedModel, .tflite or .onnx file.

    Unreadable or undecodable files are skipped and reported in `Predictions.skipped`.
    `progress(done, total)`, if given, is called after each batch (files done of all files).

    Example (with an export made by `tlkeras train`):

        preds = predict_files("runs/flowers/export", ["photos/"], top_k=2)
        preds.rows[0]  # {"path": "photos/a.jpg", "classes": ["tulip", "rose"], "scores": [0.91, 0.06]}
    """
    return _predict_files(load_export(export_path), inputs, top_k=top_k, batch_size=batch_size, progress=progress)


def _predict_files(export, inputs, *, top_k=3, batch_size=32, progress=None) -> Predictions:
    serve, class_names, _ = export
    k = max(1, min(top_k, len(class_names)))
    result = Predictions()
    files = expand_inputs(inputs)
    for start in range(0, len(files), batch_size):
        batch_paths, batch_bytes = [], []
        for p in files[start : start + batch_size]:
            try:
                with open(p, "rb") as f:
                    batch_bytes.append(f.read())
                batch_paths.append(p)
            except OSError as e:
                result.skipped.append((p, e.strerror or str(e)))
        for p, probs in _serve_batch(serve, batch_paths, batch_bytes, result.skipped):
            result.rows.append({"path": p, **_ranked(probs, class_names, k)})
        if progress is not None:
            progress(min(start + batch_size, len(files)), len(files))
    return result


def _serve_batch(serve, paths, blobs, skipped):
    if not blobs:
        return []
    try:
        probs = serve(image_bytes=tf.constant(blobs))["probabilities"].numpy()
        return list(zip(paths, probs))
    except tf.errors.InvalidArgumentError:
        pass
    out = []  # one file broke the batch: find it by serving the files one at a time
    for p, b in zip(paths, blobs):
        try:
            out.append((p, serve(image_bytes=tf.constant([b]))["probabilities"].numpy()[0]))
        except tf.errors.InvalidArgumentError as e:
            skipped.append((p, "not a decodable image: " + (e.message.strip().splitlines() or ["?"])[0]))
    return out


def format_predictions(rows: list[dict], fmt: str) -> str:
    """Render prediction rows (of images: "path"; of texts: "text") as an aligned table, JSON lines or CSV."""
    key = "text" if rows and "text" in rows[0] else "path"
    if fmt == "json":
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if fmt == "csv":
        k = max((len(r["classes"]) for r in rows), default=0)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([key] + [x for i in range(1, k + 1) for x in (f"class_{i}", f"score_{i}")])
        for r in rows:
            writer.writerow([r[key]] + [x for c, s in zip(r["classes"], r["scores"]) for x in (c, f"{s:.6f}")])
        return buf.getvalue()
    if fmt == "table":
        shown = [_short(r[key]) if key == "text" else r[key] for r in rows]
        width = max((len(s) for s in shown), default=4)
        lines = [f"{key:<{width}}  prediction"]
        for r, s in zip(rows, shown):
            guesses = "  ".join(f"{c} ({p:.1%})" for c, p in zip(r["classes"], r["scores"]))
            lines.append(f"{s:<{width}}  {guesses}")
        return "\n".join(lines) + "\n"
    raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."
