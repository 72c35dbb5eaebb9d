"""What a run checks before it imports TensorFlow, loads a model or writes a file: the names and
paths of the config. A typo is then one line within a second, and nothing is left behind.

`build_and_finetune` runs these checks first; the CLI runs them before it imports the library
parts that need TensorFlow. The checks that need a model or the data (a hub module's signature,
class folders, `unfreeze` layer names, `class_weight` classes) follow in `build_and_finetune`,
still before the run directory is written.

>>> from tlkeras.config import FinetuneConfig
>>> check_run(FinetuneConfig(data="no/such/folder", backbone="mobilenetv2"))
Traceback (most recent call last):
tlkeras.errors.DataError: data: the path 'no/such/folder' does not exist.
"""

from __future__ import annotations

import os

from tlkeras import backbones
from tlkeras.errors import DataError, TlkerasError
from tlkeras.inputs import inputs_for
from tlkeras.methods import get_method


def check_run(cfg, *, resume: bool = False) -> None:
    """Refuse, in one line, a config whose backbone, weights, image size, data paths or output
    directory are wrong, without TensorFlow work (a multi-worker cluster is not yet set up)."""
    from tlkeras.backbones.candidates import is_auto, parse_candidates

    if is_auto(cfg.backbone):  # each candidate is checked when it is ranked; one that cannot run is listed
        parse_candidates(cfg.backbone)
        spec = None
    else:
        spec = backbones.peek(cfg.backbone, cfg.backbone_options)
    if spec is not None:
        spec.check_weights(cfg.weights)
        inputs_for(spec, cfg).size(spec, cfg.image_size)  # below the backbone's minimum; pairs it cannot read
        inputs_for(spec, cfg).check_tta(cfg.tta)  # views of texts
    get_method(cfg.stage2.method).check_settings(cfg.stage2)  # what the method cannot take together
    for key in ("data", "val_data", "unlabeled_data"):
        _check_path(key, getattr(cfg, key))
    if resume and not cfg.output_dir:
        raise TlkerasError("resume: name the run to continue with output_dir (--output-dir).")
    if cfg.output_dir and os.path.exists(cfg.output_dir) and not os.path.isdir(cfg.output_dir):
        raise TlkerasError(f"output_dir {cfg.output_dir!r} is a file, not a folder; choose another output_dir.")


def _check_path(key: str, source) -> None:
    """A local path must exist (tfds: names, URLs and in-memory data are the loaders' to check)."""
    if not isinstance(source, (str, os.PathLike)):
        return
    path = os.fsdecode(source)
    if path.startswith("tfds:") or "://" in path:
        return
    if not os.path.exists(path):
        raise DataError(f"{key}: the path {path!r} does not exist.")
