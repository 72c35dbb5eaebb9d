"""The `tlkeras` command line. Each command parses its arguments and makes one library call.

Precedence for `train`: library defaults < --config YAML < named flags < --set key=value.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys

import click

from tlkeras.errors import Interrupted, TlkerasError

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
_UNSAFE_HELP = "Load model.keras outside Keras's safe mode (runs Lambda-layer code): only for files you trust."


def _friendly_errors(command):
    """Show tlkeras errors (bad input) as one line; --debug shows the traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        debug = _root_flag("debug")
        try:
            return command(*args, **kwargs)
        except Interrupted as e:
            if debug:
                raise
            click.echo(f"Stopped: {e}", err=True)
            sys.exit(130)  # the shell's code for Ctrl-C
        except TlkerasError as e:
            if debug:
                raise
            raise click.ClickException(str(e)) from None
        except OSError as e:  # the disk, the file system, permissions: one line naming the file
            if debug:
                raise
            raise click.ClickException(_os_error(e)) from None

    return wrapper


def _os_error(e: OSError) -> str:
    """An OSError as one line: what failed on which file, and what to do.

    >>> import errno
    >>> _os_error(OSError(errno.ENOSPC, "No space left on device", "runs/a/model.keras"))
    "could not write 'runs/a/model.keras': No space left on device. Free some space and run the same command again: a run goes on from its last finished epoch (--debug shows the traceback)."
    """
    import errno

    where = f" {e.filename!r}" if e.filename else ""
    what = e.strerror or str(e) or type(e).__name__
    advice = {
        errno.ENOSPC: "Free some space and run the same command again: a run goes on from its last finished epoch",
        errno.EACCES: "Check the permissions, or choose another output_dir",
        errno.EROFS: "That file system is read-only: choose another output_dir (or copy the run somewhere writable)",
        errno.ENOTDIR: "A part of that path is a file, not a folder",
        errno.EISDIR: "That path is a folder; pass a file",
        errno.ENOENT: "Check the path",
    }.get(e.errno, "Check the path and the disk")
    verb = "write" if e.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT) else "use"
    return f"could not {verb}{where}: {what}. {advice} (--debug shows the traceback)."


@click.group(context_settings=_CONTEXT)
@click.option("--debug", is_flag=True, help="Show full tracebacks (and everything -v shows).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors: no progress bars or per-epoch lines.")
@click.option("-v", "--verbose", is_flag=True, help="Also tlkeras's debug lines and TensorFlow's start-up messages.")
@click.version_option(package_name="tlkeras")
def main(debug: bool, quiet: bool, verbose: bool) -> None:
    """Fine-tune pretrained Keras backbones on your images and export them for TF Serving."""
    from tlkeras._logging import get_logger

    get_logger().setLevel(logging.DEBUG if verbose or debug else logging.WARNING if quiet else logging.INFO)


def _root_flag(name: str) -> bool:
    return bool(click.get_current_context().find_root().params.get(name, False))


def _cli_config(config_path, flags: dict, weights, overrides, base=None):
    """The config of a command: `base` (or --config's YAML, or the defaults) < named flags < --set."""
    from tlkeras.config import FinetuneConfig

    cfg = base or (FinetuneConfig.from_yaml(config_path) if config_path else FinetuneConfig())
    values = {k: v for k, v in flags.items() if v is not None}
    if weights is not None:
        values["weights"] = None if weights.lower() in ("none", "null") else weights
    return cfg.merged(values).with_overrides(list(overrides))


def _start_tensorflow(*checks) -> None:
    """Run `checks` (what needs no model), then import TensorFlow: only commands that work with a
    model import it, and its C++ start-up lines are kept off stderr unless -v or --debug."""
    import contextlib

    from tlkeras._logging import start_tensorflow, tensorflow_startup_hidden

    show = _root_flag("verbose") or _root_flag("debug")
    with contextlib.nullcontext() if show else tensorflow_startup_hidden():
        for check in checks:
            check()  # may import TensorFlow itself (a backbone option's check reads Keras's constructor)
        start_tensorflow()


def _tta_value(ctx, param, value):
    """--tta checked as the config checks `tta`, before any work (no TensorFlow)."""
    from tlkeras.config import tta_problem

    problem = tta_problem(value)
    if problem:
        raise click.BadParameter(problem)
    return value


@main.command(context_settings=_CONTEXT)
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file.")
@click.option("--data", help="Folder with one subfolder per class, or tfds:NAME[:SPLIT]; for a text backbone a "
                             "CSV/TSV of texts and labels or a folder of class subfolders of .txt files.")
@click.option("--val-data", help="Validation folder or file (default: a stratified split of --data).")
@click.option("--unlabeled-data", help="Unlabelled images (a folder, any layout) or texts (a .txt of one per line, "
                                       "a CSV): self-training labels those a first model is sure of and trains on "
                                       "them too (see self_training.*).")
@click.option("--backbone", help="Backbone name, e.g. efficientnetb0 (see `tlkeras backbones`), or auto:A,B,... to "
                                 "rank those candidates first and train the best (see `tlkeras rank`).")
@click.option("--weights", help="imagenet, none, or a path to a backbone weights file.")
@click.option("--image-size", type=int, help="Input side length in pixels (default: the backbone's).")
@click.option("--batch-size", type=int)
@click.option("--output-dir", help="Run directory (default: runs/<backbone>-<time>).")
@click.option("--seed", type=int)
@click.option("--export/--no-export", default=None, help="Write the TF Serving SavedModel (default: yes).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Any config key, e.g. --set stage2.epochs=3.")
@click.option("--strategy", type=click.Choice(["auto", "default", "one_device", "mirrored", "multi_worker", "tpu"]),
              help="tf.distribute strategy (default auto: TPU, TF_CONFIG cluster, several GPUs, else one device).")
@click.option("--resume", is_flag=True,
              help="Continue the interrupted run in --output-dir from its last finished epoch, with its saved config.")
@click.option("--overwrite", is_flag=True, help="Replace the run in --output-dir (only the files tlkeras wrote).")
@_friendly_errors
def train(config_path, data, val_data, unlabeled_data, backbone, weights, image_size, batch_size, output_dir, seed,
          export, overrides, strategy, resume, overwrite):
    """Fine-tune a backbone in two stages and export it.

    Started again with the same command, an interrupted run (Ctrl-C, kill, a lost machine) goes on
    from its last finished epoch; `tlkeras train --resume --output-dir RUN_DIR` does the same
    without repeating the other options.
    """
    from tlkeras.preflight import check_run
    from tlkeras.rundir import saved_config

    base = saved_config(output_dir) if resume and not config_path else None
    flags = {
        "data": data,
        "val_data": val_data,
        "unlabeled_data": unlabeled_data,
        "backbone": backbone,
        "image_size": image_size,
        "batch_size": batch_size,
        "output_dir": output_dir,
        "seed": seed,
        "export": export,
        "strategy": strategy,
    }
    cfg = _cli_config(config_path, flags, weights, overrides, base)
    _start_tensorflow(lambda: check_run(cfg, resume=resume))  # a typo: one line, before TensorFlow is imported
    from tlkeras.workflow import build_and_finetune

    quiet = _root_flag("quiet")
    result = build_and_finetune(config=cfg, resume=resume, overwrite=overwrite, verbose=0 if quiet else "auto")
    from tlkeras.tasks import headline

    kind = result.inputs
    found = headline(result.metrics)
    click.echo("")
    if found is not None:
        click.echo(f"{result.metrics['split']} {found[0]}: {found[1]:.4f} ({result.metrics['count']} {kind.noun})")
    click.echo(f"run directory:  {result.run_dir}")
    if result.export_dir:
        click.echo(f"SavedModel:     {result.export_dir}")
        click.echo(f"try it:         tlkeras predict {result.export_dir} {kind.predict_argument}")


@main.command("find-lr", context_settings=_CONTEXT)
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file.")
@click.option("--data", help="Folder with one subfolder per class, or tfds:NAME[:SPLIT].")
@click.option("--backbone", help="Backbone name, e.g. efficientnetb0.")
@click.option("--weights", help="imagenet, none, or a path to a backbone weights file.")
@click.option("--image-size", type=int, help="Input side length in pixels (default: the backbone's).")
@click.option("--output-dir", help="Folder of the plot (default: the current one; never a run's folder unasked).")
@click.option("--stage", type=click.IntRange(1, 2), default=1, show_default=True,
              help="Stage whose rate to test (2 first trains stage 1 as configured).")
@click.option("--min-lr", type=float, default=1e-7, show_default=True)
@click.option("--max-lr", type=float, default=1.0, show_default=True)
@click.option("--steps", type=int, default=100, show_default=True)
@click.option("--plot", "output", type=click.Path(dir_okay=False), help="PNG path (default: OUTPUT_DIR/lr_finder_stageN.png).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Any config key.")
@_friendly_errors
def find_lr(config_path, data, backbone, weights, image_size, output_dir, stage, min_lr, max_lr, steps, output,
            overrides):
    """LR range test: train with a growing rate, plot the loss, suggest a rate."""
    from tlkeras.preflight import check_run

    flags = {"data": data, "backbone": backbone, "image_size": image_size, "output_dir": output_dir}
    cfg = _cli_config(config_path, flags, weights, overrides)
    _start_tensorflow(lambda: check_run(cfg))
    from tlkeras.lr_finder import find_learning_rate

    result = find_learning_rate(config=cfg, stage=stage, min_lr=min_lr, max_lr=max_lr, steps=steps, output=output)
    if result.flat:
        click.echo("warning: the loss hardly changed over the sweep, so this suggestion is a guess (see the plot).",
                   err=True)
    click.echo(f"suggested stage{stage}.learning_rate: {result.suggestion:.3g}")
    if result.plot:
        click.echo(f"plot: {result.plot}")
    click.echo(f"use it: --set stage{stage}.learning_rate={result.suggestion:.3g}")


@main.command(context_settings=_CONTEXT)
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML config file: the settings every trial starts from.")
@click.option("--data", help="Folder with one subfolder per class, a CSV, arrays' file, or tfds:NAME[:SPLIT].")
@click.option("--val-data", help="Validation folder or file (default: a stratified split of --data); trials are "
                                 "scored on it.")
@click.option("--backbone", help="Backbone name, hub:..., kerashub:... or a model file (one: rank first to choose).")
@click.option("--weights", help="imagenet, none, or a path to a backbone weights file.")
@click.option("--image-size", type=int, help="Input side length in pixels (default: the backbone's).")
@click.option("--batch-size", type=int)
@click.option("--output-dir", help="The search's folder: tune.db, trials.csv, best.yaml (default: runs/tune-<time>).")
@click.option("--seed", type=int)
@click.option("--search", "search_path", type=click.Path(dir_okay=False),
              help="YAML mapping of config keys to {low, high[, log]} or a list of choices (a top-level `search:` "
                   "key too); default: both stages' rates, unfreeze, stage-2 epochs, layer decay, head dropout, ...")
@click.option("--trials", type=int, help="Stop when the study holds this many finished trials (an interrupted "
                                         "search's included).")
@click.option("--minutes", type=float, help="Stop starting trials after this many minutes.")
@click.option("--storage", help="Optuna storage URL (default sqlite:///OUTPUT_DIR/tune.db); postgresql://... or "
                                "mysql://... lets several machines work on one study.")
@click.option("--folds", type=int, help="Score each trial by the mean over K stratified folds of the training split "
                                        "(small data); the validation split is left for --train-best.")
@click.option("--train-best", is_flag=True, help="Then train, evaluate and export the best settings (OUTPUT_DIR/best).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Any config key, e.g. --set val_split=0.3.")
@_friendly_errors
def tune(config_path, data, val_data, backbone, weights, image_size, batch_size, output_dir, seed, search_path,
         trials, minutes, storage, folds, train_best, overrides):
    """Search the two-stage recipe on your data (Optuna): trials share the data, the model and the cached features.

    The same command goes on after an interruption: finished trials are kept and counted once.
    """
    from tlkeras.config import load_yaml
    from tlkeras.preflight import check_run
    from tlkeras.tuning.space import SearchSpace

    flags = {"data": data, "val_data": val_data, "backbone": backbone, "image_size": image_size,
             "batch_size": batch_size, "output_dir": output_dir, "seed": seed}
    cfg = _cli_config(config_path, flags, weights, overrides)
    space = None
    if search_path:
        spec = load_yaml(search_path)
        spec = spec.get("search", spec) if isinstance(spec, dict) and set(spec) == {"search"} else spec
        space = SearchSpace.parse(spec)
        space.check(cfg)
    from tlkeras.tuning.search import check_stopping

    if trials is None and minutes is None:
        raise click.UsageError("say when to stop: --trials N or --minutes M.")
    check_stopping(trials, minutes * 60 if minutes is not None else None, folds)  # before TensorFlow
    _start_tensorflow(lambda: check_run(cfg))
    from tlkeras.tuning import tune as run_tune

    result = run_tune(config=cfg, search_space=space.to_dict() if space else None, n_trials=trials,
                      timeout=minutes * 60 if minutes is not None else None, storage=storage, folds=folds,
                      train_best=train_best, verbose=0)
    click.echo("")
    click.echo(_trials_table(result))
    click.echo(f"best:           trial {result.best_trial} ({result.metric} {result.best_value:.4f})")
    click.echo(f"its config:     {result.best_config}")
    click.echo(f"trials:         {os.path.join(result.output_dir, 'trials.csv')}")
    if result.trained is not None:
        click.echo(f"trained:        {result.trained.run_dir}")
        if result.trained.export_dir:
            click.echo(f"SavedModel:     {result.trained.export_dir}")
    else:
        click.echo(f"train it:       tlkeras train --config {result.best_config}")


def _trials_table(result, shown: int = 10) -> str:
    """The best `shown` finished trials, best first, and how many were pruned or failed."""
    done = sorted((t for t in result.trials if t["value"] is not None), key=lambda t: -t["value"])
    keys = list(result.best_params)
    rows = [["trial", result.metric, *keys, "epochs", "seconds"]]
    for t in done[:shown]:
        rows.append([str(t["number"]), f"{t['value']:.4f}",
                     *[f"{t[k]:.3g}" if isinstance(t[k], float) else str(t[k]) for k in keys],
                     str(t["epochs"]), f"{t['seconds']:.1f}" if t["seconds"] is not None else ""])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    states = {}
    for t in result.trials:
        states[t["state"]] = states.get(t["state"], 0) + 1
    lines.append(", ".join(f"{n} {state}" for state, n in sorted(states.items())))
    return "\n".join(lines)


@main.command(context_settings=_CONTEXT)
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML config file (data, image_size, stage1, ... shared by the candidates).")
@click.option("--data", help="Folder with one subfolder per class, a CSV, or tfds:NAME[:SPLIT].")
@click.option("--val-data", help="Validation folder or file (default: a stratified split of --data).")
@click.option("--backbones", "candidates", required=True, metavar="A,B,...",
              help="Comma-separated candidates as --backbone takes them: names, hub:..., kerashub:..., model files.")
@click.option("--weights", help="imagenet, none, or a path to a weights file (for every candidate).")
@click.option("--image-size", type=int, help="Input side length in pixels (default: each backbone's own).")
@click.option("--batch-size", type=int)
@click.option("--output-dir", help="Folder of ranking.json and ranking.png (default: runs/ranking-<time>).")
@click.option("--by", type=click.Choice(["auto", "logme", "probe"]), help="The score to sort and recommend by "
              "(default auto: LogME when every class has 50 or more training images, else the probe; measured in "
              "benchmarks/RESULTS.md).")
@click.option("--no-probe", is_flag=True, help="LogME only: skip training the linear probe (sorts by LogME).")
@click.option("--sample", type=click.IntRange(min=2), metavar="N",
              help="Rank on N training examples drawn once, class by class (the same for every candidate; "
                   "default: all). The frozen pass over them is most of what ranking costs.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Any config key, e.g. --set val_split=0.3.")
@_friendly_errors
def rank(config_path, data, val_data, candidates, weights, image_size, batch_size, output_dir, by, no_probe,
         sample, overrides):
    """Rank candidate backbones on your data before fine-tuning: one frozen pass each, then LogME and a
    linear probe (the head trained on the cached features with the stage-1 settings)."""
    import time

    from tlkeras.preflight import check_run
    from tlkeras.backbones.candidates import as_auto, parse_candidates

    flags = {"data": data, "val_data": val_data, "image_size": image_size, "batch_size": batch_size}
    cfg = _cli_config(config_path, flags, weights, overrides)
    chosen = parse_candidates(candidates)
    folder = output_dir or os.path.join("runs", f"ranking-{time.strftime('%Y%m%d-%H%M%S')}")
    _start_tensorflow(lambda: check_run(cfg.merged({"backbone": as_auto(candidates)})))
    from tlkeras.ranking import rank_backbones

    result = rank_backbones(config=cfg, candidates=chosen, by=by, output_dir=folder, probe=not no_probe, sample=sample)
    click.echo(result.table())
    if result.recommended is None:
        raise TlkerasError("no candidate could be ranked; see the reasons above.")
    click.echo(f"recommended:    {result.recommended['backbone']} ({result.describe(result.recommended)})")
    click.echo(f"ranking:        {os.path.join(folder, 'ranking.json')}")
    line = _train_command(config_path, data, val_data, weights, image_size, batch_size, overrides,
                          result.recommended["backbone"])
    click.echo(f"train it:       {line}")


def _train_command(config_path, data, val_data, weights, image_size, batch_size, overrides, backbone: str) -> str:
    """The `tlkeras train` line that trains the recommended backbone with the settings `rank` was given (the
    candidates of `--backbones` are names: they carry no settings of their own).

    >>> _train_command(None, "photos", None, "none", 64, None, ("val_split=0.3",), "mobilenetv2")
    'tlkeras train --data photos --weights none --image-size 64 --set val_split=0.3 --backbone mobilenetv2'
    >>> _train_command("c.yaml", "my photos", None, None, None, 8, (), "resnet50")
    "tlkeras train --config c.yaml --data 'my photos' --batch-size 8 --backbone resnet50"
    """
    import shlex

    parts = ["tlkeras", "train"]
    if config_path is None and data is None:
        parts += ["--data", "DATA"]
    for flag, value in (("--config", config_path), ("--data", data), ("--val-data", val_data), ("--weights", weights),
                        ("--image-size", image_size), ("--batch-size", batch_size)):
        if value is not None:
            parts += [flag, str(value)]
    for assignment in overrides:
        parts += ["--set", assignment]
    return " ".join(shlex.quote(part) for part in [*parts, "--backbone", backbone])


@main.command(context_settings=_CONTEXT)
@click.argument("path", metavar="RUN_DIR_OR_EXPORT", type=click.Path(exists=True, file_okay=False))
@click.option("--data", help="Folder of class subfolders (default: the run's own validation split).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--top-k", type=int, default=5, show_default=True, help="k of the top-k accuracy.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--write/--no-write", default=False, help="Rewrite the run's metrics.json with the result.")
@click.option("--tta", default="none", show_default=True, callback=_tta_value,
              help="Test-time augmentation: average each image's probabilities with its mirror (flip), also "
                   "upside down (flip_all; for data without a left and right, or an up), or N zoomed crops (crops:N).")
@click.option("--unsafe-load", is_flag=True, help=_UNSAFE_HELP)
@_friendly_errors
def evaluate(path, data, batch_size, top_k, fmt, write, tta, unsafe_load):
    """Metrics of a run's model (RUN_DIR) or of an export (RUN_DIR/export[/N], served from image
    bytes as TF Serving would) on labelled images: accuracy, top-k, loss, per-class precision,
    recall and F1, confusion matrix, calibration, ROC-AUC and PR-AUC."""
    _start_tensorflow()
    from tlkeras.evaluate import evaluate_run, format_evaluation

    metrics = evaluate_run(path, data, batch_size=batch_size, top_k=top_k, write=write, safe_mode=not unsafe_load,
                           tta=tta)
    click.echo(json.dumps(metrics, indent=2) if fmt == "json" else format_evaluation(metrics), nl=fmt == "json")


@main.command(context_settings=_CONTEXT)
@click.argument("export_dir", metavar="ARTEFACT", type=click.Path(exists=True))
@click.argument("inputs", nargs=-1, required=True, metavar="INPUTS...")
@click.option("--top-k", type=int, default=3, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--tta", default="none", show_default=True, callback=_tta_value,
              help="Test-time augmentation with a run directory or .keras file: each image's probabilities averaged "
                   "with its mirror (flip), also its upside-down views (flip_all), or N zoomed crops (crops:N).")
@_friendly_errors
def predict(export_dir, inputs, top_k, batch_size, fmt, tta):
    """Classify images (files or folders, recursively) with a trained model: an export (a SavedModel folder), a
    .tflite, .onnx or .keras file, or a run directory.

    With a text classifier's export, each input is a text, or a file of one text per line ("-": standard input).
    """
    _start_tensorflow()
    from tlkeras.predict import format_predictions, predict

    bar = None

    def progress(done, total):  # on stderr, so JSON/CSV on stdout stay clean; only for long runs
        nonlocal bar
        if bar is None and total > 4 * batch_size:
            bar = click.progressbar(length=total, label="predicting", file=sys.stderr)
        if bar is not None:
            bar.update(done - bar.pos)

    result = predict(export_dir, list(inputs), top_k=top_k, batch_size=batch_size, progress=progress, tta=tta)
    if bar is not None:
        bar.render_finish()
    click.echo(format_predictions(result.rows, fmt), nl=False)
    for path, reason in result.skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    if result.skipped and not result.rows:
        sys.exit(1)


@main.command(context_settings=_CONTEXT)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--export-dir", help="Base folder of the versions (default: RUN_DIR/export).")
@click.option("--top-k", type=int, help="Classes listed per image (default: the run's top_k).")
@click.option("--format", "formats", default="saved_model", show_default=True,
              help="Comma-separated: saved_model, tflite, tflite-float16, tflite-int8, onnx.")
@click.option("--int8-min-agreement", type=float, metavar="FRACTION",
              help="Accept an int8 TFLite model that keeps this share of the answers (default 0.97; recorded in the "
                   "model card).")
@click.option("--tta", default="none", show_default=True, callback=_tta_value,
              help="Test-time augmentation inside the SavedModel: each input's probabilities averaged with its "
                   "mirror (flip), its mirror and upside-down views (flip_all), or N zoomed crops (crops:N). "
                   "SavedModel only.")
@click.option("--unsafe-load", is_flag=True, help=_UNSAFE_HELP)
@_friendly_errors
def export(run_dir, export_dir, top_k, formats, int8_min_agreement, tta, unsafe_load):
    """Export a finished run: the next TF Serving SavedModel version and/or TFLite files, each
    checked against the model before it is written; prints one path per format."""
    _start_tensorflow()
    from tlkeras.errors import SomeExportsFailed
    from tlkeras.export import export_run

    try:
        paths = export_run(run_dir, export_dir, top_k=top_k,
                           formats=[f.strip() for f in formats.split(",") if f.strip()], safe_mode=not unsafe_load,
                           int8_min_agreement=int8_min_agreement, tta=tta)
    except SomeExportsFailed as e:  # the formats that worked are printed; each failure is one line
        for path in e.written.values():
            click.echo(path)
        for name, reason in e.failed.items():
            click.echo(f"Error: {name}: {reason}", err=True)
        sys.exit(1)
    for path in paths.values():
        click.echo(path)


@main.command(context_settings=_CONTEXT)
def backbones():
    """List the backbones `--backbone` accepts."""
    from tlkeras.backbones import list_backbones, resolve, scheme_usage
    from tlkeras.backbones.candidates import USAGE as CANDIDATES_USAGE

    click.echo(f"{'name':<20} {'source':<20} {'default size':>12} {'min size':>9}  preprocessing")
    for name in list_backbones():
        spec = resolve(name)
        click.echo(
            f"{name:<20} {spec.source:<20} {spec.default_size:>12} {spec.min_size:>9}  {spec.preprocessing}"
        )
    click.echo("\nNames are case-insensitive; pass constructor options with --set backbone_options.alpha=0.5.")
    click.echo("\nOther backbones, by scheme:")
    for scheme, text in [*scheme_usage(), CANDIDATES_USAGE]:  # what each source says about itself
        click.echo(f"  {scheme:<22} {text}")


@main.command(context_settings=_CONTEXT)
@click.option("--output-dir", default="runs/demo", show_default=True)
@_friendly_errors
def demo(output_dir):
    """Offline demo: pretrain on digits 0-4, transfer to 5-9, compare with training from scratch."""
    _start_tensorflow()
    from tlkeras.demo import run_demo

    run_demo(output_dir, echo=click.echo)


if __name__ == "__main__":  # pragma: no cover
    main()
