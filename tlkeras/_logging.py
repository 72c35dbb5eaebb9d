"""The `tlkeras` logger.

tlkeras reports what it decided (which layers train, which files were skipped,
where the export went) through the standard `logging` module under the name
"tlkeras". When the application has not configured logging at all, messages at
INFO and above go to stderr, so a notebook user sees them without any set-up;
an application that configures logging keeps full control.
"""

from __future__ import annotations

import logging
import sys

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
