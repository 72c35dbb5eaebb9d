"""rank_backbones: which pretrained backbone suits this data, from one frozen pass per candidate.

For each candidate the training and validation data go through the frozen backbone once (the
same feature cache stage 1 trains on, within `memory_budget_mb`), then:

- LogME scores the training features against the labels (`tlkeras.ranking.logme`): no training;
- a linear probe - the head alone, trained on those cached features with the stage-1 settings,
  exactly as stage 1 of `build_and_finetune` would - gives its validation accuracy (micro-F1 for
  multi-label data).

A candidate that cannot run (an unknown name, weights that cannot be loaded, an image size below
its minimum) is listed with the reason; the others are still ranked.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Optional

from tlkeras._logging import get_logger
from tlkeras.errors import TlkerasError
from tlkeras.backbones.candidates import candidate_label, parse_candidates
from tlkeras.ranking.memory import PeakMemory
from tlkeras.ranking.result import DEFAULT_SCORE, SCORES, Ranking, choose_score


def rank_backbones(data: Any = None, candidates=None, *, config=None, by: Optional[str] = None,
                   output_dir: Optional[str] = None, probe: bool = True, sample: Optional[int] = None,
                   **options) -> Ranking:
    """Rank candidate backbones on your data by LogME and a linear probe, one frozen pass each.

    Args:
        data: the training data, as `build_and_finetune` takes it (a folder of class folders, a CSV,
            arrays, a tf.data.Dataset, "tfds:NAME").
        candidates: backbones to compare: names as `backbone=` takes them ("mobilenetv2",
            "hub:...", "kerashub:...", "my_backbone.keras"), a comma-separated string or
            "auto:a,b,c", or dicts of config keys per candidate ({"backbone": "mobilenetv2",
            "weights": "digits.weights.h5", "image_size": 64, "name": "digits-pretrained"}).
        config: a FinetuneConfig or YAML path giving the shared settings (data, image_size,
            batch_size, val_split, stage1, memory_budget_mb, seed, ...); `options` override it.
        by: the score the ranking is sorted by and the recommendation made on: "auto" (the default: LogME
            when every class has at least `LOGME_MIN_PER_CLASS` (50) training examples, else the probe - what
            predicted fine-tuned accuracy best in benchmarks/RESULTS.md), "logme" or "probe".
        output_dir: where ranking.json and ranking.png go (None: nothing is written).
        probe: also train the linear probe (False: LogME only, sorted by it).
        sample: rank on at most this many training examples, drawn once (class by class in proportion, from the
            seed) so that every candidate sees the same ones; None ranks on all. The frozen pass over them is most
            of what ranking costs. LogME is trusted with 50 or more per class (see `by`), which the sample should
            leave. Data given as a tf.data.Dataset or tfds has no rows to draw from: it is ranked whole (logged).

    Returns:
        Ranking: .entries (best first; each with backbone, logme, probe_accuracy, seconds, ...),
        .failed (backbone, reason), .recommended, .table(), .write(folder).

    Example:

    >>> import numpy as np, tlkeras.ranking as ranking
    >>> rng = np.random.default_rng(0)
    >>> x = rng.integers(0, 255, (24, 32, 32, 3)).astype("uint8")
    >>> y = np.array(["cat", "dog"] * 12)
    >>> result = ranking.rank_backbones(
    ...     (x, y), ["mobilenetv2", "no_such_net"], weights=None, image_size=32,
    ...     backbone_options={"alpha": 0.35}, stage1={"epochs": 1})
    >>> [entry["backbone"] for entry in result.entries], result.failed[0]["backbone"]
    (['mobilenetv2'], 'no_such_net')
    """
    from tlkeras.config import resolve_config

    by = by or DEFAULT_SCORE
    if by not in (*SCORES, "auto"):
        raise TlkerasError(f"by: {by!r} is not a score here; use one of auto, {', '.join(SCORES)}.")
    if not probe and by == "probe":
        raise TlkerasError("by='probe' needs the probe; set probe=True or rank by 'logme'.")
    if sample is not None and (isinstance(sample, bool) or not isinstance(sample, int) or sample < 2):
        raise TlkerasError(f"sample: {sample!r} is not valid: use a number of training examples (2 or more), "
                           "or None to rank on all of them.")
    options.pop("backbone", None)  # the candidates say it
    base = resolve_config(config, data, options)
    chosen = parse_candidates(candidates)
    log = get_logger()
    log.info("ranking %d candidate backbones by %s on %s", len(chosen), SCORES.get(by, "LogME or the probe"),
             base.data if isinstance(base.data, str) else type(base.data).__name__)
    entries, failed = [], []
    bundles: dict = {}  # the data, decoded once for every candidate of the same input size
    for candidate in chosen:
        label = candidate_label(candidate)
        try:
            entries.append(_score(base, candidate, label, probe, bundles, sample))
        except (KeyboardInterrupt, SystemExit, _NotThisData):
            raise
        except Exception as e:  # noqa: BLE001 - one candidate failing must not stop the others
            reason = str(e).strip().splitlines()[0] if isinstance(e, TlkerasError) else (
                f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else 'no message'}")
            log.warning("%s: cannot be ranked: %s", label, reason)
            failed.append({"backbone": label, "reason": reason})
        finally:
            _free_memory()
    smallest = min((e["smallest_class"] for e in entries), default=0)
    by, why = choose_score(by, smallest, probe)
    ranking = Ranking(entries, failed, by=by, why=why)
    if output_dir:
        ranking.write(output_dir)
    if ranking.recommended is not None:
        log.info("recommended: %s (%s)", ranking.recommended["backbone"], ranking.describe(ranking.recommended))
    return ranking


class _NotThisData(TlkerasError):
    """What no candidate can be ranked with: said once, not listed against each candidate."""


# What a candidate may set that does not change its data: the data of candidates differing only in these is shared.
_MODEL_KEYS = ("name", "backbone", "weights", "backbone_options", "head")


def _score(base, candidate: dict, label: str, probe: bool, bundles: dict, sample: Optional[int] = None) -> dict:
    """One candidate: its frozen features once, then LogME and the probe."""
    import keras
    import numpy as np

    from tlkeras import backbones
    from tlkeras.config import with_backbone_defaults
    from tlkeras.inputs import inputs_for
    from tlkeras.model import build_model
    from tlkeras.preflight import check_run
    from tlkeras.ranking.logme import logme
    from tlkeras import freezing
    from tlkeras.training.parts import Caches

    log = get_logger()
    values = {k: v for k, v in candidate.items() if k != "name"}
    cfg = base.merged(values)
    check_run(cfg)  # the name, its weights and the image size, before any work
    started = time.time()
    with PeakMemory() as memory:
        keras.utils.set_random_seed(cfg.seed)
        spec = backbones.resolve(cfg.backbone, cfg.backbone_options)
        cfg = with_backbone_defaults(cfg, spec)  # the probe is stage 1 as this backbone's run would train it
        spec.check_weights(cfg.weights)
        kind = inputs_for(spec, cfg)
        size = kind.size(spec, cfg.image_size)
        key = (kind.name, size, repr(sorted((k, v) for k, v in candidate.items() if k not in _MODEL_KEYS)))
        if key not in bundles:
            bundles[key] = kind.make_datasets(cfg, size)
        bundle = bundles[key]
        classes = len(bundle.class_names)
        if sample is not None and bundle.task.name == "single_label" and sample < classes:
            raise _NotThisData(f"sample: {sample} training examples cannot hold one of each of the {classes} classes; "
                               f"use --sample {classes} or more (a few thousand tell as much as all the data), or "
                               "leave it out to rank on all of it.")
        model = build_model(spec, len(bundle.class_names), image_size=size, weights=cfg.weights, head=cfg.head,
                            backbone_options=cfg.backbone_options, task=bundle.task.name,
                            class_names=bundle.class_names, input_options=kind.input_options(cfg),
                            inputs=kind.name, task_options=bundle.task_options)
        freezing.freeze_backbone(model)
        train, examples = _sampled(bundle, sample, kind, model, cfg)
        # LogME needs the training features only; the probe is scored on the validation split's.
        caches = Caches(model, train, bundle.val if probe else None, int(cfg.memory_budget_mb * 2**20), None)
        try:
            clock = time.time()
            part = caches.for_head()
            features_seconds = time.time() - clock
            features = np.asarray(caches.train.arrays[0], dtype=np.float32)
            features = features.reshape(len(features), -1)
            clock = time.time()
            score = logme(features, caches.train.labels)
            logme_seconds = time.time() - clock
            entry = {
                "backbone": label,
                "logme": round(score, 6),
                "probe_accuracy": None,
                "probe_metric": bundle.task.headline_name,
                "feature_dims": int(features.shape[1]),
                "train_count": len(caches.train.labels),
                "smallest_class": _smallest_class(bundle, examples),
                "val_count": bundle.val_count,
                "image_size": list(size) if size else None,
                "seconds_features": round(features_seconds, 3),
                "seconds_logme": round(logme_seconds, 3),
            }
            if examples is not bundle.train_examples:
                entry["sampled_from"] = bundle.train_count
            if probe and bundle.val is None:
                log.warning("%s: no validation split (val_split 0 and no val_data): no probe accuracy", label)
            elif probe:
                clock = time.time()
                entry["probe_accuracy"] = _probe(model, part, bundle, cfg)
                entry["seconds_probe"] = round(time.time() - clock, 3)
        finally:
            caches.close()
    entry["seconds"] = round(time.time() - started, 3)
    entry["peak_rss_mb"] = memory.peak_mb
    entry["features_mb"] = round(features.nbytes / 2**20, 2)
    log.info("%s: LogME %.4f%s, %.1f s", label, entry["logme"],
             f", probe {entry['probe_metric']} {entry['probe_accuracy']:.4f}" if entry["probe_accuracy"] is not None
             else "", entry["seconds"])
    return entry


def _sampled(bundle, sample: Optional[int], kind, model, cfg):
    """(the training pipeline to rank on, its examples): the bundle's own, or a pipeline over `sample` rows of it
    (`tlkeras.ranking.sample`), in order - the features' order does not matter, the probe shuffles its rows."""
    from tlkeras.ranking.sample import sample_rows

    examples = bundle.train_examples
    if sample is None or bundle.train_count <= sample:
        return bundle.train, examples
    if examples is None:
        get_logger().info("sample: %d asked for, but the data is a pipeline without rows to draw from: ranked on all "
                          "of it", sample)
        return bundle.train, examples
    chosen = examples.subset(sample_rows(examples.labels, sample, cfg.seed))
    return kind.evaluation_pipeline(chosen, model, cfg.batch_size), chosen


def _smallest_class(bundle, examples) -> int:
    if examples is None:
        return int(min(bundle.class_counts("train").values(), default=0))
    return int(min(bundle.task.class_counts(examples.labels, len(bundle.class_names)), default=0))


def _probe(model, part, bundle, cfg) -> float:
    """Stage 1 as build_and_finetune runs it (the head on cached features, the stage-1 settings),
    then the task's headline metric on the cached validation features."""
    import numpy as np

    from tlkeras.training.budget import resolve_budget
    from tlkeras.training.runner import Runner

    runner = Runner(model, bundle.train, bundle.val, [], bundle.class_weight, None, cfg.jit_compile, 0,
                    label_smoothing=cfg.label_smoothing)
    stage1 = resolve_budget(cfg.stage1, cfg.stage2, part.steps or runner.steps).stage1  # as the run would train it
    runner.stage(stage1, stage1.learning_rate, 0, part)
    outputs, labels = [], []
    for x, y in part.val:
        outputs.append(np.asarray(part.model(x, training=False)))
        labels.append(np.asarray(y))
    probabilities = bundle.task.to_probabilities(np.concatenate(outputs))
    labels = np.concatenate(labels)
    labels = labels.astype(np.int64) if labels.ndim == 1 else labels.astype(np.float32)
    metrics = bundle.task.metrics(np.asarray(probabilities), labels, bundle.class_names, top_k=cfg.top_k)
    return round(float(metrics[bundle.task.headline_key]), 6)


def _free_memory() -> None:
    """Drop the candidate's model and caches before the next one is built."""
    import sys

    if "keras" in sys.modules:
        import keras

        keras.backend.clear_session()
    gc.collect()
