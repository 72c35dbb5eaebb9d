"""Exports of a trained model - a TF Serving SavedModel, TFLite and ONNX files - each checked against the model before
it lands; the formats are in `tlkeras.export.registry`."""

from tlkeras._lazy import lazy_names as _lazy_names
from tlkeras.export.registry import FORMATS

EXPORT_FORMATS = tuple(FORMATS)

# Imported on first use: the registry (and predict, which reads it) need no TensorFlow.
__getattr__, __dir__ = _lazy_names(__name__, {
    "export_run": ("tlkeras.export.run", "export_run"),
    "LABELS_FILE": ("tlkeras.export.saved_model", "LABELS_FILE"),
    "export_saved_model": ("tlkeras.export.saved_model", "export_saved_model"),
    "next_version": ("tlkeras.export.saved_model", "next_version"),
    "verify_export": ("tlkeras.export.saved_model", "verify_export"),
})

__all__ = ["EXPORT_FORMATS", "LABELS_FILE", "export_run", "export_saved_model", "next_version", "verify_export"]
