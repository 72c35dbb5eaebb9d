"""The `tlkeras` logger.

tlkeras reports what it decided (which layers train, which files were skipped,
where the export went) through the standard `logging` module under the name
"tlkeras". When the application has not configured logging at all, messages at
INFO and above go to stderr, so a notebook user sees them without any set-up;
an application that configures logging keeps full control.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile

_LOGGER_NAME = "tlkeras"


def get_logger() -> logging.Logger:
    logger = logging.getLogger(_LOGGER_NAME)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("tlkeras: %(message)s"))
        logger.addHandler(handler)
        if logger.level == logging.NOTSET:  # keep a level the application set
            logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


# What TensorFlow's C++ side prints on import and on its first look at the devices, whatever
# TF_CPP_MIN_LOG_LEVEL says (absl writes before its logging is initialised): hidden by the CLI
# unless -v or --debug; any other line printed meanwhile is shown.
_STARTUP_LINES = re.compile(
    r"absl::InitializeLog\(\)|\] oneDNN custom operations are on|cudart_stub\.cc|cpu_feature_guard\.cc|"
    r"^To enable the following instructions|failed call to cuInit|Unable to register cu(DNN|FFT|BLAS) factory|"
    r"TF-TRT Warning|computation placer already registered|This TensorFlow binary is optimized"
)
# What TFLite's C++ side prints while a model is converted or an interpreter made, at any log level: the XNNPACK
# delegate's line (once per interpreter), the quantiser's "fully_quantize: 0, inference_type: 6, ..." (once per
# int8 conversion, so dozens in a selective int8 search) and the MLIR converter's statistics
_TFLITE_LINES = re.compile(
    r"Created TensorFlow Lite XNNPACK delegate|fully_quantize: \d|^Estimated count of arithmetic ops|"
    r"tf_tfl_flatbuffer_helpers|Ignored output_format|Ignored drop_control_dependency|"
    r"TFLite interpreter needs to link Flex delegate|Summary on the non-converted ops"
)


def tensorflow_startup_hidden():
    """Run the block with stderr (file descriptor 2, where TensorFlow's C++ side writes) captured,
    then write back every captured line that is not TensorFlow's start-up chatter, in order.
    For short blocks that import TensorFlow: nothing reaches the terminal until the block ends."""
    return native_lines_hidden(_STARTUP_LINES)


def tflite_lines_hidden():
    """`native_lines_hidden` for TFLite's converter and interpreter chatter (`_TFLITE_LINES`)."""
    return native_lines_hidden(_TFLITE_LINES)


@contextlib.contextmanager
def native_lines_hidden(pattern: "re.Pattern"):
    """Run the block with stderr (file descriptor 2, where C++ code writes) captured, then write back every
    captured line that `pattern` does not match, in order (a Python exception still propagates)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (some embedded interpreters): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", "replace").splitlines()
            kept = [line for line in lines if not pattern.search(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()


def start_tensorflow() -> None:
    """Import TensorFlow and list its devices: where its start-up lines (cuInit's included) are printed."""
    import tensorflow as tf

    tf.config.list_physical_devices()
