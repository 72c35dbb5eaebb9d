"""Caching what the frozen part of the model computes, so each stage trains only what trains.

Stage 1: the backbone is frozen, so the pooled features of each image never change. They are
computed once and the head trains on them for every epoch (`split_at_head`).

Stage 2: below the unfreeze cut nothing trains, so the activations that cross the cut never
change either. They are computed once and only the top of the backbone plus the head run in
each epoch (`split_at_cut`).

In both cases the model that trains is built from the very layer objects of the full model, so
the full model - the one that is evaluated, saved and exported - holds the trained weights with
no copying. Frozen layers run in inference mode here (no dropout, BatchNormalization on its moving
statistics), which is what freezing means in tlkeras.

Caches live in memory (float32) while they fit `memory_budget_mb`, else in float16 files under
the run directory (or a temporary folder), read back a batch at a time (outside the process's
resident memory), and deleted when training ends.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from tlkeras.distribute import static_shapes
from tlkeras import freezing
from tlkeras.model import get_backbone, get_head_pool, get_preprocessing
from tlkeras.memory import aligned_empty, gathered_batches
from tlkeras.runtime import progress_verbosity

AUTOTUNE = tf.data.AUTOTUNE


# === Which datasets may be cached ===


def has_random_ops(ds: tf.data.Dataset) -> Optional[bool]:
    """Whether a dataset applies random ops (random augmentation); None if it cannot tell.

    Walks the pipeline's transformations and the graphs of their functions (map, filter, ...),
    never the data: serialising the whole dataset would copy in-memory images into a GraphDef.
    Shuffling is not random in this sense: it changes the order, not the examples.
    """
    try:
        seen, stack, python_code = set(), [ds], False
        while stack:
            current = stack.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            if type(current).__name__ in ("RandomDataset", "_RandomDataset"):
                return True
            for name in ("_map_func", "_predicate", "_key_func", "_reduce_func", "_scan_func", "_func"):
                wrapper = getattr(current, name, None)
                if wrapper is not None:
                    ops = _function_ops(wrapper)
                    if any("Random" in op for op in ops):
                        return True
                    python_code |= any("PyFunc" in op for op in ops)
            stack.extend(current._inputs())
        # Python code (from_generator, py_function) may draw random numbers unseen.
        return None if python_code else False
    except Exception:  # a dataset type this walk does not know
        return None


def _function_ops(wrapper) -> set:
    function = getattr(wrapper, "function", wrapper)
    graph = function.graph.as_graph_def()
    ops = {node.op for node in graph.node}
    for nested in graph.library.function:
        ops.update(node.op for node in nested.node_def)
    return ops


# === Splitting the model ===


def computes_below(model: keras.Model, cut: int) -> bool:
    """Whether the backbone's layers below index `cut` do work worth caching: a matrix product or a
    convolution somewhere inside them (a layer with a kernel). A text encoder's embeddings (look-ups,
    a sum and a normalisation) are not: their output, [examples, tokens, hidden] floats, would take
    memory to save no time (measured in benchmarks/RESULTS.md, issue 16).

    >>> import tlkeras
    >>> m = tlkeras.build_model("mobilenetv2", 2, image_size=32, weights=None, backbone_options={"alpha": 0.35})
    >>> computes_below(m, 1), computes_below(m, 0)
    (True, False)
    """
    for layer in freezing.backbone_layers(model)[:cut]:
        if any(hasattr(sub, "kernel") or hasattr(sub, "depthwise_kernel") for sub in layer._flatten_layers()):
            return True
    return False


def _backbone_output(model: keras.Model):
    """The backbone's output tensor in the model's own graph (a nested model's `.output` is
    its inner graph's tensor): the input of the layer that follows it."""
    backbone = get_backbone(model)
    index = next(i for i, layer in enumerate(model.layers) if layer is backbone)
    return model.layers[index + 1].input


def _head_boundary(model: keras.Model):
    """The outer-graph tensor the head starts from: the pooled features, or the backbone output."""
    pool = get_head_pool(model)
    return pool.output if pool is not None else _backbone_output(model)


def split_at_head(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """(extractor: pixels -> head input, head: head input -> outputs), sharing the model's layers."""
    boundary = _head_boundary(model)
    extractor = keras.Model(model.input, boundary, name="frozen_features")
    head = keras.Model(boundary, model.output, name="head")
    return extractor, head


def crossing_tensors(model: keras.Model, cut_layer: str) -> list:
    """Tensors of the backbone's graph made below `cut_layer` and used at or above it."""
    backbone = get_backbone(model)
    layers = freezing.backbone_layers(model)
    names = [layer.name for layer in layers]
    top = set(names[names.index(cut_layer):])
    seen, crossing = set(), []

    def cross(tensor):
        producer = tensor._keras_history.operation
        if isinstance(producer, keras.layers.Layer):
            if producer.name not in top and id(tensor) not in seen:
                seen.add(id(tensor))
                crossing.append(tensor)
        else:  # an op that is no layer (x[:, 0], a cast): it runs above the cut, on what it is given
            for t in keras.tree.flatten(producer._inbound_nodes[tensor._keras_history.node_index].input_tensors):
                cross(t)

    for layer in layers:
        if layer.name not in top:
            continue
        for tensor in keras.tree.flatten(layer.input):
            cross(tensor)
    if not crossing:  # the cut is the first layer after the input
        crossing = list(keras.tree.flatten(backbone.input))
    return crossing


def _submodel(inputs: list, outputs, name: str) -> keras.Model:
    """keras.Model from intermediate tensors. Keras clones the graph between them, and an input of the
    original graph among them (a text encoder's padding mask, which every transformer layer takes)
    has its history re-pointed at the clone, after which the full model no longer saves ("could not
    find node key"): their history is put back."""
    histories = [(t, t._keras_history) for t in inputs]
    try:
        return keras.Model(inputs, outputs, name=name)
    finally:
        for tensor, history in histories:
            tensor._keras_history = history


def split_at_cut(model: keras.Model, cut_layer: str) -> tuple[Callable, keras.Model, list]:
    """(extract: pixels -> crossing activations, top: activations -> outputs, crossing tensors)."""
    backbone = get_backbone(model)
    crossing = crossing_tensors(model, cut_layer)
    bottom = keras.Model(backbone.input, crossing, name="frozen_bottom")
    top_backbone = _submodel(crossing, backbone.output, "backbone_top")
    head = keras.Model(_backbone_output(model), model.output, name="head")
    inputs = [keras.Input(t.shape[1:], dtype=t.dtype, name=f"cached_{i}") for i, t in enumerate(crossing)]
    outputs = head(top_backbone(inputs if len(inputs) > 1 else inputs[0]))
    top = keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs, name="trainable_top")
    preprocess = get_preprocessing(model) or (lambda x: x)

    def extract(pixels):
        return bottom(preprocess(pixels), training=False)

    return extract, top, crossing


# === Computing and storing cached arrays ===


@dataclass
class Cache:
    """Arrays (one per model input) and labels of one split, in memory or memory-mapped on disk."""

    arrays: list
    labels: np.ndarray
    folder: Optional[str] = None  # set when spilled to disk
    notes: list = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    def select(self, columns: list[int]) -> "Cache":
        """A view holding only some of the arrays (e.g. stage-1 features or stage-2 activations)."""
        return Cache([self.arrays[i] for i in columns], self.labels, self.folder, self.notes)

    def close(self) -> None:
        self.arrays = []
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)


class _Spill:
    """Append-only files, one per output (float16; integer and boolean arrays as they are), memory-mapped
    once complete."""

    def __init__(self, spill_dir: Optional[str], count: int):
        if spill_dir:
            os.makedirs(spill_dir, exist_ok=True)
        self.folder = tempfile.mkdtemp(prefix="tlkeras-cache-", dir=spill_dir)
        self.files = [open(os.path.join(self.folder, f"{i}.bin"), "wb") for i in range(count)]
        self.shapes: list = [None] * count
        self.dtypes: list = [None] * count
        self.rows = 0

    def write(self, values: list) -> None:
        for i, (f, v) in enumerate(zip(self.files, values)):
            if v.dtype.kind == "f" and v.dtype != np.float16:  # ids and masks stay exact
                # TensorFlow's cast, into memory TensorFlow allocates: a new NumPy array per batch (MBs each) is
                # memory the process faults in afresh, which took longer than the conversion (see RESULTS.md).
                v = tf.cast(v, tf.float16).numpy()
            v = np.ascontiguousarray(v)
            self.shapes[i] = v.shape[1:]
            self.dtypes[i] = v.dtype
            f.write(memoryview(v).cast("B"))
        self.rows += len(values[0])

    def finish(self) -> list:
        for f in self.files:
            f.close()
        return [
            np.memmap(f.name, dtype=dtype, mode="r", shape=(self.rows, *shape))
            for f, shape, dtype in zip(self.files, self.shapes, self.dtypes)
        ]


def compute_cache(
    fn: Callable,
    images: tf.data.Dataset,
    budget_bytes: int,
    spill_dir: Optional[str],
    views: int = 1,
    augmenter=None,
    progress: Optional[str] = None,
) -> Cache:
    """Run `fn` (pixels -> array or list of arrays; best a tf.function with an input signature,
    traced once for every batch size) over a batched (pixels, label) dataset once
    (or `views` times through `augmenter`); keep the results in memory while they fit
    `budget_bytes`, else stream them to float16 files on disk. `progress` (a title) shows a
    progress bar."""
    graph_fn = fn if isinstance(fn, tf.types.experimental.PolymorphicFunction) else tf.function(fn)
    # When the pass's length is known, its outputs go into buffers made once for all of them, sized from the
    # first batch (or straight to disk if those would not fit): batches kept and joined at the end would hold
    # the cache twice for a moment.
    buffers: Optional[list[np.ndarray]] = None
    rows = 0
    chunks: list[list[np.ndarray]] = []
    labels: list[np.ndarray] = []
    size = 0
    spill: Optional[_Spill] = None
    bar = None
    batches = int(images.cardinality())
    if progress and batches > 0:
        print(progress, flush=True)
        bar = keras.utils.Progbar(batches * views, unit_name="batch", verbose=progress_verbosity())
    for _ in range(views):
        for pixels, y in images:
            if bar is not None:
                bar.add(1)
            if augmenter is not None:
                pixels = augmenter(pixels, training=True)
            values = [np.asarray(v) for v in keras.tree.flatten(graph_fn(pixels))]
            y = np.asarray(y)  # class indices, or a multi-label task's multi-hot rows
            labels.append(y.astype(np.int64) if y.dtype.kind in "iu" else y)
            if spill is not None:
                spill.write(values)
                continue
            if buffers is None and not chunks and batches > 0:
                capacity = batches * views * len(values[0])
                if capacity * sum(v.nbytes // max(len(v), 1) for v in values) > budget_bytes:
                    spill = _Spill(spill_dir, len(values))
                    spill.write(values)
                    continue
                buffers = [aligned_empty((capacity, *v.shape[1:]), v.dtype) for v in values]
            if buffers is not None and rows + len(values[0]) > len(buffers[0]):  # batches not all alike
                chunks, buffers = [[buffer[:rows] for buffer in buffers]], None
                size = sum(c.nbytes for c in chunks[0])
            if buffers is not None:
                for buffer, v in zip(buffers, values):
                    buffer[rows:rows + len(v)] = v
                rows += len(values[0])
                continue
            chunks.append(values)
            size += sum(v.nbytes for v in values)
            if size > budget_bytes:  # move what we have to disk and stream the rest there
                spill = _Spill(spill_dir, len(values))
                for chunk in chunks:
                    spill.write(chunk)
                chunks = []
    label_array = np.concatenate(labels) if labels else np.zeros((0,), np.int64)
    if spill is not None:
        return Cache(spill.finish(), label_array, spill.folder,
                     [f"over the {budget_bytes / 2**20:.0f} MB budget: spilled to disk as float16 ({spill.folder})"])
    if buffers is not None:
        return Cache([buffer[:rows] for buffer in buffers], label_array)
    arrays = [_concatenate([chunk[i] for chunk in chunks]) for i in range(len(chunks[0]))] if chunks else []
    return Cache(arrays, label_array)


def _concatenate(parts: list) -> np.ndarray:
    """np.concatenate into a buffer TensorFlow can share without a copy (`tlkeras.memory.as_tensor`)."""
    out = aligned_empty((sum(len(p) for p in parts), *parts[0].shape[1:]), parts[0].dtype)
    return np.concatenate(parts, out=out)


def cached_dataset(
    cache: Cache, batch_size: int, *, shuffle: bool, seed: Optional[int] = None, epoch_rows: Optional[int] = None
):
    """Batched (inputs, label) over a cache. With `epoch_rows` (several views per image) the data
    repeats and an epoch is `epoch_rows` rows drawn from the whole shuffled pool. The shuffle
    follows `seed`, or the global seed (keras.utils.set_random_seed) when None."""
    n = len(cache.labels)
    inputs = tuple(cache.arrays) if len(cache.arrays) > 1 else cache.arrays[0]
    repeat = epoch_rows is not None and epoch_rows < n
    drop_remainder = shuffle and static_shapes()  # TPU: one shape
    if cache.folder is None:
        ds = gathered_batches(inputs, cache.labels, batch_size, shuffle=shuffle, seed=seed, repeat=repeat,
                              drop_remainder=drop_remainder)
    else:
        ds = _memmap_batches(cache, batch_size, shuffle, seed, repeat, drop_remainder)
    if any(a.dtype == np.float16 for a in cache.arrays):
        ds = ds.map(lambda x, y: (keras.tree.map_structure(
            lambda t: tf.cast(t, tf.float32) if t.dtype == tf.float16 else t, x), y))
    return ds.prefetch(AUTOTUNE)


def _memmap_batches(cache: Cache, batch_size: int, shuffle: bool, seed: Optional[int], repeat: bool,
                    drop_remainder: bool) -> tf.data.Dataset:
    """Batches read from a spilled cache's files, a batch per step of the generator (`_read_rows`). Row order:
    a permutation per pass (the same as shuffling the rows with `seed`), passes joined when the data repeats."""
    n = len(cache.labels)
    rng = np.random.default_rng(seed if seed is not None else np.random.randint(2**31))
    single = len(cache.arrays) == 1
    arrays, labels = list(cache.arrays), cache.labels

    def batches():
        pending = np.zeros(0, np.int64)
        while True:
            order = rng.permutation(n) if shuffle else np.arange(n)
            pending = np.concatenate([pending, order])
            while len(pending) >= batch_size or (not repeat and len(pending) and not drop_remainder):
                rows, pending = pending[:batch_size], pending[batch_size:]
                x = tuple(_read_rows(a, rows) for a in arrays)
                yield (x[0] if single else x), labels[rows]
            if not repeat:
                return

    first = batch_size if drop_remainder or repeat else None  # every batch full: a static shape (TPU)
    specs = tuple(tf.TensorSpec([first, *a.shape[1:]], tf.as_dtype(a.dtype)) for a in cache.arrays)
    signature = (specs[0] if single else specs,
                 tf.TensorSpec([first, *cache.labels.shape[1:]], tf.as_dtype(cache.labels.dtype)))
    ds = tf.data.Dataset.from_generator(batches, output_signature=signature)
    if repeat:
        return ds
    return ds.apply(tf.data.experimental.assert_cardinality(n // batch_size if drop_remainder else
                                                             math.ceil(n / batch_size)))


def _read_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """array[rows] of a spilled (memory-mapped) array, read from its file with os.preadv rather than through
    the map: the pages read stay in the kernel's page cache and out of the process's resident memory, which
    reading through the map would grow by the whole file over an epoch (1 GB at 5000 images at 224 px with
    tlkeras's defaults, see RESULTS.md). Arrays in memory, and systems without preadv, are indexed."""
    name = getattr(array, "filename", None)
    whole = (name is not None and array.flags.c_contiguous and hasattr(os, "preadv")
             and os.path.getsize(name) == array.offset + array.nbytes)  # all of its file: row r is where it seems
    if not whole:
        return np.asarray(array[rows])
    row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize
    out = np.empty((len(rows), *array.shape[1:]), array.dtype)
    view = memoryview(out.reshape(-1).view(np.uint8))
    fd = os.open(name, os.O_RDONLY)
    try:
        for j, row in enumerate(rows.tolist()):
            os.preadv(fd, [view[j * row_bytes:(j + 1) * row_bytes]], array.offset + row * row_bytes)
    finally:
        os.close(fd)
    return out


def steps_for(rows: int, batch_size: int) -> int:
    return max(1, math.ceil(rows / batch_size))
