"""The TFLite runtime: LiteRT's interpreter (package ai-edge-litert) when it is installed, else tf.lite's.

TensorFlow 2.21 deprecates `tf.lite.Interpreter` in favour of LiteRT's (the same runtime, renamed) and warns each
time one is made; the fallback, and the interpreters TFLite's own tools make, run without that warning.

Example:
    >>> from tlkeras.export.litert import without_interpreter_warning
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     with without_interpreter_warning():
    ...         warnings.warn("Warning: tf.lite.Interpreter is deprecated and is scheduled for deletion")
    >>> caught
    []
"""
from __future__ import annotations

import contextlib
import warnings


@contextlib.contextmanager
def without_interpreter_warning():
    """Silences the deprecation warning TensorFlow 2.21 prints each time a tf.lite.Interpreter is made - ours, and
    those TFLite's own tools make."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated")
        yield


def interpreter(**kwargs):
    """A TFLite interpreter for `model_path=` or `model_content=`: LiteRT's when installed, else tf.lite's, quietly."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = None
    if Interpreter is not None:
        return Interpreter(**kwargs)
    import tensorflow as tf

    with without_interpreter_warning():
        return tf.lite.Interpreter(**kwargs)
