"""tlkeras: transfer learning for Keras 3 on TensorFlow.

Fine-tune a pretrained backbone on your images in two stages (head first, then the
backbone at layer-wise rates) with one call, and get a SavedModel TF Serving serves as it is:

    import tlkeras
    result = tlkeras.build_and_finetune("photos/", backbone="efficientnetb0")
    result.export_dir
"""

import os as _os

# TensorFlow's C++ start-up chatter hides what tlkeras says; users can still set their own level.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from importlib.metadata import PackageNotFoundError as _NotFound
from importlib.metadata import version as _version

from tlkeras import data  # noqa: F401  (tlkeras.data.decode_and_resize, make_datasets, ...)
from tlkeras.backbones import list_backbones
from tlkeras.config import FinetuneConfig, load_config
from tlkeras.export import export_saved_model
from tlkeras.lr_finder import find_learning_rate
from tlkeras.model import build_model
from tlkeras.predict import predict
from tlkeras.training import finetune
from tlkeras.workflow import FinetuneResult, build_and_finetune

try:
    __version__ = _version("tlkeras")
except _NotFound:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "build_and_finetune",
    "build_model",
    "finetune",
    "export_saved_model",
    "find_learning_rate",
    "predict",
    "load_config",
    "list_backbones",
    "FinetuneConfig",
    "FinetuneResult",
    "__version__",
]
