"""Exports of a trained model: a TF Serving SavedModel, checked against the model before it lands."""

from tlkeras.export.saved_model import LABELS_FILE, export_run, export_saved_model, next_version, verify_export

__all__ = ["LABELS_FILE", "export_run", "export_saved_model", "next_version", "verify_export"]
