"""Exporting a finished run in the formats asked for (`tlkeras export RUN --format ...`): each through
the format registry (`tlkeras.export.registry`), with a model card and parity record beside files."""

from __future__ import annotations

import os
from typing import Optional, Sequence

from tlkeras._logging import get_logger
from tlkeras.errors import ExportError, SomeExportsFailed
from tlkeras.export.saved_model import MODEL_CARD_FILE, model_card
from tlkeras.model import inputs_of
from tlkeras.atomic import read_json


def export_run(run_dir: str, export_dir: Optional[str] = None, *, top_k: Optional[int] = None,
               formats: Sequence[str] = ("saved_model",), safe_mode: bool = True,
               int8_min_agreement: Optional[float] = None, tta: str = "none") -> dict:
    """Export a finished run's model.keras in each of `formats` (`tlkeras.export.registry.FORMATS`);
    returns {format: path}.

    saved_model: the next SavedModel version (default base folder RUN_DIR/export).
    tflite / tflite-int8: RUN_DIR/tflite/model_float32.tflite / model_int8.tflite, each checked
    on the run's validation images (int8 calibrated on its training images) - see
    `tlkeras.export.tflite`; the parity lands in RUN_DIR/tflite/parity.json.
    onnx: RUN_DIR/onnx/model.onnx through tf2onnx, checked with onnxruntime (`tlkeras.export.onnx`).

    `int8_min_agreement` replaces int8's parity bar (0.97 of the answers; a fraction in (0, 1]),
    recorded in parity.json and the model card. `tta` ("flip", "flip_all") puts test-time augmentation inside
    the SavedModel: each signature averages an input with its views (TFLite and ONNX files answer the input alone).

    Each format is exported and checked on its own: one that fails (e.g. int8 below its parity bar)
    does not stop the others, and `SomeExportsFailed` (an ExportError) then names each failure and
    holds the paths that were written (`.written`).
    """
    from tlkeras.export.registry import FORMATS, ExportJob, get_format
    from tlkeras.rundir import load_run
    from tlkeras.runrecord import RUN_FILE, card_facts

    if not formats:
        raise ExportError(f"format (none) is not one of {', '.join(FORMATS)} (e.g. --format saved_model,tflite).")
    chosen = [get_format(f) for f in formats]
    if int8_min_agreement is not None and not 0 < float(int8_min_agreement) <= 1:
        raise ExportError(f"int8_min_agreement: {int8_min_agreement!r} is not a fraction in (0, 1]; e.g. 0.95 "
                          "accepts an int8 model that keeps 95 % of the answers.")
    model, class_names, cfg = load_run(run_dir, safe_mode=safe_mode)
    kind = inputs_of(model)
    others = [f.name for f in chosen if f.is_file and f.name not in kind.file_formats]
    if others:
        raise ExportError(f"format {', '.join(others)}: a {kind.classifier} classifier exports as a SavedModel only (TFLite "
                          "and ONNX files take image pixels here); use --format saved_model.")
    if tta != "none":
        kind.check_tta(tta)
        files = [f.name for f in chosen if f.is_file]
        if files:
            raise ExportError(f"tta: {tta} goes inside a SavedModel only; {', '.join(files)} answer each input alone: "
                              "export those without --tta.")
    k = top_k or (cfg.top_k if cfg is not None else 5)
    card = None
    record_path, metrics_path = os.path.join(run_dir, RUN_FILE), os.path.join(run_dir, "metrics.json")
    if os.path.isfile(record_path) and os.path.isfile(metrics_path):
        fix = "remove it to export without its facts in the model card, or train the run again with --overwrite"
        card = card_facts(read_json(record_path, fix), read_json(metrics_path, fix))
    thresholds = {"int8": float(int8_min_agreement)} if int8_min_agreement is not None else {}
    job = ExportJob(model, run_dir, class_names, k, card, export_dir, thresholds, tta=tta)
    out, failed = {}, {}
    for fmt in chosen:
        try:
            out[fmt.name] = fmt.write(job)
        except OSError:  # the disk or the file system: every other format would meet it too
            raise
        except Exception as e:  # noqa: BLE001 - reported with the others at the end; the next format still runs
            reason = str(e) if isinstance(e, ExportError) else (
                f"the converter failed ({type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]})")
            failed[fmt.name] = reason
            get_logger().warning("%s: not exported: %s", fmt.name, reason)
    for folder in {os.path.dirname(out[f.name]) for f in chosen if f.is_file and f.name in out}:
        side = model_card(model, class_names, k, card)
        if thresholds:
            side["int8_min_agreement"] = thresholds["int8"]  # a bar the user chose, not the default
        _write_side_card(folder, side)
    if failed:
        raise SomeExportsFailed(out, failed)
    return out


def _write_side_card(folder: str, card: dict) -> None:
    """model_card.json beside TFLite / ONNX files: the SavedModel's card plus their measured parity."""
    from tlkeras.export.parity import PARITY_FILE
    from tlkeras.atomic import write_json_atomic

    card = {**card, "parity": read_json(os.path.join(folder, PARITY_FILE))}
    card["inputs"] = {"pixels": "RGB pixels at image_size, [0, 255]: float32, or uint8 for int8 TFLite; decode "
                                "and resize with tlkeras.data.images.decode_and_resize"}
    from tlkeras.tasks import get_task

    card["outputs"] = {get_task(card.get("task_name", "single_label")).output_key: f"[N, {len(card['class_names'])}]"}
    write_json_atomic(os.path.join(folder, MODEL_CARD_FILE), card)
