"""Batch prediction through an exported SavedModel's `serving_default` signature: image files, or
for a text classifier, lines of text. TensorFlow is imported when a model is loaded, not with this
module (`tlkeras.predict` is imported with the package)."""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from tlkeras.errors import ExportError
from tlkeras.export.registry import file_classifier, format_for_file
from tlkeras.rundir import LABELS_FILE, MODEL_CARD_FILE, read_labels
from tlkeras.inputs import get_inputs, inputs_of_signature
from tlkeras.tasks import get_task

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


@dataclass
class LoadedExport:
    """An export, loaded: `serve(image_bytes=...)` (or `serve(text=...)`) -> {"probabilities", ...},
    its class names, path, Task name, decision (a multi-label model's thresholds) and input kind."""

    serve: object
    class_names: list
    path: str
    task: str = "single_label"
    decision: Optional[dict] = None
    inputs: str = "image"


def _read_card(card_path: str) -> dict:
    """A model card's fields; {} when there is none or it cannot be read."""
    try:
        with open(card_path, encoding="utf-8") as f:
            card = json.load(f)
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def _card_facts(card_path: str) -> dict:
    """{"task", "decision"} from a model card (exports written before the card held them: single-label)."""
    card = _read_card(card_path)
    return {"task": card.get("task_name", "single_label"), "decision": card.get("decision")} if card else {}


def import_serving_ops(modules, folder: str) -> None:
    """Import the modules whose ops an export uses (TensorFlow Text's tokenizers) before it is loaded;
    a missing one is one line naming the extra to install."""
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            package = module.replace("_", "-")
            raise ExportError(f"the SavedModel {folder!r} tokenises text with {package} ops, which are not installed: "
                              f'pip install "tlkeras[text]" (TF Serving\'s model server links them already).') from None


def load_export(path, tta: str = "none") -> LoadedExport:
    """A model loaded for prediction: a SavedModel (its serving_default signature), a .tflite / .onnx
    file (labels.txt and model_card.json beside it), a tlkeras `.keras` file, a run directory (its
    latest export, else its model.keras) or a tlkeras keras.Model in memory; called as
    serve(image_bytes=...) or serve(text=...).

    `tta` ("flip", "flip_all"): test-time augmentation, each input averaged with its views; a Keras model's (a
    `.keras` file, a run directory's model.keras, a model in memory), since an export or a file answers as it was
    exported (`tlkeras export --tta` puts the views inside a SavedModel)."""
    if tta != "none":
        return _with_views(path, tta)
    if not isinstance(path, (str, os.PathLike)):
        return keras_model_export(path)
    path = os.fspath(path)
    if format_for_file(path) is not None:
        return _load_file_model(path)
    if path.endswith(".keras") and os.path.isfile(path):
        from tlkeras.rundir import load_model_file

        return keras_model_export(load_model_file(path), path)
    from tlkeras.rundir import MODEL_FILE

    if not is_export(path) and not is_export(os.path.join(path, "export")) and os.path.isfile(
            os.path.join(path, MODEL_FILE)):  # a run exported nothing: its model.keras
        return load_export(os.path.join(path, MODEL_FILE))
    import tensorflow as tf

    folder = resolve_export(path)
    card = os.path.join(folder, "assets", MODEL_CARD_FILE)
    import_serving_ops(_read_card(card).get("serving_imports") or [], folder)
    try:
        loaded = tf.saved_model.load(folder)
    except (OSError, ValueError, IndexError, tf.errors.OpError) as e:
        first = (str(getattr(e, "message", e)).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ExportError(f"the SavedModel {folder!r} is damaged and cannot be loaded ({first}); export the run "
                          "again (`tlkeras export RUN`) or restore the folder.") from None
    serve = loaded.signatures["serving_default"]
    serve._tlkeras_keepalive = loaded  # the signature needs its object alive
    signature = getattr(serve, "structured_input_signature", None)
    inputs = inputs_of_signature(signature[1]) if signature else "image"
    facts = _card_facts(card)
    key = get_task(facts.get("task", "single_label")).output_key
    return LoadedExport(serve if key == "probabilities" else _Renamed(serve, key),
                        read_labels(os.path.join(folder, "assets", LABELS_FILE)), folder, inputs=inputs, **facts)


class _Renamed:
    """A signature whose `key` output (a regression's `value`) is handed on as "probabilities", the name every
    reader of an export's outputs takes the model's outputs by."""

    def __init__(self, serve, key: str):
        self.serve, self.key = serve, key
        self.structured_input_signature = getattr(serve, "structured_input_signature", None)

    def __call__(self, **inputs):
        outputs = dict(self.serve(**inputs))
        outputs["probabilities"] = outputs.pop(self.key)
        return outputs


def _with_views(path, tta: str) -> LoadedExport:
    """The Keras model at `path` (or in memory) served with the `tta` views averaged in."""
    if not isinstance(path, (str, os.PathLike)):
        return keras_model_export(path, tta=tta)
    from tlkeras.rundir import MODEL_FILE, load_model_file

    path = os.fspath(path)
    model_file = path if path.endswith(".keras") and os.path.isfile(path) else os.path.join(path, MODEL_FILE)
    if not os.path.isfile(model_file):
        raise ExportError(f"tta: {path!r} is an export or a model file, which answers each input as it was exported; "
                          f"predict with the run directory (its model.keras) for --tta {tta}, or export the run with "
                          f"`tlkeras export RUN --tta {tta}`.")
    return keras_model_export(load_model_file(model_file), model_file, tta=tta)


def keras_model_export(model, path: str = "<model in memory>", tta: str = "none") -> LoadedExport:
    """A tlkeras keras.Model served as its export would be: the Inputs kind's serving_default
    (the training decode/resize or the strings) and the Task's probabilities (averaged over the `tta` views, as an
    export made with them)."""
    from tlkeras.export.saved_model import tta_probabilities
    from tlkeras.model import inputs_of, model_info

    info = model_info(model)
    kind = inputs_of(model)
    if not info.class_names:
        raise ExportError(f"{path!r} keeps no class names (a model from an older tlkeras); predict with its run "
                          "directory or its export instead.")
    task = info.task_role
    views = kind.tta_views(tta)

    def outputs(inputs):
        return {"probabilities": tta_probabilities(lambda x: model(x, training=False), inputs, task, views)}

    serve = kind.serving_functions(outputs, model)["serving_default"]
    return LoadedExport(serve, list(info.class_names), path, task=info.task, decision=info.decision, inputs=kind.name)


def _load_file_model(path: str) -> LoadedExport:
    """A .tflite or .onnx classifier with the labels.txt beside it, called as serve(image_bytes=...)."""
    from tlkeras.data.images import decode_and_resize

    if not os.path.isfile(path):
        raise ExportError(f"{path!r} does not exist; pass a file written by `tlkeras export --format tflite|onnx`.")
    labels = os.path.join(os.path.dirname(path), LABELS_FILE)
    if not os.path.isfile(labels):
        raise ExportError(f"{labels!r} is missing: {os.path.basename(path)} needs its labels.txt beside it.")
    class_names = read_labels(labels)
    classifier = file_classifier(path)  # the export format registry knows which runtime runs it

    def serve(image_bytes):
        pixels = np.stack([np.asarray(decode_and_resize(b, classifier.image_size)) for b in image_bytes])
        import tensorflow as tf

        return {"probabilities": tf.constant(classifier(pixels))}

    return LoadedExport(serve, class_names, path,
                        **_card_facts(os.path.join(os.path.dirname(path), MODEL_CARD_FILE)))


def predict(model, inputs, *, top_k: int = 3, batch_size: int = 32, tta: str = "none",
            progress=None) -> "Predictions":
    """Classify files with a trained model: what `tlkeras predict` prints, as rows.

    Args:
        model: a run directory, an export (SavedModel folder or its version folder), a `.keras`,
            `.tflite` or `.onnx` file, or a tlkeras keras.Model (`FinetuneResult.model`).
        inputs: image files and folders (read recursively); for a text classifier, texts or files
            of one text per line. A single string is one input.
        top_k: classes per answer (multi-label models answer with the labels above their thresholds).
        tta: "flip" or "flip_all" averages each image's probabilities with its views' (a Keras model or a run
            directory; an export answers as it was exported).
        progress: `progress(done, total)`, if given, is called after each batch.

    Returns:
        Predictions: `.rows` ({"path", "classes", "scores"}; texts: {"text", "source", ...}) and
        `.skipped` ((path, reason) of files that are not images it can read).

    Example:

    >>> import os, tempfile, numpy as np, tensorflow as tf, tlkeras
    >>> model = tlkeras.build_model("mobilenetv2", 2, image_size=32, weights=None,
    ...                             backbone_options={"alpha": 0.35}, class_names=["cat", "dog"])
    >>> folder = tempfile.mkdtemp()
    >>> _ = open(os.path.join(folder, "a.png"), "wb").write(tf.io.encode_png(np.zeros((40, 40, 3), "uint8")).numpy())
    >>> _ = open(os.path.join(folder, "notes.png"), "wb").write(b"not a picture")
    >>> result = tlkeras.predict(model, folder, top_k=2)
    >>> [os.path.basename(r["path"]) for r in result.rows], sorted(result.rows[0]["classes"])
    (['a.png'], ['cat', 'dog'])
    >>> result.skipped[0][1]
    'not an image: JPEG, PNG, BMP or GIF are read'
    """
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    return _predict(load_export(model, tta), inputs, top_k=top_k, batch_size=batch_size, progress=progress)


def _answers(export: LoadedExport, probabilities, k: int) -> list[dict]:
    """Rows of answers as the export's Task gives them (top-k classes, or labels above thresholds)."""
    return get_task(export.task).answers(np.asarray(probabilities), export.class_names, export.decision, k)


@dataclass
class Predictions:
    rows: list[dict] = field(default_factory=list)  # {"path" (or "text", "source"), "classes", "scores"}
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def _predict(export: LoadedExport, inputs, *, top_k=3, batch_size=32, progress=None) -> Predictions:
    """Read `inputs` as the export's Inputs kind reads them, serve them in batches, answer as its Task does."""
    kind = get_inputs(export.inputs)
    k = max(1, min(top_k, len(export.class_names)))
    entries = kind.collect(inputs)
    result = Predictions()
    for start in range(0, len(entries), batch_size):
        batch = entries[start : start + batch_size]
        served, bad = kind.serve(export.serve, [payload for _, payload in batch])
        result.skipped.extend((_name(batch[i][0]), why) for i, why in bad)
        if served:
            answers = _answers(export, np.stack([probs for _, probs in served]), k)
            result.rows.extend({**batch[i][0], **answer} for (i, _), answer in zip(served, answers))
        if progress is not None:
            progress(min(start + batch_size, len(entries)), len(entries))
    return result


def _name(fields: dict) -> str:
    return fields.get("path") or fields.get("source") or fields.get("text", "")


def format_predictions(rows: list[dict], fmt: str) -> str:
    """Render prediction rows (of images: "path"; of texts: "text") as an aligned table, JSON lines or
    CSV. Multi-label rows ("labels", "probabilities") list the labels above their thresholds in the
    table, and every class's probability in JSON and CSV; regression rows ("values") a column per target.

    >>> print(format_predictions([{"path": "a.png", "values": {"age": 31.25, "score": 4.0}}], "table"), end="")
    path   age      score
    a.png  31.2500  4.0000
    """
    key = "text" if rows and "text" in rows[0] else "path"
    if fmt == "json":
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if rows and "labels" in rows[0]:
        return _format_labels(rows, fmt, key)
    if rows and "values" in rows[0]:
        return _format_values(rows, fmt, key)
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


def _format_values(rows: list[dict], fmt: str, key: str) -> str:
    names = list(rows[0]["values"])
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([key] + names)
        for r in rows:
            writer.writerow([r[key]] + [repr(float(r["values"][n])) for n in names])
        return buf.getvalue()
    if fmt != "table":
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    table = [[key] + names] + [[_short(r[key]) if key == "text" else r[key]] + [f"{r['values'][n]:.4f}" for n in names]
                               for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n" for row in table)


def _format_labels(rows: list[dict], fmt: str, key: str) -> str:
    names = list(rows[0]["probabilities"])
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([key, "labels"] + names)
        for r in rows:
            writer.writerow([r[key], " ".join(r["labels"])] + [f"{r['probabilities'][n]:.6f}" for n in names])
        return buf.getvalue()
    if fmt == "table":
        shown = [_short(r[key]) if key == "text" else r[key] for r in rows]
        width = max((len(s) for s in shown), default=4)
        lines = [f"{key:<{width}}  labels"]
        for r, s in zip(rows, shown):
            found = "  ".join(f"{c} ({p:.1%})" for c, p in zip(r["labels"], r["scores"])) or "(none above threshold)"
            lines.append(f"{s:<{width}}  {found}")
        return "\n".join(lines) + "\n"
    raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.replace("\t", " | ").split())  # a pair's two texts: "first | second"
    return text if len(text) <= width else text[: width - 3] + "..."
