"""The run directory: deciding whether a run starts, resumes or is refused; reading a finished one back."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
from typing import Iterator, Optional

from tlkeras._logging import get_logger
from tlkeras.errors import TlkerasError

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.txt"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
LORA_FILE = "lora_adapters.npz"  # stage2.method: lora: the adapters and the head alone (tlkeras.lora)
MODEL_CARD_FILE = "model_card.json"  # in an export's assets/, and beside TFLite/ONNX files
CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "resume.npz"  # in CHECKPOINT_DIR: see tlkeras.resume
STATE_PATH = os.path.join(CHECKPOINT_DIR, STATE_FILE)
SELF_TRAINING_DIR = "self_training"  # a folder per round of self-training (tlkeras.self_training)
ROUND_WEIGHTS = "model.weights.h5"  # in a round's folder: the round's finished model

# Everything a run writes, and only that: --overwrite removes these, never other files, and never
# EXPORT_DIR: the SavedModel versions a server may be serving stay, and the new model counts on.
EXPORT_DIR = "export"
ARTEFACTS = (
    CONFIG_FILE, LABELS_FILE, MODEL_FILE, METRICS_FILE, "run.json", "history.json", "skipped_files.txt",
    "stage2_trainable_layers.txt", LORA_FILE, "training_curves.png", "confusion_matrix.png", "confident_mistakes.png",
    "precision_recall_curves.png", "ranking.json", "ranking.png",
    "report.html", CHECKPOINT_DIR, EXPORT_DIR, "tflite", "onnx", "tensorboard", SELF_TRAINING_DIR,
)
# Settings that do not change what is trained: a resumed run may differ in them.
NOT_TRAINING = ("output_dir", "export", "report", "tensorboard", "top_k", "restore_best")
# Where a dead run may have left temporary files (".tmp-*", see tlkeras.atomic.atomic_path).
TEMP_FOLDERS = ("", CHECKPOINT_DIR, EXPORT_DIR, "tflite", "onnx")

# run.json's "status": what a run has done. A run is complete only when everything it was asked to
# do is done; a "trained" run (model.keras and metrics.json written, then killed during the report
# or the export) is completed by the same command.
TRAINED, COMPLETE = "trained", "complete"


def worker_dir(run_dir: str, task: str) -> str:
    """Where a non-chief worker writes: a folder of its own machine's temp dir, the same across
    restarts (its resume state lives there), removed when the run finishes."""
    import hashlib
    import tempfile

    key = hashlib.sha1(os.path.abspath(run_dir).encode("utf-8")).hexdigest()[:10]
    return os.path.join(tempfile.gettempdir(), f"tlkeras-{task}-{key}")


def has_state(run_dir: str) -> bool:
    """Whether run_dir holds a resume state (an interrupted run with at least one finished epoch, its own or a
    self-training round's)."""
    rounds = glob.glob(os.path.join(glob.escape(run_dir), SELF_TRAINING_DIR, "round-*"))
    return any(os.path.isfile(os.path.join(d, STATE_PATH)) for d in [run_dir, *rounds]) or any(
        os.path.isfile(os.path.join(d, ROUND_WEIGHTS)) for d in rounds)


# Keys that may name a local file or folder: config.yaml keeps them absolute, so that `export`, `evaluate` and
# `--resume` find them from any folder (the given spelling is kept in a comment line).
PATH_KEYS = ("data", "val_data", "unlabeled_data", "weights", "backbone")


def local_path(key: str, value) -> Optional[str]:
    """The absolute path of `value` when it names an existing file or folder by a relative path; None for anything
    else (a name, a scheme such as tfds: or hub:, an absolute path, arrays). A backbone or weights value counts only
    when it is spelled as a path (a separator or a file ending), not a name that a folder happens to share.

    >>> local_path("data", "tfds:mnist") is None, local_path("backbone", "mobilenetv2") is None
    (True, True)
    """
    if not isinstance(value, str) or not value or os.path.isabs(value) or re.match(r"^[A-Za-z][\w+.-]*:", value):
        return None
    if key in ("weights", "backbone") and os.sep not in value and "/" not in value and "." not in value:
        return None
    return os.path.abspath(value) if os.path.exists(value) else None


def write_config(path: str, cfg) -> None:
    """Write `cfg` to `path` (a run's config.yaml) with its local paths absolute, saying how they were given."""
    import dataclasses

    from tlkeras.atomic import write_text_atomic

    changed = {key: local_path(key, getattr(cfg, key)) for key in PATH_KEYS}
    changed = {key: value for key, value in changed.items() if value is not None}
    text = dataclasses.replace(cfg, **changed).to_yaml() if changed else cfg.to_yaml()
    notes = "".join(f"# {key}: given as {getattr(cfg, key)!r} in {os.getcwd()}\n" for key in changed)
    write_text_atomic(path, notes + text)


def saved_config(run_dir: Optional[str]):
    """The FinetuneConfig in RUN_DIR/config.yaml, or None (the base of `--resume`)."""
    from tlkeras.config import FinetuneConfig

    if not run_dir or not os.path.isfile(os.path.join(run_dir, CONFIG_FILE)):
        return None
    return FinetuneConfig.from_yaml(os.path.join(run_dir, CONFIG_FILE))


@contextlib.contextmanager
def lock(run_dir: str) -> Iterator[None]:
    """One training process per run directory: an exclusive OS lock on the folder itself, held
    for the block. The OS drops it when the process ends, however it ends (kill -9 included), so
    it never stays stuck and leaves no file behind. A second `tlkeras train` on the same folder
    gets one line; `tlkeras export` and `predict` do not lock and work alongside.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with lock(folder):  # doctest: +ELLIPSIS
    ...     with lock(folder):
    ...         pass
    Traceback (most recent call last):
    tlkeras.errors.TlkerasError: output_dir ... is in use by another tlkeras run ...
    """
    try:
        import fcntl
    except ImportError:  # Windows: no lock (tlkeras's platforms are Linux and macOS)
        yield
        return
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TlkerasError(
                f"output_dir {run_dir!r} is in use by another tlkeras run (it holds the folder's lock). Wait for it "
                "to finish, or choose another output_dir."
            ) from None
        except OSError as e:  # a file system without locks (some network mounts): run without one
            get_logger().warning("could not lock %s (%s): make sure no other run uses it", run_dir, e.strerror)
        yield
    finally:
        os.close(fd)  # releases the lock


def run_status(run_dir: str) -> str:
    """"none" (no run), "unfinished" (training had not ended), TRAINED (model.keras and metrics.json
    written, the report or export not done) or COMPLETE (see run.json's "status")."""
    import json

    if not os.path.isfile(os.path.join(run_dir, CONFIG_FILE)):
        return "none"
    if not (os.path.isfile(os.path.join(run_dir, MODEL_FILE)) and os.path.isfile(os.path.join(run_dir, METRICS_FILE))):
        return "unfinished"
    try:
        with open(os.path.join(run_dir, "run.json"), encoding="utf-8") as f:
            status = json.load(f).get("status", COMPLETE)  # run.json before "status" existed: written at the end
    except (OSError, ValueError, AttributeError):  # UnicodeDecodeError is a ValueError
        return TRAINED  # not written, or cut short: the end of the run is redone
    return COMPLETE if status == COMPLETE else TRAINED


def prepare(run_dir: str, cfg, *, resume: bool = False, overwrite: bool = False) -> bool:
    """Decide what to do with `run_dir` before a run; True when the run goes on from saved state.
    Call it holding `lock(run_dir)`: it removes what dead runs left (temporary files, spilled caches).

    - no run there (no config.yaml): start; with resume=True that is an error;
    - overwrite=True: remove the earlier run's files (only those tlkeras writes; the export
      versions stay and the new model's version counts on) and start;
    - a run that never finished an epoch: start afresh, whatever its config was;
    - a run with another config: refused, naming the differences and the ways out;
    - a complete run: refused, pointing to --overwrite and `tlkeras export`;
    - a run killed after training (TRAINED: `run_status`): go on, so that the report and the export
      are done from its model.keras;
    - an unfinished run with the same config: go on from its last finished epoch (the same
      command resumes; resume=True says so explicitly).
    """
    if resume and overwrite:
        raise TlkerasError("resume and overwrite exclude each other: resume continues the run in output_dir, "
                           "overwrite replaces it. Choose one.")
    _remove_leftovers(run_dir)
    status = run_status(run_dir)
    if overwrite:
        if status != "none":
            removed = remove_run(run_dir)
            versions = export_versions(os.path.join(run_dir, EXPORT_DIR))
            kept = (f"; kept {EXPORT_DIR}/ (version{'s' if len(versions) > 1 else ''} "
                    f"{', '.join(map(str, versions))}): the new model becomes version {max(versions) + 1}"
                    if versions else "")
            get_logger().info("overwrite: removed the earlier run's %s from %s%s", ", ".join(removed), run_dir, kept)
        return False
    if status == "none":
        if resume:
            raise TlkerasError(f"resume: {run_dir!r} holds no tlkeras run (no {CONFIG_FILE}) to continue. "
                               "Check output_dir, or drop --resume to start a new run there.")
        return False
    differences = config_differences(saved_config(run_dir), cfg)
    if status == "unfinished" and not has_state(run_dir) and not (resume and differences):
        get_logger().info("output_dir %s holds an unfinished run with no finished epoch: starting it again%s", run_dir,
                          " with this config" if differences else "")
        return False
    if differences:
        listed = "; ".join(differences[:5]) + ("; ..." if len(differences) > 5 else "")
        if resume:
            raise TlkerasError(
                f"resume: the run in {run_dir!r} was configured differently ({listed}). --resume continues it with "
                f"its own {CONFIG_FILE}: drop the changed settings, or use --overwrite to start again with them."
            )
        raise TlkerasError(
            f"output_dir {run_dir!r} holds a run with a different config ({listed}). Add --resume to continue that "
            "run as it was configured, --overwrite to replace it, or choose another output_dir."
        )
    if status == COMPLETE:
        raise TlkerasError(
            f"output_dir {run_dir!r} holds a finished run ({MODEL_FILE}). Use --overwrite to train it again, "
            f"another output_dir for a new run, or `tlkeras export {run_dir}` to export it again."
        )
    if status == TRAINED:
        get_logger().info("output_dir %s holds a trained run whose report or export was not finished: completing it "
                          "from its %s", run_dir, MODEL_FILE)
    return True


def config_differences(saved, cfg) -> list[str]:
    """["stage1.epochs: 5 -> 3", ...]: training settings that differ between two configs."""
    import yaml

    def flat(config) -> dict:
        values = yaml.safe_load(yaml.safe_dump(config.to_dict()))  # one normal form (lists, not tuples)
        out = {}
        for key, value in values.items():
            if isinstance(value, dict) and key != "backbone_options" and key != "class_weight":
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out

    old, new = flat(saved), flat(cfg)
    for values in (old, new):  # a path compares by what it names, however it was spelled
        for key in PATH_KEYS:
            values[key] = local_path(key, values.get(key)) or values.get(key)
    out = []
    for key in old.keys() | new.keys():
        if key in NOT_TRAINING or old.get(key) == new.get(key):
            continue
        if key in ("data", "val_data", "unlabeled_data") and (old.get(key) is None or new.get(key) is None):
            continue  # in-memory data is not in config.yaml: nothing to compare
        out.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return sorted(out)


def remove_run(run_dir: str, keep: tuple = (EXPORT_DIR,)) -> list[str]:
    """Remove the files and folders a run writes (ARTEFACTS but `keep`) from run_dir; return their names."""
    removed = []
    for name in ARTEFACTS:
        path = os.path.join(run_dir, name)
        if name in keep:
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        else:
            continue
        removed.append(name)
    return removed


def export_versions(export_dir: str) -> list[int]:
    """The SavedModel version numbers under `export_dir` (its integer folder names), sorted."""
    return sorted(int(n) for n in os.listdir(export_dir) if n.isdigit()) if os.path.isdir(export_dir) else []


def _remove_leftovers(run_dir: str) -> None:
    """What killed runs left: feature caches spilled to disk (tlkeras-cache-*) and temporary files and
    folders (".tmp-*") whose process is gone; a live export's temporary folder stays."""
    from tlkeras.atomic import is_stale_temp

    removed = []
    for folder in glob.glob(os.path.join(glob.escape(run_dir), "tlkeras-cache-*")):
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(os.path.basename(folder))
    for where in TEMP_FOLDERS:
        folder = os.path.join(run_dir, where)
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            if not is_stale_temp(name):
                continue
            path = os.path.join(folder, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(path)
            removed.append(os.path.join(where, name) if where else name)
    if removed:
        get_logger().info("removed what an interrupted run left in %s: %s", run_dir, ", ".join(sorted(removed)))


def read_labels(path: str) -> list[str]:
    from tlkeras.atomic import read_text

    text = read_text(path, "write its class names in UTF-8, one per line")
    return [line for line in text.split("\n") if line]


def load_run(run_dir: str, *, safe_mode: bool = True):
    """(model, class_names, config) of a run directory written by `build_and_finetune`.

    `.keras` files are loaded in Keras's safe mode (no arbitrary code from Lambda layers);
    safe_mode=False (the CLI's --unsafe-load) trusts the file and runs such code: only for files
    you made yourself.
    """
    from tlkeras.config import FinetuneConfig

    model_path = os.path.join(run_dir, MODEL_FILE)
    labels_path = os.path.join(run_dir, LABELS_FILE)
    if not os.path.isfile(model_path) or not os.path.isfile(labels_path):
        raise TlkerasError(
            f"{run_dir!r} is not a finished tlkeras run: it lacks {MODEL_FILE} or {LABELS_FILE}. "
            "Pass the output_dir of a `tlkeras train` run."
        )
    config_path = os.path.join(run_dir, CONFIG_FILE)
    config = FinetuneConfig.from_yaml(config_path) if os.path.isfile(config_path) else None
    return load_model_file(model_path, safe_mode=safe_mode, config=config), read_labels(labels_path), config


def load_model_file(model_path: str, *, safe_mode: bool = True, config=None):
    """A tlkeras `.keras` file loaded (Keras's safe mode unless safe_mode=False); a damaged file or one
    with code is one error line. `config` (else the config.yaml beside it) says whether KerasHub's
    layers must be registered first. Public as `tlkeras.load_model`: `import tlkeras` alone does not
    import Keras, so `keras.models.load_model` finds tlkeras's classes only once a module that
    defines them is imported; this function imports them.

    >>> import os, tempfile, tlkeras
    >>> model = tlkeras.build_model("mobilenetv2", 2, image_size=32, weights=None,
    ...                             backbone_options={"alpha": 0.35}, class_names=["cat", "dog"])
    >>> path = os.path.join(tempfile.mkdtemp(), "model.keras")
    >>> model.save(path)
    >>> tlkeras.model.model_info(tlkeras.load_model(path)).class_names
    ['cat', 'dog']
    """
    import keras

    # tlkeras's Keras classes register themselves on import: the model, its layers, losses, optimizers
    import tlkeras.backbones.hub_module  # noqa: F401
    import tlkeras.backbones.hub_text  # noqa: F401
    import tlkeras.layers  # noqa: F401
    import tlkeras.model  # noqa: F401
    import tlkeras.optimizers  # noqa: F401
    import tlkeras.tasks.losses  # noqa: F401
    import tlkeras.text_layers  # noqa: F401

    if config is None and os.path.isfile(os.path.join(os.path.dirname(model_path), CONFIG_FILE)):
        config = saved_config(os.path.dirname(model_path) or ".")
    if config is not None:
        from tlkeras.backbones import source_of

        source_of(config.backbone).before_loading(config.backbone)  # e.g. KerasHub's layers register on import
    try:
        model = keras.models.load_model(model_path, safe_mode=safe_mode)
    except Exception as e:  # noqa: BLE001 - a damaged file is named, not shown as Keras's traceback
        if safe_mode and isinstance(e, ValueError) and "safe_mode" in str(e):
            raise TlkerasError(
                f"{model_path!r} holds code (a Lambda layer) that safe mode does not run. If you made this file "
                "yourself and trust it, load it with --unsafe-load (safe_mode=False)."
            ) from None
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise TlkerasError(
            f"{model_path!r} cannot be loaded: it is damaged or not a .keras model file ({type(e).__name__}: {first}). "
            f"Restore it, or train the run again with --overwrite."
        ) from None
    return model


def run_examples(path: str, data, class_names: list[str], split: str = "val", inputs: str = "image",
                 task: str = "single_label"):
    """Labelled examples: `data`, or the run's own validation (or training) split rebuilt from
    config.yaml, read as the model's `inputs` kind reads them, the labels encoded for `task`."""
    import functools

    from tlkeras.config import FinetuneConfig
    from tlkeras.errors import DataError
    from tlkeras.inputs import get_inputs
    from tlkeras.tasks import get_task

    config_path = os.path.join(path, CONFIG_FILE)
    cfg = FinetuneConfig.from_yaml(config_path) if os.path.isfile(config_path) else None
    options = {"task": task}
    if cfg is not None:
        options.update(label_column=cfg.label_column, label_separator=cfg.label_separator,
                       text_column=cfg.text_column, image_column=cfg.image_column, max_pixels=cfg.max_image_pixels)
    load = functools.partial(get_inputs(inputs).load_examples, **options)
    if data is not None:
        examples, _, skipped = load(data, "data", class_names)
        return examples, skipped
    if cfg is None or not isinstance(cfg.data, str):
        raise DataError(f"{path!r} has no config.yaml naming a data folder; pass --data to evaluate on a folder.")
    if cfg.val_data is not None:
        examples, _, skipped = load(cfg.data if split == "train" else cfg.val_data,
                                    "data" if split == "train" else "val_data", class_names)
        return examples, skipped
    examples, _, skipped = load(cfg.data, "data", class_names)
    train_rows, val_rows = get_task(task).split(examples.labels, cfg.val_split, cfg.seed)
    rows = train_rows if split == "train" else val_rows
    if not len(rows):
        raise DataError(f"{path!r} had no {'training' if split == 'train' else 'validation'} split; pass --data.")
    return examples.subset(rows), skipped
