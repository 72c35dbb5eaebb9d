"""build_and_finetune: config -> data -> model -> two stages -> metrics -> export. Nothing else."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import keras
import tensorflow as tf

from tlkeras import backbones, rundir
from tlkeras._logging import get_logger
from tlkeras.config import FinetuneConfig, resolve_config, with_backbone_defaults
from tlkeras.inputs import inputs_for
from tlkeras.distribute import is_multi_worker, strategy_name, precision_policy, resolve_precision, resolve_strategy, worker_role
from tlkeras.evaluate import predict_probabilities
from tlkeras.errors import TrainingError
from tlkeras.export import export_saved_model
from tlkeras.methods import get_method
from tlkeras.model import build_model, set_decision
from tlkeras.preflight import check_run
from tlkeras.backbones.candidates import is_auto
from tlkeras.ranking.choose import choose_backbone, load_ranking
from tlkeras.mixing import Mixing
from tlkeras.training import check_stages, finetune as _finetune
from tlkeras.training.budget import resolve_budget, steps_per_epoch
from tlkeras.training.parts import count_steps
from tlkeras.runrecord import RUN_FILE, build_record, card_facts
from tlkeras.atomic import atomic_path, write_json_atomic, write_text_atomic

# What the weights=None warning tells a user who wants to train from scratch: the demo's scratch stage
from tlkeras.runtime import fewer_full_collections
# (tlkeras.demo._scratch_stage) as CLI flags; tests/test_edges.py runs them and checks that they learn.
FROM_SCRATCH_FLAGS = ("--set stage1.epochs=0 --set stage2.unfreeze=all --set stage2.train_bn=true "
                      "--set stage2.bn_momentum=0.9 --set stage2.layer_decay=null --set stage2.schedule=constant "
                      "--set stage2.warmup_epochs=0 --set stage2.learning_rate=0.002")

# How many validation images the export is checked with.
EXPORT_CHECK_IMAGES = 16


@dataclass
class FinetuneResult:
    """What a run produced.

    Attributes:
        model: the trained keras.Model; its pretrained base is the nested layer "backbone".
        history: per-epoch metrics of both stages: {"epoch", "stage", "loss", "accuracy", ...}.
        metrics: final validation metrics (see `tlkeras.metrics`): accuracy, top-k accuracy, loss,
            per-class precision/recall/F1/support, averages, confusion matrix, ECE, ROC-AUC, PR-AUC.
        class_names: class names in label order.
        run_dir: the run directory (config.yaml, history.json, metrics.json, labels.txt, model.keras, ...).
        export_dir: the SavedModel version folder, or None when export=False.
        config: the resolved FinetuneConfig.
        skipped_files: (path, reason) of files that could not be decoded.
        timings: wall seconds of each step: data, build, stage1, stage2, evaluate, export.
    """

    model: keras.Model
    history: dict
    metrics: dict
    class_names: list[str]
    run_dir: str
    export_dir: Optional[str]
    config: FinetuneConfig
    skipped_files: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    @property
    def inputs(self):
        """The model's Inputs kind (`tlkeras.inputs`): what it takes (images, texts) and how it is served."""
        from tlkeras.model import inputs_of

        return inputs_of(self.model)

    @property
    def task(self):
        """The model's Task (`tlkeras.tasks`): single-label or multi-label classification."""
        from tlkeras.model import task_of

        return task_of(self.model)


def build_and_finetune(data: Any = None, *, config: FinetuneConfig | str | None = None, **options) -> FinetuneResult:
    """Fine-tune a pretrained backbone on your data in two stages and export it for TF Serving.

    Args:
        data: a folder with one subfolder per class, an (images, labels) pair of arrays
            (pixels in [0, 255]), a tf.data.Dataset of (image, label), or "tfds:NAME[:SPLIT]".
        config: a FinetuneConfig or a path to a YAML config; `options` override it.
        **options: any FinetuneConfig key: backbone="efficientnetb0", weights="imagenet"
            ("imagenet" | None | path to a weights file), val_data=None, val_split=0.2,
            image_size=None (the backbone's own), batch_size=32,
            head={"hidden_units": [], "dropout": 0.2, "l2": 0.0, "pooling": "avg"},
            stage1={"epochs": "auto", "learning_rate": 1e-2},
            stage2={"epochs": "auto", "learning_rate": None (stage 1's / 3), "unfreeze": "all"},
            augment=None (e.g. {"flip": "horizontal", "rotation": 0.1, "zoom": 0.1}),
            class_weight=None ("balanced"), unlabeled_data=None (self-training on it, see
            `tlkeras.self_training`), self_training={"rounds": 1, "threshold": 0.9, "cap": 5},
            output_dir=None (runs/<backbone>-<time>), seed=0,
            export=True, top_k=5, backbone_options={}, class_names=None, cache_images="auto".
            Not config keys: verbose (Keras's fit verbosity), callbacks (extra Keras callbacks for
            both stages), resume (go on from the last finished epoch in output_dir, with the config
            saved there as the base), overwrite (replace the run in output_dir).

    A run whose output_dir holds an unfinished run of the same config goes on from its last
    finished epoch (kill -9 included); a different config there is refused (see
    `tlkeras.rundir.prepare`). Ctrl-C stops after saving, with a message saying how to resume.

    Returns:
        FinetuneResult with .model, .history, .metrics, .class_names, .run_dir, .export_dir.

    Example:

    >>> import numpy as np, tempfile, tlkeras
    >>> rng = np.random.default_rng(0)
    >>> x = rng.integers(0, 255, (24, 16, 16, 3)).astype("uint8")
    >>> y = np.array(["cat", "dog"] * 12)
    >>> result = tlkeras.build_and_finetune(
    ...     (x, y), backbone="mobilenetv2", weights=None, image_size=32,
    ...     backbone_options={"alpha": 0.35}, batch_size=8,
    ...     stage1={"epochs": 1}, stage2={"epochs": 1, "unfreeze": "blocks:1"},
    ...     output_dir=tempfile.mkdtemp(), verbose=0)
    >>> result.class_names, result.history["stage"]
    (['cat', 'dog'], [1, 2])
    >>> os.path.basename(result.export_dir)
    '1'
    """
    verbose = options.pop("verbose", "auto")
    extra_callbacks = list(options.pop("callbacks", None) or [])
    resume, overwrite = bool(options.pop("resume", False)), bool(options.pop("overwrite", False))
    started = time.time()
    if resume and config is None:
        config = rundir.saved_config(options.get("output_dir"))
    cfg = resolve_config(config, data, options)
    check_run(cfg, resume=resume)  # names and paths, before any TensorFlow work
    log = get_logger()
    method = get_method(cfg.stage2.method)  # how stage 2 trains the backbone
    for line in ([] if resume else method.warnings(cfg.stage2, cfg.given_keys())):
        log.warning("%s", line)
    ranking = None
    if is_auto(cfg.backbone):  # candidates: rank them on the data, train the winner
        cfg, ranking = choose_backbone(cfg, overwrite=overwrite)
    # First TensorFlow work of the run: multi-worker collectives must be set up before anything else.
    strategy, why = resolve_strategy(cfg.strategy, cfg.tpu)
    replicas = int(strategy.num_replicas_in_sync)
    chief, task = worker_role(strategy)
    log.info("strategy: %s with %d replica(s) in sync (%s)", strategy_name(strategy), replicas, why)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()  # process-wide; ops without a deterministic kernel raise

    spec = backbones.resolve(cfg.backbone, cfg.backbone_options)
    cfg = with_backbone_defaults(cfg, spec)
    train_cfg = _distributed_settings(cfg, replicas)
    if cfg.weights is None and cfg.stage1.runs and spec.random_init:
        log.warning(
            "weights: null (random initialisation): the backbone starts from random weights, so stage 1 trains the "
            "head on random "
            "features. To train from scratch (the demo's recipe for its baseline: every layer and its "
            "BatchNormalization at one constant rate): %s", FROM_SCRATCH_FLAGS)
    spec.check_weights(cfg.weights)
    kind = inputs_for(spec, cfg)  # what the model takes: images, texts or text pairs
    kind.check_tta(cfg.tta)
    image_size = kind.size(spec, cfg.image_size)
    run_dir = cfg.output_dir or os.path.join("runs", f"{spec.slug}-{time.strftime('%Y%m%d-%H%M%S')}")
    chief_dir = run_dir
    if not chief:  # every worker runs the same steps and saves; only the chief into the run directory
        run_dir = rundir.worker_dir(run_dir, task)
        log.info("%s is not the chief: its files go to %s (removed at the end)", task, run_dir)
    created = not os.path.isdir(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    try:
        with rundir.lock(run_dir), fewer_full_collections():  # one run per directory, released however it ends
            run = _Run(cfg, train_cfg, spec, kind, image_size, run_dir, chief_dir, strategy, started, verbose,
                       extra_callbacks, ranking)
            return _run(run, resume=resume, overwrite=overwrite)
    except BaseException:
        if created and os.path.isdir(run_dir) and not os.listdir(run_dir):
            os.rmdir(run_dir)  # refused before anything was written: leave nothing behind
        raise


@dataclass
class _Run:
    """What every step of a run shares, from the run directory on: the resolved config (and the one training uses,
    with distributed settings), the backbone spec, the Inputs kind, the image size, where files go, the strategy,
    and the wall time of each step so far."""

    cfg: FinetuneConfig
    train_cfg: FinetuneConfig
    spec: Any
    kind: Any
    image_size: Any
    run_dir: str
    chief_dir: str
    strategy: Any
    started: float
    verbose: Any
    callbacks: list
    ranking: Any = None
    timings: dict = field(default_factory=dict)
    input_facts: dict = field(default_factory=dict)  # what the Inputs kind says of the data (run.json's "inputs")
    settled_at: float = 0.0  # when training ended: the "evaluate" step's clock starts there
    caches: Any = None  # frozen outputs shared with other runs on this model and data (a search's trials), or None

    @property
    def chief(self) -> bool:
        return worker_role(self.strategy)[0]


@dataclass
class _Evaluation:
    """The trained model's answers on the evaluated split, and what was made of them."""

    split: str
    examples: Any
    probabilities: Any
    labels: Any
    metrics: dict


def _run(run: _Run, *, resume: bool, overwrite: bool) -> FinetuneResult:
    """build_and_finetune from the run directory on, holding its lock: the plan."""
    resuming = _prepare_directory(run, resume, overwrite)
    bundle, unlabeled = _load_data(run)
    clock = time.time()
    model = _build(run, bundle)
    run.timings["build"] = time.time() - clock
    _check_and_write_inputs(run, model, bundle)
    model, history, budget, rounds = _train_all(run, model, bundle, unlabeled, resuming)
    epoch, kept_round, finished = _settle(run, model, history, bundle, rounds)
    evaluation = _evaluate(run, model, history, bundle, epoch)
    record = _record(run, bundle, history, budget, evaluation, unlabeled, rounds, epoch, kept_round, finished)
    if run.cfg.report:
        _write_report(run.run_dir, history, evaluation.metrics, evaluation.probabilities, evaluation.labels,
                      bundle.class_names, run.kind.pictures(evaluation.examples, run.image_size), evaluation.examples,
                      run.cfg, record, bundle.task)
    export_dir = _export(run, model, bundle, record, evaluation.metrics)
    run_dir = run.run_dir
    if not run.chief:
        shutil.rmtree(run.run_dir, ignore_errors=True)
        run_dir, export_dir = run.chief_dir, None
    return FinetuneResult(
        model=model, history=history, metrics=evaluation.metrics, class_names=bundle.class_names, run_dir=run_dir,
        export_dir=export_dir, config=run.cfg, skipped_files=bundle.skipped, timings=run.timings,
    )


def _prepare_directory(run: _Run, resume: bool, overwrite: bool) -> bool:
    """Claim the run directory (a new run, or going on from its state); keep the ranking the backbone was chosen by;
    on a cluster, check that the workers go on from the same epoch. Whether the run resumes."""
    log = get_logger()
    # A worker's own folder without a resume state holds nothing worth keeping: start it afresh.
    stale_worker_dir = not run.chief and not resume and not rundir.has_state(run.run_dir)
    resuming = rundir.prepare(run.run_dir, run.cfg, resume=resume, overwrite=overwrite or stale_worker_dir)
    log.info("run directory: %s%s", run.run_dir, " (resuming)" if resuming else "")
    if run.ranking is not None:
        run.ranking.write(run.run_dir)
    else:  # a resumed run keeps the ranking its backbone was chosen by
        saved = load_ranking(run.run_dir)
        run.ranking = saved if saved and (saved.recommended or {}).get("backbone") == run.cfg.backbone else None
    if not run.chief:  # a worker's own temp folder: its config goes in at once, tying its saved state to this run
        rundir.write_config(os.path.join(run.run_dir, rundir.CONFIG_FILE), run.cfg)
    if is_multi_worker(run.strategy):
        _check_workers_agree(run.strategy, run.run_dir, resuming)
    return resuming


def _load_data(run: _Run):
    """(the Inputs kind's DataBundle, the unlabelled examples or None), logged; what `augment: auto` chose."""
    log, cfg, kind = get_logger(), run.cfg, run.kind
    clock = time.time()
    with run.strategy.scope():  # pipelines for a TPU keep one batch shape (drop_remainder)
        bundle = kind.make_datasets(run.train_cfg, run.image_size)
    task = bundle.task
    log.info(
        "data: %d training and %d validation %s, %d %s%s%s",
        bundle.train_count, bundle.val_count, kind.noun, len(bundle.class_names),
        task.names_noun[len(bundle.class_names) != 1],
        f" ({task.description})" if task.qualifier else "",
        f", {len(bundle.skipped)} file(s) skipped (see skipped_files.txt)" if bundle.skipped else "",
    )
    if cfg.augment.preset == "auto":
        chosen = cfg.augment_for(kind.name, task.name)
        picked = {k: getattr(chosen, k) for k in ("feature_mixup", "mixup", "cutmix") if getattr(chosen, k)}
        measured = cfg.augment.resolved(kind.name, task.name)
        log.info("augment: auto: %s (%s; augment: none turns it off, any op given replaces it)",
                 ", ".join(f"{k} {v:g}" for k, v in picked.items()) if picked else
                 f"nothing for {task.description} of {kind.noun}",
                 "what the few-labels benchmark measured to pay, benchmarks/RESULTS.md" if picked else
                 "it was measured to pay with the stages' epochs auto, and they are set here" if measured.given else
                 "no augmentation measured to pay for them yet")
    unlabeled = _load_unlabeled(cfg, kind, bundle, run.image_size)
    run.timings["data"] = time.time() - clock
    return bundle, unlabeled


def _build(run: _Run, bundle, offset: int = 0):
    """The model, from the seed: self-training's teacher (offset 0) is the model a labelled-only run trains; each
    later round's model, the student included, starts from the next seed (not the teacher's copy)."""
    keras.utils.set_random_seed((run.cfg.seed + offset) % 2**32)
    with precision_policy(resolve_precision(run.cfg.mixed_precision)), run.strategy.scope():
        return build_model(
            run.spec, len(bundle.class_names), image_size=run.image_size, weights=run.cfg.weights,
            head=run.cfg.head, backbone_options=run.cfg.backbone_options, task=bundle.task.name,
            class_names=bundle.class_names, input_options=run.kind.input_options(run.cfg), inputs=run.kind.name,
            task_options=bundle.task_options,
        )


def _check_and_write_inputs(run: _Run, model, bundle) -> None:
    """What can be checked without training is checked before the run directory is written (the stages against
    this model); then the config, the labels and the skipped files go in."""
    resolved = _budgeted(run.train_cfg, bundle, quiet=True)[0]
    check_stages(model, resolved.stage1, resolved.stage2)
    run.input_facts = run.kind.data_facts(model, bundle)  # logged by the kind, kept in run.json
    rundir.write_config(os.path.join(run.run_dir, rundir.CONFIG_FILE), run.cfg)
    write_text_atomic(os.path.join(run.run_dir, rundir.LABELS_FILE), "\n".join(bundle.class_names) + "\n")
    if bundle.skipped:
        write_text_atomic(
            os.path.join(run.run_dir, "skipped_files.txt"),
            "".join(f"{path}\t{reason}\n" for path, reason in bundle.skipped),
        )


def _train(run: _Run, model, bundle, directory, resume, callbacks=None, keep_cached_validation=False):
    """Both stages on `bundle` into `directory`, with the epochs its size needs: (history, budget, the epoch put
    back for a self-training teacher or None)."""
    cfg = run.cfg
    stages, budget = _budgeted(run.train_cfg, bundle)
    with run.strategy.scope():  # the parts, optimizers and the stage-2 recompile are created under it
        history = _finetune(
            model, bundle.train, bundle.val, stage1=stages.stage1, stage2=stages.stage2,
            run_dir=directory, class_weight=bundle.class_weight, augmenter=bundle.augmenter,
            mixing=Mixing.from_config(cfg.augment_for(run.kind.name, bundle.task.name), cfg.seed),
            callbacks=run.callbacks if callbacks is None else callbacks, cache_features=cfg.cache_features,
            cache_views=cfg.cache_views, memory_budget_mb=cfg.memory_budget_mb, jit_compile=cfg.jit_compile,
            inputs_random=False,  # the augmenter holds all the randomness
            label_smoothing=cfg.label_smoothing, resume=resume, verbose=run.verbose,
            keep_cached_validation=keep_cached_validation, seed=cfg.seed, rebuild_train=bundle.rebuild_train,
            caches=run.caches,
        )
    evaluated = None
    if directory != run.run_dir and cfg.restore_best:  # a teacher of self-training
        evaluated = _restore_best(model, history, directory, bundle.val_count)
    return history, budget, evaluated


def _train_all(run: _Run, model, bundle, unlabeled, resuming: bool):
    """Self-training's rounds (with unlabeled data), then the run's model: (model, history, budget, rounds)."""
    cfg, kind = run.cfg, run.kind
    callbacks = []
    if cfg.tensorboard:
        from tlkeras.tensorboard import tensorboard_callbacks

        callbacks = tensorboard_callbacks(run.run_dir)
    callbacks += run.callbacks

    def teach(model, bundle, directory, resume):  # a round of self-training: its validation accuracy
        history, _, evaluated = _train(run, model, bundle, directory, resume)
        return _val_accuracy(history, evaluated)

    try:
        rounds, train_bundle = None, bundle
        if unlabeled is not None:  # run.json's data stays the labelled data; self_training says what joined it
            from tlkeras import self_training as st

            del model  # each round, and the student, start from the pretrained weights
            train_bundle, rounds = st.run_rounds(
                cfg.self_training, bundle=bundle, unlabeled=unlabeled, class_names=bundle.class_names,
                run_dir=run.run_dir, resuming=resuming, build=lambda offset=0: _build(run, bundle, offset),
                train=teach,
                predict=lambda m, examples: predict_probabilities(
                    m, kind.evaluation_pipeline(examples, m, run.train_cfg.batch_size))[0],
                with_training=lambda b, examples: kind.with_training(b, examples, run.train_cfg, run.image_size))
            model = _build(run, bundle, cfg.self_training.rounds)
        history, budget, _ = _train(run, model, train_bundle, run.run_dir, resuming, callbacks,
                                    keep_cached_validation=True)
    except tf.errors.UnavailableError as e:
        raise TrainingError(
            "lost contact with a worker of the cluster (tf.errors.UnavailableError: a peer stopped responding; "
            "--debug shows TensorFlow's message). Restart every worker with the same command: each goes on from the "
            "last finished epoch (checkpoints/resume.npz)."
        ) from e
    except tf.errors.ResourceExhaustedError as e:
        raise TrainingError(
            f"out of memory while training ({e.message.strip().splitlines()[0][:120]}): use a smaller batch_size "
            f"(now {cfg.batch_size}){_size_hint(run.image_size)}, mixed_precision: "
            "mixed_float16 on a GPU, or a lower stage2.unfreeze (fewer layers hold activations for the backward pass)."
        ) from None
    run.timings.update(history.stage_seconds)
    return model, history, budget, rounds


def _settle(run: _Run, model, history, bundle, rounds):
    """Which weights the run keeps: the best epoch's (restore_best), an earlier self-training round's when it beat
    the student, and what the stage-2 method does at the end (LoRA folds its adapters). (the evaluated epoch or
    None, the kept round or None, the method's record or None)."""
    run.settled_at = time.time()
    epoch = _restore_best(model, history, run.run_dir, bundle.val_count) if run.cfg.restore_best else None
    kept_round = _keep_the_better(model, rounds, history, epoch, run.run_dir)
    if kept_round is not None:
        epoch = None
        history.cached_validation = None  # the student's; the kept model is evaluated on the pipeline
    finished = get_method(run.cfg.stage2.method).finish(model, run.run_dir)  # before model.keras and the exports
    return epoch, kept_round, finished


def _evaluate(run: _Run, model, history, bundle, epoch) -> _Evaluation:
    """The Task's decision and metrics on the validation split (else the training data), with TTA beside them when
    asked; metrics.json and model.keras written; a model no better than guessing called so."""
    log, cfg, kind, task, class_names = get_logger(), run.cfg, run.kind, bundle.task, bundle.class_names
    eval_ds, split = (bundle.val, "val") if bundle.val is not None else (bundle.train, "train")
    examples = bundle.val_examples if split == "val" else bundle.train_examples
    cached, history.cached_validation = history.cached_validation, None  # held no longer than needed
    if cached is not None and split == "val":  # the frozen layers' outputs are cached: not run again
        log.info("evaluation: the frozen layers' outputs for the validation %s are cached; not run again", kind.noun)
        probabilities, labels = predict_probabilities(model, cached.data, part=cached.model)
    else:
        probabilities, labels = predict_probabilities(model, eval_ds)
    del cached
    decision = task.choose_decision(probabilities, labels, cfg.threshold, class_names)
    if decision is not None:
        set_decision(model, decision)
        log.info("decision: thresholds %s (%s)", ", ".join(f"{n} {t:.3f}" for n, t in
                                                          zip(class_names, decision["thresholds"])), decision["chosen"])
    metrics = {"split": split, **task.metrics(probabilities, labels, class_names, top_k=cfg.top_k,
                                              decision=decision)}
    if cfg.tta != "none":  # the same model, each input averaged with its views: what TTA gains, beside the plain
        tta_probabilities, _ = predict_probabilities(model, eval_ds, views=kind.tta_views(cfg.tta))
        with_tta = task.metrics(tta_probabilities, labels, class_names, top_k=cfg.top_k, decision=decision)
        metrics["tta"] = {"views": cfg.tta, **{k: with_tta[k] for k in (task.headline_key, "loss") if k in with_tta}}
        log.info("tta %s: %s %s %.4f -> %.4f with the views averaged", cfg.tta, split, task.headline_name,
                 metrics.get(task.headline_key, float("nan")), with_tta.get(task.headline_key, float("nan")))
    if history.get("epoch"):  # whose weights these are: the best epoch's (restore_best) or the last one's
        metrics["epoch"] = epoch or history["epoch"][-1]
        metrics["restored_best"] = bool(epoch and epoch != history["epoch"][-1])
    write_json_atomic(os.path.join(run.run_dir, "metrics.json"), metrics)
    save_model_atomic(model, os.path.join(run.run_dir, "model.keras"))
    _warn_at_chance(task, metrics, labels, split, cfg)
    log.info("%s %s %.4f on %d %s", split, task.headline_name, metrics.get(task.headline_key, float("nan")),
             metrics.get("count", 0), kind.noun)
    run.timings["evaluate"] = time.time() - run.settled_at
    return _Evaluation(split, examples, probabilities, labels, metrics)


def _record(run: _Run, bundle, history, budget, evaluation, unlabeled, rounds, epoch, kept_round, finished) -> dict:
    """run.json as the training left it (status "trained": the report and the export are still to do)."""
    cfg = run.cfg
    record = build_record(cfg=cfg, bundle=bundle, run_dir=run.run_dir, timings=run.timings, started=run.started,
                          plan=history.cache_plan, policy=keras.config.dtype_policy().name, strategy=run.strategy)
    if run.input_facts:
        record["inputs"] = run.input_facts
    record["epochs"] = budget.as_record()
    if rounds is not None:
        record["self_training"] = {"unlabeled": len(unlabeled), "rounds": rounds,
                                   "threshold": cfg.self_training.threshold, "cap": cfg.self_training.cap,
                                   "student_val_accuracy": _val_accuracy(history, epoch),
                                   "kept": f"round {kept_round['round']}" if kept_round else "student"}
    if run.ranking is not None:
        record["ranking"] = run.ranking.as_list()
    if finished is not None:
        record[cfg.stage2.method] = finished  # e.g. "lora": the adapters' rank, targets and file
    record["status"] = rundir.TRAINED  # the report and export are still to do: a rerun completes them
    write_json_atomic(os.path.join(run.run_dir, RUN_FILE), record)
    return record


def _export(run: _Run, model, bundle, record: dict, metrics: dict) -> Optional[str]:
    """The SavedModel (checked before it lands), then run.json complete: the version folder, or None."""
    cfg, clock, export_dir = run.cfg, time.time(), None
    if cfg.export:
        examples = bundle.val_examples if bundle.val_examples is not None else bundle.train_examples
        samples = run.kind.export_samples(examples, EXPORT_CHECK_IMAGES, bundle.task)
        export_dir = export_saved_model(
            model, os.path.join(run.run_dir, "export"), bundle.class_names, top_k=cfg.top_k,
            verify_images=samples, card=card_facts(record, metrics), tta=cfg.tta if cfg.export_tta else "none",
        )
        run.timings["export"] = time.time() - clock
    record["seconds"] = {k: round(float(v), 3) for k, v in run.timings.items()}
    if export_dir:
        record["export_dir"] = export_dir
    record["status"] = rundir.COMPLETE  # everything asked for is done
    write_json_atomic(os.path.join(run.run_dir, RUN_FILE), record)
    return export_dir


def _budgeted(train_cfg: FinetuneConfig, bundle, quiet: bool = False):
    """(train_cfg with the stages' epochs resolved for `bundle`'s training data, the `Budget`); the log says what
    "auto" chose and why (`tlkeras.training.budget`)."""
    budget = resolve_budget(train_cfg.stage1, train_cfg.stage2,
                            count_steps(bundle.train) or steps_per_epoch(bundle.train_count, train_cfg.batch_size),
                            examples=bundle.train_count, batch_size=train_cfg.batch_size)
    if budget.reason and not quiet:
        get_logger().info("epochs: %s", budget.reason)
    return train_cfg.merged({"stage1": {"epochs": budget.stage1.epochs},
                             "stage2": {"epochs": budget.stage2.epochs}}), budget


def _val_accuracy(history, epoch: Optional[int]) -> Optional[float]:
    """The validation accuracy of `epoch` (None: the last) in `history`; None without a validation split."""
    epochs, values = history.get("epoch") or [], history.get("val_accuracy")
    if not epochs or not values:
        return None
    value = values[epochs.index(epoch) if epoch in epochs else -1]
    return None if value is None else float(value)


def _keep_the_better(model, rounds, history, evaluated_epoch, run_dir: str):
    """After self-training: put back the weights of an earlier round's model when it beat the student on
    validation (`self_training.better_round`); that round's record entry, or None (the student stays)."""
    if not rounds:
        return None
    from tlkeras.self_training import better_round

    student = _val_accuracy(history, evaluated_epoch)
    better = better_round(rounds, student)
    if better is None:
        return None
    model.load_weights(os.path.join(run_dir, better["weights"]))
    get_logger().warning("self-training: the student's validation accuracy %.4f is below round %d's %.4f (trained "
                         "on %s): the run keeps that model. The pseudo-labels did not help on this data (see "
                         "pseudo_labels.csv); a higher self_training.threshold keeps fewer, surer ones",
                         student, better["round"], better["val_accuracy"],
                         "the labelled data alone" if better["round"] == 1 else "the previous round's pseudo-labels")
    return better


def _load_unlabeled(cfg: FinetuneConfig, kind, bundle, image_size):
    """The unlabelled examples of `unlabeled_data` for self-training, checked (None without any); their undecodable
    files join the bundle's skipped ones."""
    if cfg.unlabeled_data is None:
        return None
    import numpy as np

    from tlkeras.errors import DataError

    if not bundle.task.self_trains:
        raise DataError(f"unlabeled_data: self-training labels one class per example; this is a "
                        f"{bundle.task.description} task. Drop unlabeled_data, or train single-label data.")
    examples, skipped = kind.load_unlabeled(cfg.unlabeled_data, cfg, image_size)
    bundle.skipped.extend(skipped)
    if not len(examples):
        raise DataError(f"unlabeled_data: {_named(cfg.unlabeled_data)} holds no {kind.noun} that can be read.")
    bundle.train_examples.joined(examples.subset(np.zeros(0, np.int64)))  # both stored alike, or said now
    mine = examples.identities()
    for split, labelled in (("training", bundle.train_examples), ("validation", bundle.val_examples)):
        both = sorted(mine & labelled.identities()) if labelled is not None else []
        if both:
            raise DataError(f"unlabeled_data: {len(both)} of its {kind.noun} are also in the {split} data, e.g. "
                            f"{both[0][:80]!r}; unlabelled data must be other {kind.noun} (remove them from "
                            "one of the two).")
    get_logger().info("unlabeled_data: %d %s for self-training (%d round(s); confidence >= %g, at most %g per "
                      "labelled example of a class)", len(examples), kind.noun, cfg.self_training.rounds,
                      cfg.self_training.threshold, cfg.self_training.cap)
    return examples


def _named(source) -> str:
    return repr(source) if isinstance(source, str) else f"the {type(source).__name__} given"


def _restore_best(model, history, run_dir: str, val_count: int) -> Optional[int]:
    """Put back the weights of the run's best epoch over both stages (by the Task's rule, `best_epoch_monitor`: for
    single-label the highest validation accuracy, the loss breaking ties; the training data's without a
    validation split), kept by the run's `BestCheckpoint` (in memory, and in checkpoints/best.weights.h5) - for an
    accuracy, only when it beats the last epoch's by more than the validation examples can tell apart by chance
    (`AccuracyThenLoss.clearly_better`). Returns the epoch whose weights the model holds (None when none ran)."""
    epochs = history.get("epoch") or []
    if not epochs:
        return None
    checkpoint = getattr(history, "best", None)
    monitor = checkpoint.monitor if checkpoint is not None else ("val_loss" if val_count else "loss")
    rows = [{key: values[i] for key, values in history.items()} for i in range(len(epochs))]
    best = checkpoint.epoch if checkpoint is not None else None
    if best is None:  # no finite epoch (or a state written before the checkpoint kept its epoch): the file's
        best = _best_epoch_from_file(model, rows, monitor, run_dir)
        if best is None:
            return epochs[-1]
    elif best == epochs[-1]:
        return best  # the last epoch is the best: nothing to put back
    else:
        chosen, last = rows[epochs.index(best)], rows[-1]
        if callable(monitor) and val_count and not monitor.clearly_better(chosen, last, val_count):
            get_logger().info("restore_best: epoch %d (%s) is not clearly better than the last epoch %d (%s) on %d "
                              "validation examples: the last epoch is kept", best, _shown(monitor, chosen),
                              epochs[-1], _shown(monitor, last), val_count)
            return epochs[-1]
        checkpoint.put_back()
    get_logger().info("restore_best: evaluating and exporting the weights of epoch %d (%s), the best of the run, not "
                      "those of the last epoch %d (%s); restore_best: false keeps the last", best,
                      _shown(monitor, rows[epochs.index(best)]), epochs[-1], _shown(monitor, rows[-1]))
    return best


def _shown(monitor, row: dict) -> str:
    keys = [monitor.accuracy, monitor.loss] if callable(monitor) else [monitor]
    return ", ".join(f"{key} {float('nan') if row.get(key) is None else row[key]:.4g}" for key in keys)


def _best_epoch_from_file(model, rows: list[dict], monitor, run_dir: str) -> Optional[int]:
    """The best epoch by the history, its weights loaded from best.weights.h5; None when there is nothing to load."""
    from tlkeras.training import BEST_WEIGHTS

    scores = [monitor(row) if callable(monitor) else row.get(monitor) for row in rows]
    finite = [(v, i) for i, v in enumerate(scores) if v is not None and v == v]
    path = os.path.join(run_dir, rundir.CHECKPOINT_DIR, BEST_WEIGHTS)
    if not finite or not os.path.isfile(path) or min(finite)[1] == len(rows) - 1:
        return None
    import warnings

    with warnings.catch_warnings():  # only the model's weights matter here; the optimizer's are not used again
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model.load_weights(path)
    return rows[min(finite)[1]]["epoch"]


def _check_workers_agree(strategy, run_dir: str, resuming: bool) -> None:
    """Every worker must start from the same point, or their collectives would not pair up."""
    from tlkeras.distribute import gather_from_workers
    from tlkeras.resume import peek

    state = peek(os.path.join(run_dir, rundir.CHECKPOINT_DIR)) if resuming else None
    mine = [1, *state[:3], int(state[3])] if state else [0, 0, 0, 0, 0]
    rows = gather_from_workers(strategy, mine)
    if any(row != rows[0] for row in rows):
        described = ", ".join("fresh start" if not r[0] else f"stage {r[1]} after epoch {r[3]}" for r in rows)
        raise TrainingError(
            f"the workers would start from different points ({described}): a worker's saved state is missing or "
            "older (was it killed between two saves, or started with --overwrite?). Start all of them again with "
            "--overwrite, or restore the same output_dir on every machine."
        )


def _distributed_settings(cfg: FinetuneConfig, replicas: int) -> FinetuneConfig:
    """The config the data and the stages run with: batch_size is per replica, so the global batch
    is batch_size x replicas; with scale_learning_rate, the rates grow with the replicas too."""
    if replicas == 1:
        return cfg
    values: dict = {"batch_size": cfg.batch_size * replicas}
    log = get_logger()
    log.info("global batch %d = batch_size %d x %d replicas", cfg.batch_size * replicas, cfg.batch_size, replicas)
    if cfg.scale_learning_rate:
        rate1 = cfg.stage1.learning_rate * replicas
        values["stage1"] = {"learning_rate": rate1}
        values["stage2"] = {"learning_rate": cfg.stage2_learning_rate * replicas}
        log.info("scale_learning_rate: rates x %d (stage 1 %g, stage 2 %g)", replicas, rate1,
                 values["stage2"]["learning_rate"])
    return cfg.merged(values)


def save_model_atomic(model: keras.Model, path: str) -> None:
    """model.save() into a temporary file next to `path`, then rename over it."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)


def _warn_at_chance(task, metrics, labels, split, cfg) -> None:
    """Say so when the model is no better than guessing, with the likely causes."""
    found = task.chance(metrics, labels)
    if found is None:
        return
    name, value, guess, how = found
    causes = ["too few epochs", "a learning rate far off (`tlkeras find-lr` suggests one)"]
    if cfg.weights is None:
        causes.insert(0, "random backbone weights (weights: null)")
    get_logger().warning("%s %s %.3f is at chance level (%.3f by %s): the model has not learned %s. Likely causes: "
                         "%s.", split, name, value, guess, how, task.learns, ", ".join(causes))


def _size_hint(image_size) -> str:
    return f" or image_size (now {image_size[0]}x{image_size[1]})" if image_size else ""


def _write_report(run_dir, history, metrics, probabilities, labels, class_names, images_of, examples, cfg, record,
                  task):
    """Plots and report.html; a failure here is logged, never loses the trained run. `images_of(rows)`
    gives the pictures of evaluated examples (None: the inputs have none)."""
    import numpy as np

    from tlkeras.report import write_report

    try:
        if examples is None or not np.array_equal(np.asarray(examples.labels), labels):
            images_of = None  # order unknown: no mistakes grid
        files = write_report(run_dir, history=dict(history), metrics=metrics, probabilities=probabilities,
                             labels=labels, class_names=class_names,
                             images_of=images_of, config=cfg.to_dict(), record=record, task=task)
        get_logger().info("report: %s", files[-1])
    except Exception as e:  # noqa: BLE001 - pictures are a by-product; the model and metrics are saved
        get_logger().warning("could not write the report (%s: %s); the model and metrics are saved",
                             type(e).__name__, e)
