"""The plan of a run: what is cached in each stage (the phases of a gradual stage 2: `tlkeras.freezing`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tlkeras import caching


# === What to cache ===


@dataclass
class CachePlan:
    """Which stages train on cached inputs, and why (logged)."""

    stage1: bool
    stage2: bool
    views: int
    reason: str


def plan_caching(
    setting, train_ds, augmenter, stage1_epochs: int, stage2_epochs: int, cut: Optional[int], views: int,
    inputs_random: Optional[bool] = None, bottom_computes: bool = True, mixes_images: bool = False,
) -> CachePlan:
    """Decide what to cache. `setting` is cache_features: "auto", True or False.

    auto caches when the training inputs carry no randomness; with random augmentation it runs
    uncached. True with augmentation caches `views` augmented views per image for stage 1.
    Stage 2's activations at the cut are cached only when the frozen bottom below it does work
    worth caching (`bottom_computes`, see `tlkeras.caching.computes_below`). Mixing images (`mixes_images`,
    MixUp / CutMix) is random augmentation too; cached views are of the augmenter's images (one without it).
    """
    if setting is False:
        return CachePlan(False, False, 1, "cache_features=false: the backbone runs on every batch")
    random = augmenter is not None or mixes_images or inputs_random
    if augmenter is None and not inputs_random:  # only the mixers: every view of an image would be the same
        views = 1
    if not random and inputs_random is None:
        random = caching.has_random_ops(train_ds)
    stage2_frozen_bottom = cut is not None and cut > 0
    if random is None and setting == "auto":
        return CachePlan(False, False, 1, "cannot tell whether the training data is randomly augmented; running "
                         "uncached (set cache_features: true if it is not)")
    if random:
        if setting == "auto":
            return CachePlan(
                False, False, 1,
                "random augmentation is on, so the backbone runs on every augmented batch "
                f"(set cache_features: true to cache {views} augmented view{'s' if views > 1 else ''} per image for "
                "stage 1 instead)",
            )
        return CachePlan(
            stage1_epochs > 0, False, views,
            f"cache_features=true with random augmentation: stage 1 trains on {views} cached augmented views "
            "per image; stage 2 runs uncached (its inputs change every epoch)",
        )
    s2 = stage2_epochs > 0 and stage2_frozen_bottom and bottom_computes
    why2 = (
        "stage 2 trains only above the unfreeze cut on cached activations"
        if s2
        else "stage 2 runs the whole model (below the cut only embeddings are looked up: caching their output "
             "would take memory and save no time)" if stage2_epochs > 0 and stage2_frozen_bottom
        else "stage 2 runs the whole model (nothing below the cut stays frozen)" if stage2_epochs > 0 else ""
    )
    return CachePlan(
        stage1_epochs > 0, s2, 1,
        "inputs are not randomly augmented: stage 1 trains the head on cached backbone features"
        + (f"; {why2}" if why2 else ""),
    )
