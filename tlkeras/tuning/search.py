"""`tlkeras.tune`: search the two-stage recipe on the user's data with Optuna, every trial sharing what does not
change between trials.

One search builds the data and the model once. Each trial puts the model back to its pretrained weights (bit for
bit), trains both stages with the trial's settings and scores the Task's headline metric on the validation split at
the trial's best epoch. What the frozen backbone computes is cached once per place it is taken (stage 1's features,
and the activations at each stage-2 cut) and kept across trials (`tlkeras.training.parts.SharedCaches`): a trial
that changes only the head's or stage 1's settings runs no backbone pass at all. Optuna's TPE sampler proposes the
settings and its median pruner stops a trial whose validation curve is behind the others' at the same epoch. With
`folds`, a trial's score is its mean over stratified folds of the training split (each fold's frozen outputs cached
once too), and the validation split is left for the winner's own run.

The study lives in `OUTPUT_DIR/tune.db` (SQLite through Optuna's RDB storage): the same command goes on after a
kill - finished trials kept, an interrupted one run again, none counted twice - and `storage=` (postgresql://,
mysql://, or another sqlite:/// file) lets several processes or machines work on one study, Optuna's own way.
Outputs: `trials.csv` (a row per trial), `best.yaml` (a config `tlkeras train --config best.yaml` runs as it is)
and `tune.json`.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from tlkeras._logging import get_logger
from tlkeras.config import FinetuneConfig, resolve_config
from tlkeras.errors import ConfigError
from tlkeras.tuning.space import SearchSpace, default_space, nested

TUNE_DB = "tune.db"
TRIALS_FILE = "trials.csv"
BEST_FILE = "best.yaml"
SUMMARY_FILE = "tune.json"
STUDY_NAME = "tlkeras"
# A trial whose process died stops beating; after this many seconds without a beat Optuna marks it failed and
# tune runs its settings again (RetryFailedTrialCallback)
HEARTBEAT_SECONDS = 5
GRACE_SECONDS = 15
# The median pruner: no trial is stopped before this many have finished, nor before its own second epoch
PRUNER_STARTUP_TRIALS = 4
PRUNER_WARMUP_EPOCHS = 2


@dataclass
class TuneResult:
    """A finished search: its best trial's settings and score, every trial, where its files are."""

    best_params: dict
    best_value: float
    best_trial: int
    metric: str
    trials: list
    output_dir: str
    best_config: str
    storage: str
    trained: Any = None  # the FinetuneResult of --train-best
    timings: dict = field(default_factory=dict)


def tune(data: Any = None, *, config: FinetuneConfig | str | None = None, search_space: Optional[dict] = None,
         n_trials: Optional[int] = None, timeout: Optional[float] = None, storage: Optional[str] = None,
         folds: Optional[int] = None, train_best: bool = False, **options) -> TuneResult:
    """Search the two-stage recipe on your data; every trial shares the data, the model and the cached features.

    Args:
        data, config, **options: as `build_and_finetune` (the base every trial starts from; `output_dir` is the
            search's folder: its study, trials.csv, best.yaml, and each trial's history under trials/).
        search_space: {config key: {low, high[, log]} or [choices]} (`tlkeras.tuning.space`); None: the default
            space for the data's Task and inputs (`default_space`).
        n_trials: stop when the study holds this many finished (complete or pruned) trials, counting those of an
            earlier, interrupted call and of other processes on the same storage.
        timeout: stop starting trials after this many seconds.
        storage: Optuna's storage URL; None: sqlite:///OUTPUT_DIR/tune.db.
        folds: score each trial by the mean over this many stratified folds of the training split (each example
            validates once), for data too small for one validation split to decide; the validation split is then
            never seen by the search, and `train_best` scores the winner on it.
        train_best: then train, evaluate and export the best settings as a normal run (OUTPUT_DIR/best).

    Returns:
        TuneResult: .best_params, .best_value (the Task's headline on validation), .trials, .best_config (a path).

    Example:

    >>> import numpy as np, tempfile, tlkeras
    >>> rng = np.random.default_rng(0)
    >>> x = rng.integers(0, 255, (24, 16, 16, 3)).astype("uint8")
    >>> y = np.array(["cat", "dog"] * 12)
    >>> result = tlkeras.tune((x, y), backbone="mobilenetv2", weights=None, image_size=32,
    ...                       backbone_options={"alpha": 0.35}, batch_size=8, stage2={"epochs": 1},
    ...                       search_space={"stage1.learning_rate": {"low": 1e-3, "high": 1e-1, "log": True}},
    ...                       n_trials=2, output_dir=tempfile.mkdtemp(), verbose=0)
    >>> len(result.trials), sorted(result.best_params)
    (2, ['stage1.learning_rate'])
    """
    verbose = options.pop("verbose", "auto")
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError('tune searches with Optuna, which is not installed: pip install "tlkeras[tune]".') from None
    cfg = resolve_config(config, data, options)
    space = SearchSpace.parse(search_space) if search_space is not None else None
    check_stopping(n_trials, timeout, folds)
    if cfg.val_data is None and not cfg.val_split > 0:
        raise ConfigError("tune: each trial is scored on the validation split, but val_split is 0 and there is no "
                          "val_data; set val_split (e.g. 0.2) or val_data.")
    if cfg.unlabeled_data is not None:
        raise ConfigError("tune: unlabeled_data (self-training) trains several models per run; search the recipe "
                          "without it, then train the best with it.")
    if space is not None:
        space.check(cfg)
    from tlkeras.preflight import check_run

    check_run(cfg)
    output_dir = cfg.output_dir or os.path.join("runs", f"tune-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(output_dir, exist_ok=True)
    from tlkeras import rundir

    with rundir.lock(output_dir):  # one search per folder: a trial left running in its own study died with its process
        return _Search(cfg, space, output_dir, storage, verbose, folds).run(n_trials, timeout, train_best)


def check_stopping(n_trials: Optional[int], timeout: Optional[float], folds: Optional[int]) -> None:
    """When a search stops and how it scores, checked before any work (one line each).

    >>> check_stopping(0, None, None)
    Traceback (most recent call last):
    ...
    tlkeras.errors.ConfigError: n_trials: 0 is not valid: use a whole number of trials, at least 1.
    """
    if n_trials is None and timeout is None:
        raise ConfigError("tune: say when to stop: n_trials (--trials N) or timeout (--minutes M).")
    if n_trials is not None and (not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1):
        raise ConfigError(f"n_trials: {n_trials!r} is not valid: use a whole number of trials, at least 1.")
    if folds is not None and (not isinstance(folds, int) or isinstance(folds, bool) or folds < 2):
        raise ConfigError(f"folds: {folds!r} is not valid: use 2 or more (5 is usual), or leave it out to score on "
                          "the validation split.")
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"timeout: {timeout!r} is not valid: use a number of seconds above 0.")


class _Search:
    """One search: the data, the model and the caches, built once; the study; the trials."""

    def __init__(self, cfg: FinetuneConfig, space: Optional[SearchSpace], output_dir: str, storage: Optional[str],
                 verbose, folds: Optional[int] = None):
        self.cfg, self.space, self.output_dir, self.verbose = cfg, space, output_dir, verbose
        self.storage_url = storage or f"sqlite:///{os.path.abspath(os.path.join(output_dir, TUNE_DB))}"
        self.own_storage = storage is None  # the folder's own study, which only this (locked) process works on
        self.folds = folds
        self.log = get_logger()
        self.timings: dict = {}

    # === Set-up: what every trial shares ===

    def _prepare(self) -> None:
        import keras

        from tlkeras import backbones
        from tlkeras.config import with_backbone_defaults
        from tlkeras.distribute import resolve_strategy
        from tlkeras.inputs import inputs_for
        from tlkeras.training.parts import SharedCaches
        from tlkeras.workflow import _build, _distributed_settings, _load_data, _Run

        clock = time.time()
        cfg = self.cfg
        strategy, why = resolve_strategy(cfg.strategy, cfg.tpu)
        keras.utils.set_random_seed(cfg.seed)
        spec = backbones.resolve(cfg.backbone, cfg.backbone_options)
        cfg = with_backbone_defaults(cfg, spec)
        spec.check_weights(cfg.weights)
        kind = inputs_for(spec, cfg)
        image_size = kind.size(spec, cfg.image_size)
        self.base = cfg
        self.replicas = int(strategy.num_replicas_in_sync)
        self.run = _Run(cfg, _distributed_settings(cfg, self.replicas), spec, kind, image_size, self.output_dir,
                        self.output_dir, strategy, clock, self.verbose, [])
        self.bundle, _ = _load_data(self.run)
        self.space = self.space or default_space(self.bundle.task, kind.name)
        self.space.check(cfg)
        # A head whose dropout is searched has its Dropout layer (at rate 0 it passes its inputs as they are)
        build_cfg = cfg
        if "head.dropout" in self.space.keys() and not cfg.head.dropout:
            build_cfg = cfg.merged({"head": {"dropout": 0.5}})
        self.model = _build(dataclasses.replace(self.run, cfg=build_cfg), self.bundle)
        self.space.check_against(self.model, cfg)  # unfreeze names and blocks the backbone has, before any trial
        self.pretrained = [w.copy() for w in self.model.get_weights()]
        self.momenta = _batch_norm_momenta(self.model)
        budget = int(cfg.memory_budget_mb * 2**20)
        bundles = self._bundles()
        self.splits = [(bundle, SharedCaches(self.model, bundle.train, bundle.val, budget // len(bundles)))
                       for bundle in bundles]
        self.timings["prepare"] = round(time.time() - clock, 3)
        self.log.info("tune: searching %s", self.space.describe())

    def _bundles(self) -> list:
        """The data every trial trains and is scored on: the validation split; or, with `folds`, K stratified folds
        of the training split (each trained on the others, scored on itself), the validation split left for the
        best settings' final run."""
        if not self.folds:
            return [self.bundle]
        from tlkeras.tasks.labels import k_folds

        train = self.bundle.train_examples
        folds = k_folds(self.bundle.task.strata(train.labels), self.folds, self.cfg.seed)
        self.log.info("tune: %d folds of the %d training examples (%s each), the validation split kept for the "
                      "best settings' run", self.folds, len(folds), "/".join(str(n) for n in np.bincount(folds)))
        out = []
        for index in range(self.folds):
            fold_train, fold_val = train.split(np.flatnonzero(folds != index), np.flatnonzero(folds == index))
            out.append(self.run.kind.with_split(self.bundle, fold_train, fold_val, self.run.train_cfg,
                                                self.run.image_size))
        return out

    # === The study ===

    def _study(self):
        import optuna

        from tlkeras.tuning.study import open_study

        sampler = optuna.samplers.TPESampler(seed=self.cfg.seed)
        pruner = optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS,
                                             n_warmup_steps=PRUNER_WARMUP_EPOCHS)
        return open_study(self.storage_url, STUDY_NAME, self._fingerprint(), sampler, pruner,
                          heartbeat=HEARTBEAT_SECONDS, grace=GRACE_SECONDS)

    def _fingerprint(self) -> str:
        """What makes two searches the same study: the base config (without where its files go), the space and the
        folds."""
        base = {k: v for k, v in self.cfg.to_dict().items() if k not in ("output_dir",)}
        space = self.space.to_dict() if self.space is not None else "default"
        text = json.dumps({"config": base, "space": space, "folds": self.folds}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def run(self, n_trials: Optional[int], timeout: Optional[float], train_best: bool) -> TuneResult:
        import optuna

        study = self._study()  # before any TensorFlow work: a study of another config is refused here
        if self.own_storage:
            _rerun_interrupted(study, self.log)
        self._prepare()
        callbacks = []
        if n_trials is not None:
            done = _finished(study)
            self.log.info("tune: %d of %d trials finished before%s", done, n_trials,
                          "" if not done else " (going on with the same study)")
            callbacks.append(optuna.study.MaxTrialsCallback(
                n_trials, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)))
        clock = time.time()
        try:
            if n_trials is None or _finished(study) < n_trials:
                study.optimize(self._objective, timeout=timeout, callbacks=callbacks, catch=(ArithmeticError,),
                               gc_after_trial=True)
        finally:
            for _, caches in self.splits:
                caches.release()
        self.timings["search"] = round(time.time() - clock, 3)
        return self._finish(study, train_best)

    # === A trial ===

    def _objective(self, trial) -> float:
        import keras

        from tlkeras.workflow import _distributed_settings, _restore_best, _train

        clock = time.time()
        params = {d.key: d.suggest(trial) for d in self.space.dimensions}
        cfg = self.base.merged(nested(params))
        directory = os.path.join(self.output_dir, "trials", f"{trial.number:04d}")
        os.makedirs(directory, exist_ok=True)
        self.model.set_weights(self.pretrained)  # the pretrained backbone and the same fresh head, bit for bit
        _set_batch_norm_momenta(self.model, self.momenta)
        _set_head_dropout(self.model, cfg.head.dropout)
        keras.utils.set_random_seed(cfg.seed)  # every trial the same batch order and the same draws
        run = dataclasses.replace(self.run, cfg=cfg, train_cfg=_distributed_settings(cfg, self.replicas),
                                  run_dir=directory, chief_dir=directory, timings={})
        passes = sum(caches.passes for _, caches in self.splits)
        scores, epochs = [], []
        for index, (bundle, caches) in enumerate(self.splits):  # the validation split, or each fold
            where = directory if len(self.splits) == 1 else os.path.join(directory, f"fold-{index + 1}")
            if index:  # each fold from the pretrained weights too
                self.model.set_weights(self.pretrained)
                keras.utils.set_random_seed(cfg.seed)
            fold = dataclasses.replace(run, run_dir=where, chief_dir=where, caches=caches)
            # The pruner watches the first split's epochs: the later folds' curves would restart its steps
            reporter = [_reporter(trial, bundle.task)] if index == 0 else []
            with _quiet(self.log):  # each trial's stage lines: the trial's own line below says what it did
                history, budget, _ = _train(fold, self.model, bundle, where, False, callbacks=reporter,
                                            keep_cached_validation=True)
                epoch = _restore_best(self.model, history, where, bundle.val_count) if cfg.restore_best else None
                scores.append(self._score(cfg, history, bundle)[0])
            epochs.append(epoch)
        value = float(np.mean(scores))
        if len(scores) > 1:
            trial.set_user_attr("fold_scores", [round(s, 6) for s in scores])
        trial.set_user_attr("epochs", int(len(history.get("epoch") or [])))
        trial.set_user_attr("best_epoch", epochs[0] if len(epochs) == 1 else None)
        trial.set_user_attr("backbone_passes", sum(caches.passes for _, caches in self.splits) - passes)
        trial.set_user_attr("seconds", round(time.time() - clock, 3))
        self.log.info("tune: trial %d: %s %.4f in %.1f s (%s)", trial.number, self.bundle.task.headline_name, value,
                      time.time() - clock, ", ".join(f"{k} {_shown(v)}" for k, v in params.items()))
        return value

    def _score(self, cfg, history, bundle) -> tuple[float, dict]:
        """The Task's headline metric on `bundle`'s validation split (thresholds chosen as a run chooses them)."""
        from tlkeras.evaluate import predict_probabilities

        task, names = bundle.task, bundle.class_names
        cached, history.cached_validation = history.cached_validation, None
        if cached is not None:
            probabilities, labels = predict_probabilities(self.model, cached.data, part=cached.model)
        else:
            probabilities, labels = predict_probabilities(self.model, bundle.val)
        decision = task.choose_decision(probabilities, labels, cfg.threshold, names)
        metrics = task.metrics(probabilities, labels, names, top_k=cfg.top_k, decision=decision)
        value = metrics.get(task.headline_key)
        if value is None:
            raise ArithmeticError(f"no {task.headline_name} on the validation split")
        return float(value), metrics

    # === Outputs ===

    def _finish(self, study, train_best: bool) -> TuneResult:
        import optuna

        from tlkeras.atomic import write_json_atomic, write_text_atomic

        trials = [_trial_row(t, self.space) for t in study.get_trials(deepcopy=False)]
        write_text_atomic(os.path.join(self.output_dir, TRIALS_FILE), _csv(trials, self.space.keys()))
        complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            raise ConfigError("tune: no trial finished (each was pruned or failed: trials.csv says why); give more "
                              "trials or time.")
        best = study.best_trial
        best_cfg = self.cfg.merged({**nested(best.params),
                                    "output_dir": os.path.join(self.output_dir, "best")})
        best_path = os.path.join(self.output_dir, BEST_FILE)
        header = (f"# tlkeras tune: trial {best.number} of {len(trials)}, validation "
                  f"{self.bundle.task.headline_name} {best.value:.4f}\n# searched: {self.space.describe()}\n"
                  f"# run it: tlkeras train --config {best_path}\n")
        write_text_atomic(best_path, header + best_cfg.to_yaml())
        from tlkeras.tuning.report import importances, write_tune_report

        found = importances(study)
        summary = {"best": {"trial": best.number, "value": best.value, "params": best.params},
                   "metric": self.bundle.task.headline_key, "space": self.space.to_dict(), "storage": self.storage_url,
                   "importances": found, "trials": trials, "timings": self.timings,
                   "backbone_passes": sum(t.get("backbone_passes") or 0 for t in trials)}
        write_json_atomic(os.path.join(self.output_dir, SUMMARY_FILE), summary)
        if self.cfg.report:
            write_tune_report(self.output_dir, trials, self.space.keys(), self.bundle.task.headline_key, found,
                              summary)
        self.log.info("tune: best trial %d, validation %s %.4f: %s; its config: %s", best.number,
                      self.bundle.task.headline_name, best.value,
                      ", ".join(f"{k} {_shown(v)}" for k, v in best.params.items()), best_path)
        trained = None
        if train_best:
            from tlkeras.workflow import build_and_finetune

            trained = build_and_finetune(config=best_cfg, verbose=self.verbose, overwrite=True)
        return TuneResult(best_params=dict(best.params), best_value=float(best.value), best_trial=best.number,
                          metric=self.bundle.task.headline_key, trials=trials, output_dir=self.output_dir,
                          best_config=best_path, storage=self.storage_url, trained=trained, timings=self.timings)


def _reporter(trial, task):
    """A Keras callback reporting each epoch's validation loss to the trial (as minus the loss: the study maximises)
    and stopping a trial the pruner says is behind. The loss, whatever the Task's headline: on few validation
    examples an accuracy moves in steps and ties (every trial at 1.0 on an easy split), the loss tells them apart."""
    import keras
    import optuna

    class Reporter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get("val_loss")
            if value is None or not np.isfinite(value):
                return
            trial.report(-float(value), step=int(epoch) + 1)
            if trial.should_prune():
                trial.set_user_attr("fail_reason", f"pruned at epoch {epoch + 1}: val_loss {float(value):.4f}")
                raise optuna.TrialPruned(f"epoch {epoch + 1}: val_loss {float(value):.4f} is behind the median")

    return Reporter()


def _rerun_interrupted(study, log) -> None:
    """Trials still marked running in the folder's own study belong to a search that was killed (the folder's lock
    says no other process works on it): each is marked failed and its settings queued to run first. (A shared
    storage leaves that to the heartbeat: a trial silent for GRACE_SECONDS is failed and run again.)"""
    import optuna

    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_system_attr(trial._trial_id, "fail_reason", "interrupted: run again")
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number}, skip_if_exists=False)
        log.info("tune: trial %d was interrupted; its settings run again first", trial.number)


@contextlib.contextmanager
def _quiet(log):
    """tlkeras's INFO lines and TensorFlow's retracing warnings (every trial compiles its stages anew) held back."""
    import logging

    tf_log = logging.getLogger("tensorflow")
    levels = log.level, tf_log.level
    if log.getEffectiveLevel() < logging.WARNING:
        log.setLevel(logging.WARNING)
    tf_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(levels[0])
        tf_log.setLevel(levels[1])


def _finished(study) -> int:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _trial_row(trial, space: SearchSpace) -> dict:
    started, ended = trial.datetime_start, trial.datetime_complete
    complete = trial.state.name == "COMPLETE"
    return {"number": trial.number, "state": trial.state.name.lower(),
            "value": trial.value if complete else None,  # a pruned trial's last report is not its score
            **{key: trial.params.get(key) for key in space.keys()},
            "epochs": trial.user_attrs.get("epochs"), "best_epoch": trial.user_attrs.get("best_epoch"),
            "backbone_passes": trial.user_attrs.get("backbone_passes"),
            "seconds": trial.user_attrs.get("seconds") or (
                round((ended - started).total_seconds(), 3) if started and ended else None),
            "reason": trial.user_attrs.get("fail_reason") or trial.system_attrs.get("fail_reason")}


def _csv(rows: list, keys: list) -> str:
    columns = ["number", "state", "value", *keys, "epochs", "best_epoch", "backbone_passes", "seconds", "reason"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _shown(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _batch_norm_momenta(model) -> dict:
    """{layer id: momentum} of the backbone's BatchNormalization layers, whose momentum a stage 2 with `train_bn` and
    `bn_momentum` sets (`tlkeras.freezing`): put back before each trial."""
    from tlkeras import freezing

    return {id(layer): layer.momentum for layer in freezing.backbone_layers(model) if freezing.is_batch_norm(layer)}


def _set_batch_norm_momenta(model, momenta: dict) -> None:
    from tlkeras import freezing

    for layer in freezing.backbone_layers(model):
        if id(layer) in momenta:
            layer.momentum = momenta[id(layer)]


def _set_head_dropout(model, rate: float) -> None:
    from tlkeras.heads import set_head_dropout

    set_head_dropout(model, rate)
