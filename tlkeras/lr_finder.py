"""The learning-rate range test: train with an exponentially growing rate, watch the loss.

For stage 1 the head trains on the cached backbone features; for stage 2, stage 1 runs first as
configured, then the unfrozen top trains on cached activations at the unfreeze cut (with the
configured layer-wise rates). The rate that brings the steepest fall of the smoothed loss is the
suggestion. The test works on a model of its own: nothing of a run changes.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Optional

import keras
import numpy as np
import tensorflow as tf

from tlkeras import backbones, caching, freezing
from tlkeras._logging import get_logger
from tlkeras.config import FinetuneConfig
from tlkeras.inputs import inputs_for
from tlkeras.errors import ConfigError
from tlkeras.model import build_model
from tlkeras.optimizers import make_optimizer


@dataclass
class LRFinderResult:
    """Rates tried, the smoothed loss at each, the suggested rate and the plot's path."""

    stage: int
    learning_rates: list
    losses: list
    suggestion: float
    plot: Optional[str]
    flat: bool = False  # the loss hardly moved over the sweep: the suggestion is a guess


def find_learning_rate(
    data: Any = None,
    *,
    config: FinetuneConfig | str | None = None,
    stage: int = 1,
    min_lr: float = 1e-7,
    max_lr: float = 1.0,
    steps: int = 100,
    output: Optional[str] = None,
    **options,
) -> LRFinderResult:
    """Run the LR range test for `stage` (1 or 2) and suggest a learning rate.

    Args:
        data, config, options: as for `build_and_finetune` (options: its other keyword arguments).
        min_lr / max_lr: the range scanned, geometrically, over `steps` training steps.
        output: where the plot goes (PNG); default <output_dir>/lr_finder_stage<N>.png.

    Example (after the data is in place):

        result = tlkeras.find_learning_rate("photos/", backbone="efficientnetb0", stage=1)
        result.suggestion, result.plot
    """
    if stage not in (1, 2):
        raise ConfigError(f"stage: {stage!r} is not valid: the LR range test runs for stage 1 or 2.")
    if not 0 < min_lr < max_lr:
        raise ConfigError(f"min_lr {min_lr} and max_lr {max_lr}: need 0 < min_lr < max_lr.")
    if steps < 10:
        raise ConfigError(f"steps: {steps} is too few for a range test; use at least 10 (100 is typical).")
    from tlkeras.config import resolve_config, with_backbone_defaults

    cfg = resolve_config(config, data, options)
    log = get_logger()
    keras.utils.set_random_seed(cfg.seed)
    spec = backbones.resolve(cfg.backbone, cfg.backbone_options)
    cfg = with_backbone_defaults(cfg, spec)
    kind = inputs_for(spec, cfg)
    image_size = kind.size(spec, cfg.image_size)
    bundle = kind.make_datasets(cfg, image_size)
    model = build_model(spec, len(bundle.class_names), image_size=image_size, weights=cfg.weights,
                        head=cfg.head, backbone_options=cfg.backbone_options, task=bundle.task.name,
                        class_names=bundle.class_names, inputs=kind.name, task_options=bundle.task_options)
    loss_fn = bundle.task.loss(int(model.output_shape[-1]), cfg.label_smoothing, bundle.class_weight,
                               options=bundle.task_options)
    stage_cfg = cfg.stage1 if stage == 1 else cfg.stage2
    multipliers = None
    if stage == 1:
        freezing.freeze_backbone(model)
        extractor, part = caching.split_at_head(model)
        fn = lambda pixels: extractor(pixels, training=False)  # noqa: E731
    else:
        from tlkeras.training import finetune

        finetune(model, bundle.train, bundle.val, stage1=cfg.stage1, stage2={"epochs": 0},
                 augmenter=bundle.augmenter, inputs_random=False, verbose=0)
        plan = freezing.unfreeze(model, cfg.stage2.unfreeze, train_bn=cfg.stage2.train_bn)
        if cfg.stage2.layer_decay is not None and cfg.stage2.layer_decay < 1:
            multipliers = freezing.layer_multipliers(model, cfg.stage2.layer_decay)
        if plan.cut_layer is None:
            extractor, part = caching.split_at_head(model)
            fn = lambda pixels: extractor(pixels, training=False)  # noqa: E731
        elif freezing.plan_cut(model, cfg.stage2.unfreeze, train_bn=cfg.stage2.train_bn)[0] == 0:
            # the whole backbone trains (a hub module is one unit): nothing below the cut to cache
            part, fn = model, (lambda inputs: inputs)
        else:
            fn, part, _ = caching.split_at_cut(model, plan.cut_layer)
    cache = caching.compute_cache(fn, bundle.train, cfg.memory_budget_mb << 20, None)
    try:
        train = caching.cached_dataset(cache, cfg.batch_size, shuffle=True).repeat()
        rates, raw = _range_test(part, train, stage_cfg, min_lr, max_lr, steps, multipliers, loss_fn)
    finally:
        cache.close()
    smoothed = _smooth(raw)
    suggestion = suggest(rates, smoothed)
    path = output or os.path.join(_plot_folder(cfg.output_dir), f"lr_finder_stage{stage}.png")
    plot = _plot(rates, smoothed, suggestion, stage, path)
    log.info("LR range test, stage %d: suggested learning rate %.3g (plot: %s)", stage, suggestion, plot)
    flat = is_flat(smoothed)
    if flat:
        finite = [v for v in smoothed if math.isfinite(v)]
        log.warning("the loss hardly changed over the sweep (%.4g to %.4g): the suggested rate %.3g is a guess. Try "
                    "more --steps, a wider --min-lr/--max-lr, or check that the data and weights can be learned from.",
                    max(finite, default=math.nan), min(finite, default=math.nan), suggestion)
    return LRFinderResult(stage, rates, smoothed, suggestion, plot, flat)


def _plot_folder(output_dir: Optional[str]) -> str:
    """Where the plot goes unasked: output_dir, unless that holds a run (which it would then change)."""
    from tlkeras.rundir import run_status

    if output_dir and os.path.isdir(output_dir) and run_status(output_dir) != "none":
        get_logger().info("%s holds a run: the plot goes to the current folder instead (--plot PATH to choose)",
                          output_dir)
        return "."
    return output_dir or "."


def is_flat(smoothed: list, tolerance: float = 0.05) -> bool:
    """Whether the smoothed loss moved by less than `tolerance` of its size over the sweep.

    >>> is_flat([0.6931, 0.6930, 0.6932, 0.6929]), is_flat([2.3, 1.9, 1.2, 0.8, 4.0])
    (True, False)
    """
    finite = [v for v in smoothed if math.isfinite(v)]
    if len(finite) < 2:
        return True
    return (max(finite) - min(finite)) < tolerance * max(abs(min(finite)), 1e-12)


def _range_test(model, train, stage_cfg, min_lr, max_lr, steps, multipliers, loss_fn):
    constant = dataclasses.replace(stage_cfg, schedule="constant", warmup_epochs=0.0)
    optimizer = make_optimizer(constant, min_lr, None, multipliers=multipliers)
    variables = model.trainable_variables
    optimizer.build(variables)

    @tf.function
    def step(x, y, lr):
        optimizer.learning_rate = lr
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True)) + tf.add_n([0.0] + [tf.cast(l, tf.float32) for l in model.losses])
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    factor = (max_lr / min_lr) ** (1.0 / (steps - 1))
    rates, losses, best = [], [], math.inf
    smoothed = 0.0
    for i, (x, y) in enumerate(train.take(steps)):
        lr = min_lr * factor**i
        loss = float(step(x, y, tf.constant(lr, tf.float32)))
        rates.append(lr)
        losses.append(loss)
        smoothed = 0.98 * smoothed + 0.02 * loss
        value = smoothed / (1 - 0.98 ** (i + 1))
        best = min(best, value)
        if not math.isfinite(loss) or (i > 10 and value > 4 * best):
            break  # diverged: the rest of the range only says "too high"
    return rates, losses


def _smooth(losses: list) -> list:
    out, average = [], 0.0
    for i, loss in enumerate(losses):
        average = 0.98 * average + 0.02 * loss
        out.append(average / (1 - 0.98 ** (i + 1)))
    return out


def suggest(rates: list, smoothed: list) -> float:
    """A rate half-way into the longest valley of the smoothed loss (fastai's "valley" rule).

    The valley is the longest decreasing subsequence of the loss; its middle is robust to the
    step-to-step noise that makes "the steepest point" land on a random wiggle.

    >>> rates = list(np.geomspace(1e-5, 1, 50))
    >>> losses = [2.0 if r < 1e-3 else (2.0 - np.log10(r / 1e-3)) if r < 1e-1 else 5.0 for r in rates]
    >>> 1e-3 <= suggest(rates, losses) <= 1e-1
    True
    """
    values = [v if math.isfinite(v) else math.inf for v in smoothed]
    n = len(values)
    if n < 3:
        return float(rates[0])
    longest = [1] * n
    end = 0
    for i in range(1, n):
        for j in range(i):
            if values[i] < values[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[i] > longest[end]:
            end = i
    start = end - longest[end]
    third = (end - start) / 3
    return float(rates[max(0, start + int(third) + int(third / 2))])


def _plot(rates, losses, suggestion, stage, path) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        get_logger().warning("matplotlib is not installed: no LR range plot")
        return None
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(rates, losses, color="tab:blue")
    ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested {suggestion:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title(f"LR range test, stage {stage}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
