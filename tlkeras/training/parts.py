"""What one stage fits: the full model on the input pipeline, or a part of it (the head, the top)
on cached features or activations, computed once."""

from __future__ import annotations


from dataclasses import dataclass
from typing import Optional

import keras
import tensorflow as tf

from tlkeras import caching, freezing
from tlkeras._logging import get_logger
from tlkeras.model import get_backbone, get_head_pool, get_preprocessing

AUTOTUNE = tf.data.AUTOTUNE


@dataclass
class InMemory:
    """A part's data as arrays in memory, for `tlkeras.steploop.fit_arrays`: (inputs, labels) of the
    training and validation rows (inputs an array, or a tuple of them) and the batch size."""

    train: tuple
    val: Optional[tuple]
    batch_size: int


@dataclass
class Part:
    """What one stage fits: the model (or part of it), its data and the steps of an epoch; `memory` the
    same data as arrays when it is held in memory (cached features or activations)."""

    model: keras.Model
    train: tf.data.Dataset
    val: Optional[tf.data.Dataset]
    steps: Optional[int]
    repeats: bool = False  # the training data repeats; an epoch is `steps` batches
    memory: Optional[InMemory] = None
    # `val` holds the frozen layers' outputs as they were computed (in memory, full precision): while those
    # layers stay frozen, `model` on `val` gives what the whole model gives on the validation data.
    val_exact: bool = False


@dataclass
class CachedValidation:
    """The validation split as the trained part of a model sees it: `model` (a part of the whole model, sharing
    its layers) on `data`, batched (cached inputs, label) in the split's order, is the whole model on the
    validation data - computed without running the frozen layers again."""

    model: keras.Model
    data: tf.data.Dataset


class Caches:
    """Computes the caches lazily, at most one pass over the data per kind, and frees them."""

    def __init__(self, model, train_ds, val_ds, budget: int, run_dir: Optional[str], progress: bool = False):
        self.model, self.train_ds, self.val_ds, self.budget = model, train_ds, val_ds, budget
        self.progress = progress
        self.spill_dir = run_dir
        self.batch_size = batch_size_of(train_ds)
        self.train: Optional[caching.Cache] = None
        self.val: Optional[caching.Cache] = None
        self.cut: Optional[str] = None

    def _compute(self, fn, augmenter=None, views=1):
        log = get_logger()
        inputs = self.train_ds.element_spec[0]  # a tensor, or a tuple of them (a sentence pair's two texts)
        # One trace for every batch size and both splits: tracing a backbone takes seconds.
        fn = tf.function(fn, input_signature=[keras.tree.map_structure(
            lambda spec: tf.TensorSpec([None, *spec.shape[1:]], spec.dtype), inputs)])
        # The passes run at the training batch size: batches of 128 run ~15 % faster on CPU but
        # hold 4x the activations (+480 MB at 128 px, see benchmarks/RESULTS.md); memory counts.
        self.train = caching.compute_cache(fn, self.train_ds, self.budget, self.spill_dir, views, augmenter,
                                           progress="caching training features" if self.progress else None)
        if self.val_ds is not None:
            self.val = caching.compute_cache(fn, self.val_ds, self.budget, self.spill_dir,
                                             progress="caching validation features" if self.progress else None)
        size = self.train.nbytes + (self.val.nbytes if self.val else 0)
        notes = "; ".join(self.train.notes + (self.val.notes if self.val else [])) or "in memory"
        log.info("cached %d training%s rows (%.1f MB, %s)", len(self.train.labels),
                 f" and {len(self.val.labels)} validation" if self.val else "", size / 2**20, notes)

    def for_head(self, augmenter=None, views=1, cut: Optional[int] = None):
        """Stage 1 on cached features: the head, its data and steps. With `cut` (index of the
        lowest backbone layer stage 2 trains), the same pass also caches the activations
        crossing that cut."""
        extractor, head = caching.split_at_head(self.model)
        if cut is not None and 0 < cut < len(freezing.backbone_layers(self.model)):
            layer = freezing.backbone_layers(self.model)[cut].name
            fn = self._features_and_crossing(layer)
            self.cut = layer
        else:
            def fn(pixels):
                return extractor(pixels, training=False)
        if self.train is None:
            self._compute(fn, augmenter, views)
        rows = len(self.train.labels) // views
        train = caching.cached_dataset(self.train.select([0]), self.batch_size, shuffle=True,
                                       epoch_rows=rows if views > 1 else None)
        val = caching.cached_dataset(self.val.select([0]), self.batch_size, shuffle=False) if self.val else None
        return Part(head, train, val, caching.steps_for(rows, self.batch_size), repeats=views > 1,
                    memory=self._in_memory([0]) if views == 1 else None, val_exact=self._val_exact())

    def for_cut(self, cut_layer: Optional[str]):
        """Stage 2 on cached activations at `cut_layer`: the top of the model, its data and steps.
        With no cut layer (no backbone layer trains), stage 2 trains the head on the features."""
        if cut_layer is None:
            return self.for_head()
        extract, top, crossing = caching.split_at_cut(self.model, cut_layer)
        if self.cut != cut_layer:  # not computed with stage 1 (stage 1 skipped or uncached)
            self.close()
            self._compute(extract)
            self.cut = cut_layer
            first = 0
        else:
            first = 1  # column 0 holds the stage-1 features
        columns = list(range(first, first + len(crossing)))
        train = caching.cached_dataset(self.train.select(columns), self.batch_size, shuffle=True)
        val = caching.cached_dataset(self.val.select(columns), self.batch_size, shuffle=False) if self.val else None
        return Part(top, train, val, caching.steps_for(len(self.train.labels), self.batch_size),
                    memory=self._in_memory(columns), val_exact=self._val_exact())

    def _val_exact(self) -> bool:
        """Whether the validation cache holds the frozen layers' outputs as computed (in memory; a spill to
        disk keeps them as float16)."""
        return self.val is not None and self.val.folder is None

    def _in_memory(self, columns: list[int]) -> Optional[InMemory]:
        """The cached columns as arrays, when the caches are in memory (not spilled to disk)."""
        if self.train.folder is not None or (self.val is not None and self.val.folder is not None):
            return None

        def rows(cache):
            arrays = [cache.arrays[i] for i in columns]
            return (arrays[0] if len(arrays) == 1 else tuple(arrays)), cache.labels

        return InMemory(rows(self.train), rows(self.val) if self.val is not None else None, self.batch_size)

    def _features_and_crossing(self, cut_layer: str):
        """One frozen pass giving the head's input features and the stage-2 cut activations."""
        backbone = get_backbone(self.model)
        crossing = caching.crossing_tensors(self.model, cut_layer)
        both = keras.Model(backbone.input, [backbone.output, *crossing])
        preprocess = get_preprocessing(self.model) or (lambda x: x)
        pool = get_head_pool(self.model)

        def fn(pixels):
            out = both(preprocess(pixels), training=False)
            features = pool(out[0]) if pool is not None else out[0]
            return [features, *out[1:]]

        return fn

    def close(self):
        for cache in (self.train, self.val):
            if cache is not None:
                cache.close()
        self.train = self.val = None
        self.cut = None



class SharedCaches:
    """What several `finetune` calls on one model and one data share (`tlkeras.tune`'s trials): the frozen part's
    outputs, computed once per place they are taken (stage 1's features, alone or with the activations crossing
    one stage-2 cut) and kept across the calls, the least recently used dropped when they would pass `budget`
    bytes. Valid while nothing below what they were taken at has trained: each trial starts from the pretrained
    weights, and stage 2 never trains below its cut. `passes` counts the frozen passes over the data.

    A `finetune` given one (`caches=`) asks it as it asks its own `Caches`; closing it between stages keeps
    everything (`release` frees it at the end)."""

    def __init__(self, model, train_ds, val_ds, budget: int, progress: bool = False):
        self.model, self.train_ds, self.val_ds, self.budget, self.progress = model, train_ds, val_ds, budget, progress
        self.entries: dict = {}  # key -> Caches, most recently used last
        self.passes = 0

    def _entry(self, key):
        entry = self.entries.pop(key, None)
        if entry is None:
            entry = Caches(self.model, self.train_ds, self.val_ds, self.budget, None, progress=self.progress)
        self.entries[key] = entry
        return entry

    def _computed(self, entry, before: bool) -> None:
        if entry.train is not None and not before:
            self.passes += 1
            self._fit_budget(keep=entry)

    def _fit_budget(self, keep) -> None:
        def size(caches):
            return sum(c.nbytes for c in (caches.train, caches.val) if c is not None)

        for key in list(self.entries):
            if sum(size(e) for e in self.entries.values()) <= self.budget:
                break
            if self.entries[key] is not keep:
                get_logger().info("tune: dropping the cached outputs at %s (memory_budget_mb)", key[0] or "the head")
                self.entries.pop(key).close()

    def for_head(self, augmenter=None, views=1, cut: Optional[int] = None):
        if views > 1:  # augmented views: random, so never shared
            entry, key = Caches(self.model, self.train_ds, self.val_ds, self.budget, None, self.progress), None
        else:
            layers = freezing.backbone_layers(self.model)
            key = (layers[cut].name if cut is not None and 0 < cut < len(layers) else "", "head")
            entry = self._entry(key)
        before = entry.train is not None
        part = entry.for_head(augmenter=augmenter, views=views, cut=cut)
        self._computed(entry, before)
        return part

    def for_cut(self, cut_layer: Optional[str]):
        if cut_layer is None:
            return self.for_head()
        key = (cut_layer, "head") if (cut_layer, "head") in self.entries else (cut_layer, "cut")
        entry = self._entry(key)  # computed with stage 1's features at this cut, or else on its own
        before = entry.train is not None and entry.cut == cut_layer
        part = entry.for_cut(cut_layer)
        self._computed(entry, before)
        return part

    def close(self):
        """Between stages and at the end of a `finetune`: the caches stay for the next one."""

    def release(self):
        for entry in self.entries.values():
            entry.close()
        self.entries.clear()


def count_steps(ds) -> Optional[int]:
    n = int(ds.cardinality())
    return n if n > 0 else None


def batch_size_of(ds) -> int:
    images, _ = next(iter(ds))
    return int(keras.tree.flatten(images)[0].shape[0])
