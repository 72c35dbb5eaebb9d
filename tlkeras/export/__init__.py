"""Exports of a trained model: a TF Serving SavedModel and TFLite files, each checked against the model before it lands."""

from tlkeras.export.saved_model import (
    EXPORT_FORMATS, LABELS_FILE, export_run, export_saved_model, next_version, verify_export,
)

__all__ = ["EXPORT_FORMATS", "LABELS_FILE", "export_run", "export_saved_model", "next_version", "verify_export"]
