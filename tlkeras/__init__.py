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

from tlkeras._lazy import lazy_names as _lazy_names
from tlkeras.predict import predict  # eager and TensorFlow-free: else the submodule tlkeras.predict shadows it

# The public names, each imported on first use: `import tlkeras`, the CLI's help, config checks
# and `tlkeras backbones` need no TensorFlow; the first name that does imports it.
__getattr__, __dir__ = _lazy_names(__name__, {
    "data": ("tlkeras.data", None),  # tlkeras.data.decode_and_resize, make_datasets, ...
    "ranking": ("tlkeras.ranking", None),  # tlkeras.ranking.logme, Ranking, ...
    "list_backbones": ("tlkeras.backbones", "list_backbones"),
    "FinetuneConfig": ("tlkeras.config", "FinetuneConfig"),
    "load_config": ("tlkeras.config", "load_config"),
    "export_saved_model": ("tlkeras.export", "export_saved_model"),
    "find_learning_rate": ("tlkeras.lr_finder", "find_learning_rate"),
    "rank_backbones": ("tlkeras.ranking", "rank_backbones"),
    "build_model": ("tlkeras.model", "build_model"),
    "finetune": ("tlkeras.training", "finetune"),
    "FinetuneResult": ("tlkeras.workflow", "FinetuneResult"),
    "build_and_finetune": ("tlkeras.workflow", "build_and_finetune"),
    "tune": ("tlkeras.tuning", "tune"),
    "TuneResult": ("tlkeras.tuning", "TuneResult"),
    "load_model": ("tlkeras.rundir", "load_model_file"),
})

try:
    __version__ = _version("tlkeras")
except _NotFound:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "build_and_finetune",
    "tune",
    "build_model",
    "finetune",
    "export_saved_model",
    "find_learning_rate",
    "rank_backbones",
    "predict",
    "load_model",
    "load_config",
    "list_backbones",
    "FinetuneConfig",
    "FinetuneResult",
    "TuneResult",
    "__version__",
]
