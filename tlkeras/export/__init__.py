"""Exports of a trained model - a TF Serving SavedModel, TFLite and ONNX files - each checked against the model before
it lands; the formats are in `tlkeras.export.registry`."""

from tlkeras.export.registry import FORMATS
from tlkeras.export.run import export_run
from tlkeras.export.saved_model import LABELS_FILE, export_saved_model, next_version, verify_export

EXPORT_FORMATS = tuple(FORMATS)

__all__ = ["EXPORT_FORMATS", "LABELS_FILE", "export_run", "export_saved_model", "next_version", "verify_export"]
