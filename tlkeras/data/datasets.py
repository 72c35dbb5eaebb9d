"""tf.data pipelines for training and validation from folders, arrays, tf.data or TFDS.

Example:

>>> import numpy as np
>>> from tlkeras.config import FinetuneConfig
>>> x = np.random.default_rng(0).integers(0, 255, (20, 8, 8, 3)).astype("uint8")
>>> y = np.array(["cat", "dog"] * 10)
>>> cfg = FinetuneConfig.from_dict({"val_split": 0.2, "batch_size": 4})
>>> bundle = make_datasets(cfg, (32, 32), data=(x, y))
>>> bundle.class_names, bundle.train_count, bundle.val_count
(['cat', 'dog'], 16, 4)
>>> images, labels = next(iter(bundle.train))
>>> tuple(images.shape), images.dtype.name
((4, 32, 32, 3), 'float32')
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from tlkeras._logging import get_logger
from tlkeras.config import FinetuneConfig
from tlkeras.data import images as image_io
from tlkeras.data.augment import build_augmenter
from tlkeras.distribute import static_shapes
from tlkeras.errors import DataError
from tlkeras.tasks import get_task
from tlkeras.tasks import labels as raw_labels
from tlkeras.tasks import encode_examples
from tlkeras.tasks.labels import pipeline_labels
from tlkeras.memory import as_tensor, gathered_batches

AUTOTUNE = tf.data.AUTOTUNE


# === Examples: a labelled collection before it becomes a pipeline ===


@dataclass
class Examples:
    """Labelled images of one split, from files, arrays or a tf.data.Dataset."""

    labels: np.ndarray
    paths: Optional[list[str]] = None
    arrays: Optional[np.ndarray] = None  # raw images as given (any size, 1/3/4 channels)
    pixels: Optional[np.ndarray] = None  # already decoded and resized: float32 [N, h, w, 3]
    dataset: Optional[tf.data.Dataset] = None
    index: Optional[np.ndarray] = field(default=None)  # rows of `dataset` in this split
    max_pixels: Optional[int] = None  # files: the largest image they are decoded up to (None: the default)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: np.ndarray) -> "Examples":
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        labels = self.labels[rows]
        if self.paths is not None:
            return Examples(labels, paths=[self.paths[i] for i in rows],
                            pixels=self.pixels[rows] if self.pixels is not None else None, max_pixels=self.max_pixels)
        if self.arrays is not None:
            return Examples(labels, arrays=self.arrays[rows])
        base = self.index if self.index is not None else np.arange(len(self.labels))
        return Examples(labels, dataset=self.dataset, index=base[rows])

    def split(self, first, second) -> tuple["Examples", "Examples"]:
        """(subset(first), subset(second)) without a copy of decoded pixels: the buffer's rows are
        put in place in that order (this object's labels and paths with them, so it stays whole)
        and each split is a view of it. Two copies of a gigabyte of pixels would double the memory
        that `memory_budget_mb` allowed for them."""
        if self.pixels is None:
            return self.subset(first), self.subset(second)
        first, second = np.sort(np.asarray(first, np.int64)), np.sort(np.asarray(second, np.int64))
        order = np.concatenate([first, second])
        order = np.concatenate([order, np.setdiff1d(np.arange(len(self)), order)])
        reorder_rows(self.pixels, order)
        self.labels = self.labels[order] if not isinstance(self.labels, list) else [self.labels[i] for i in order]
        self.paths = [self.paths[i] for i in order] if self.paths is not None else None
        ends = (0, len(first), len(first) + len(second))
        return tuple(Examples(self.labels[a:b], paths=self.paths[a:b] if self.paths is not None else None,
                              pixels=self.pixels[a:b], max_pixels=self.max_pixels) for a, b in zip(ends, ends[1:]))

    def identities(self) -> set:
        """What makes two examples the same one: a file's real path (examples without files: none)."""
        return {os.path.realpath(p) for p in self.paths} if self.paths is not None else set()

    def content_keys(self) -> Optional[list]:
        """A key per row that copies of one example share - a file's bytes whatever its name, an array's values - or
        None where rows cannot be compared (a tf.data source)."""
        if self.paths is not None:
            return file_keys(self.paths)
        rows = self.arrays if self.arrays is not None else self.pixels
        if rows is None:
            return None
        return [hashlib.sha1(np.ascontiguousarray(row).tobytes()).hexdigest() for row in rows]

    def joined(self, other: "Examples") -> "Examples":
        """These examples and `other`'s in one collection (files with files, arrays with arrays of one shape):
        what self-training's student trains on (`tlkeras.self_training`)."""
        labels = np.concatenate([np.asarray(self.labels), np.asarray(other.labels)])
        if self.paths is not None and other.paths is not None:
            both = self.pixels is not None and other.pixels is not None
            return Examples(labels, paths=self.paths + other.paths, max_pixels=self.max_pixels,
                            pixels=np.concatenate([self.pixels, other.pixels]) if both else None)
        if (self.arrays is not None and other.arrays is not None
                and self.arrays.shape[1:] == other.arrays.shape[1:]):
            return Examples(labels, arrays=np.concatenate([self.arrays, other.arrays]))
        raise DataError(f"unlabeled_data: {_storage(other)} cannot train beside the labelled {_storage(self)}; give "
                        "both as image files (folders or CSVs) or both as arrays of one shape.")

    def images(self, image_size: tuple[int, int], shuffle_seed: Optional[int] = None) -> tf.data.Dataset:
        """Unbatched (float32 [h, w, 3] in [0, 255], label) in a fixed order: int32 class indices,
        or float32 multi-hot rows. With `shuffle_seed`, files are read in an order shuffled anew
        each epoch (their names are shuffled, before decoding). Decoded pixels kept in memory are
        batched by `build_pipeline` itself (`tlkeras.memory.gathered_batches`)."""
        labels = pipeline_labels(self.labels)
        if self.paths is not None:
            ds = tf.data.Dataset.from_tensor_slices((image_io.file_names(self.paths), labels))
            if shuffle_seed is not None:
                ds = ds.shuffle(len(self.paths), seed=shuffle_seed, reshuffle_each_iteration=True)
            return ds.map(
                lambda p, y: (image_io.load_image(p, image_size, self.max_pixels), y), num_parallel_calls=AUTOTUNE
            )
        if self.arrays is not None:
            ds = tf.data.Dataset.from_tensor_slices((as_tensor(self.arrays), labels))
            return ds.map(lambda x, y: (image_io.prepare_image(x, image_size), y), num_parallel_calls=AUTOTUNE)
        ds = self.dataset
        if self.index is not None:
            keep = np.zeros(int(self.index.max()) + 1 if len(self.index) else 0, dtype=bool)
            keep[self.index] = True
            keep_t = tf.constant(keep)
            limit = len(keep)
            ds = ds.enumerate().filter(
                lambda i, xy: tf.logical_and(i < limit, tf.gather(keep_t, tf.minimum(i, limit - 1)))
            )
            ds = ds.map(lambda i, xy: xy)
        label_type = tf.as_dtype(labels.dtype)
        ds = ds.map(
            lambda x, y: (image_io.prepare_image(x, image_size), tf.cast(y, label_type)), num_parallel_calls=AUTOTUNE
        )
        return ds.apply(tf.data.experimental.assert_cardinality(len(self.labels)))

    def sample_bytes(self, count: int, task) -> list[bytes]:
        """Up to `count` encoded images spread over the classes (for checking an export)."""
        return self.encoded(task.spread_rows(self.labels, count))

    def encoded(self, rows) -> list[bytes]:
        """The images of `rows` as encoded bytes: a file's own bytes, else PNG of the pixels."""
        rows = [int(r) for r in rows]
        if self.paths is not None:
            return [tf.io.read_file(name).numpy() for name in image_io.file_names([self.paths[i] for i in rows])]
        if self.arrays is not None:
            return [_png(self.arrays[i]) for i in rows]
        wanted = set(rows)
        found = {}
        for position, (x, _) in enumerate(self.images_raw()):
            if position in wanted:
                found[position] = _png(x)
                if len(found) == len(wanted):
                    break
        return [found[r] for r in rows]

    def images_raw(self):
        ds = self.dataset
        if self.index is not None:
            keep = set(int(i) for i in self.index)
            for i, xy in enumerate(ds.as_numpy_iterator()):
                if i in keep:
                    yield xy
        else:
            yield from ds.as_numpy_iterator()


def _png(image) -> bytes:
    image = np.clip(np.asarray(image, dtype=np.float64), 0, 255).round().astype(np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    return tf.io.encode_png(image).numpy()


# === The bundle make_datasets returns ===


@dataclass
class DataBundle:
    """Training and validation pipelines plus what was learned about the data.

    `train` is shuffled but not augmented; `augmenter` (or None) is the random augmentation
    that training applies to it.
    """

    train: tf.data.Dataset
    val: Optional[tf.data.Dataset]
    class_names: list[str]
    train_examples: Examples
    val_examples: Optional[Examples]
    skipped: list[tuple[str, str]]
    class_weight: Optional[dict[int, float]]
    cached: bool
    augmenter: Any = None
    task: Any = None  # the Task the labels are encoded for (tlkeras.tasks)
    # what the Task fixed from the training split (`Task.options`: a regression's target mean and deviation)
    task_options: dict = field(default_factory=dict)
    # `train` built anew (its shuffle from the start): a stage that trains on the pipeline takes its own, so that
    # a resumed stage can take the same epoch orders as an uninterrupted one (`tlkeras.training.runner`)
    rebuild_train: Any = None

    @property
    def train_count(self) -> int:
        return len(self.train_examples)

    @property
    def val_count(self) -> int:
        return len(self.val_examples) if self.val_examples is not None else 0

    def class_counts(self, split: str = "train") -> dict[str, int]:
        examples = self.train_examples if split == "train" else self.val_examples
        if examples is None:
            return {}
        counts = self.task.class_counts(examples.labels, len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, counts)}


def make_datasets(
    cfg: FinetuneConfig,
    image_size: tuple[int, int],
    *,
    data: Any = None,
    val_data: Any = None,
    batch_size: Optional[int] = None,
) -> DataBundle:
    """Build the training and validation tf.data pipelines described by `cfg`.

    `data` / `val_data` override `cfg.data` / `cfg.val_data`; `batch_size` (the global
    batch) overrides `cfg.batch_size`. Undecodable image files are skipped and reported.
    """
    log = get_logger()
    data = cfg.data if data is None else data
    val_data = cfg.val_data if val_data is None else val_data
    batch_size = batch_size or cfg.batch_size
    if data is None:
        raise DataError("data: nothing to train on; pass a folder of class subfolders, (x, y) arrays or a tf.data.Dataset.")

    budget = cfg.memory_budget_mb << 20 if cfg.cache_images in ("auto", True) else 0
    if cfg.cache_images is True:
        budget = 1 << 62  # asked for: cache whatever the size
    def load(source, key, names, task):  # raw labels: load_splits has the Task encode them, once
        return read_examples(source, key, names, image_size=image_size, budget_bytes=budget, task=task,
                             image_column=cfg.image_column, label_column=cfg.label_column,
                             label_separator=cfg.label_separator, max_pixels=cfg.max_image_pixels)

    train, val, class_names, skipped, task = load_splits(load, cfg, data, val_data, "images")

    h, w = image_size
    total = len(train) + (len(val) if val is not None else 0)
    estimate = total * h * w * 3 * 4
    if cfg.cache_images == "auto":
        cache = estimate <= cfg.memory_budget_mb << 20
        log.info(
            "image cache: %s (%d images x %dx%d float32 = %.0f MB, memory_budget_mb %d)",
            "in memory" if cache else "off", total, h, w, estimate / 2**20, cfg.memory_budget_mb,
        )
    else:
        cache = bool(cfg.cache_images)

    rebuild = functools.partial(build_pipeline, train, image_size, batch_size, training=True, cache=cache,
                                seed=cfg.seed)
    train_ds = rebuild()
    val_ds = (
        build_pipeline(val, image_size, batch_size, training=False, cache=cache, seed=cfg.seed)
        if val is not None
        else None
    )
    return DataBundle(
        train=train_ds,
        rebuild_train=rebuild,
        val=val_ds,
        class_names=class_names,
        train_examples=train,
        val_examples=val,
        skipped=skipped,
        class_weight=task.class_weight(cfg.class_weight, train.labels, class_names),
        cached=cache,
        augmenter=build_augmenter(cfg.augment.resolved("image"), cfg.seed),
        task=task,
        task_options=task.options(train.labels, cfg.task_settings()),
    )


def _storage(examples: Examples) -> str:
    if examples.paths is not None:
        return "image files"
    if examples.arrays is not None:
        return f"arrays of shape {list(examples.arrays.shape[1:])}"
    return "a tf.data.Dataset"


def load_unlabeled_images(source: Any, cfg: FinetuneConfig, image_size: tuple[int, int]):
    """(Examples with placeholder labels, skipped files) of unlabelled images: a folder (every image under it, in
    any subfolder), a .csv/.tsv with an `image_column`, a list of paths, or an array [N, H, W, C] of pixels."""
    files = isinstance(source, (list, tuple)) and source and all(isinstance(p, (str, os.PathLike)) for p in source)
    if isinstance(source, (str, os.PathLike)) or files:
        if isinstance(source, (str, os.PathLike)):
            paths, skipped = _unlabeled_files(os.fspath(source), cfg.image_column)
        else:
            paths, skipped = [os.fspath(p) for p in source], []
        budget = cfg.memory_budget_mb << 20 if cfg.cache_images in ("auto", True) else 0
        examples, bad = _scanned(paths, np.zeros(len(paths), np.int64), image_size, budget, cfg.max_image_pixels)
        return examples, skipped + bad
    x = np.asarray(source)
    if x.ndim not in (3, 4) or not len(x) or x.dtype.kind not in "uif":
        raise DataError(f"unlabeled_data: an array of shape {list(x.shape)} and dtype {x.dtype} is not a stack of "
                        "images; give pixels [N, H, W, C] (values 0-255), a folder or a list of image paths.")
    examples, _, _ = _load_arrays(x, np.zeros(len(x), np.int64), "unlabeled_data", None)  # as labelled arrays are
    return examples, []


def _unlabeled_files(path: str, image_column: str) -> tuple[list[str], list]:
    from tlkeras.data.tables import read_table

    if not os.path.exists(path):
        raise DataError(f"unlabeled_data: the path {path!r} does not exist.")
    if os.path.isfile(path):
        if not path.lower().endswith((".csv", ".tsv")):
            raise DataError(f"unlabeled_data: {path!r} is neither a folder of images nor a .csv/.tsv of image paths.")
        folder, paths, skipped = os.path.dirname(os.path.abspath(path)), [], []
        for line, row in read_table(path, "unlabeled_data", {image_column: "image_column"}):
            name = (row.get(image_column) or "").strip()
            image = name if os.path.isabs(name) else os.path.join(folder, name)
            if name and os.path.isfile(image):
                paths.append(image)
            else:
                skipped.append((image or f"{path}:{line}", f"no such file (row {line} of {os.path.basename(path)})"))
        return paths, skipped
    listed = sorted(os.path.join(top, name) for top, dirs, files in os.walk(path) for name in files
                    if not any(part.startswith(".") for part in os.path.relpath(top, path).split(os.sep) if part != "."))
    skipped = [(p, image_io.unreadable_image(p)) for p in listed if image_io.unreadable_image(p)]
    return [p for p in listed if image_io.is_image_file(p)], skipped


def with_training_images(bundle: DataBundle, examples: Examples, cfg: FinetuneConfig,
                         image_size: tuple[int, int]) -> DataBundle:
    """`bundle` training on `examples` instead (its validation, classes and augmentation unchanged)."""
    import dataclasses

    rebuild = functools.partial(build_pipeline, examples, image_size, cfg.batch_size, training=True,
                                cache=bundle.cached, seed=cfg.seed)
    return dataclasses.replace(bundle, train=rebuild(), rebuild_train=rebuild, train_examples=examples,
                               class_weight=bundle.task.class_weight(cfg.class_weight, examples.labels,
                                                                     bundle.class_names))


def load_splits(load, cfg: FinetuneConfig, data: Any, val_data: Any, noun: str):
    """(train, val, class_names, skipped, task) of images or texts: `data` loaded with `load(source,
    key, class_names, task setting)` (raw labels), the Task resolved from `cfg.task` and those
    labels, which it then encodes; `val_data` likewise or else the Task's stratified `val_split` of
    `data`; the classes checked (at least 2 for one label each, each with training examples, names
    fit for labels.txt)."""
    from tlkeras.data.tables import label_columns

    train, class_names, skipped = load(data, "data", cfg.class_names, cfg.task)
    table = isinstance(data, str) and os.path.isfile(data)
    task, class_names = encode_examples(train, cfg.task, "data",
                                        class_names if class_names is not None else cfg.class_names,
                                        columns=label_columns(cfg.label_column) if table else None)
    if val_data is not None:
        val, _, val_skipped = load(val_data, "val_data", class_names, task.name)
        val.labels, _ = task.encode_labels(val.labels, "val_data", class_names)
        skipped = skipped + val_skipped
    elif cfg.val_split > 0:
        train_rows, val_rows = task.split(train.labels, cfg.val_split, cfg.seed)
        train_rows, val_rows = keep_copies_in_training(train.content_keys(), train_rows, val_rows, noun)
        train, val = train.split(train_rows, val_rows)
        val = val if len(val) else None
    else:
        val = None
    if len(class_names) < task.min_classes:
        where = f" in {cfg.data!r}" if isinstance(cfg.data, str) else ""
        raise DataError(f"data: found only {len(class_names)} class ({', '.join(class_names)}){where}; a classifier "
                        f"needs at least {task.min_classes} - put each class's {noun} in a subfolder of its own (or "
                        "give them their own label).")
    check_class_names(class_names)
    counts = task.class_counts(train.labels, len(class_names))
    missing = [class_names[c] for c in range(len(class_names)) if not counts[c]]
    if missing:
        raise DataError(f"data: no training {noun} for class(es) {', '.join(missing)}.")
    if skipped:
        get_logger().warning("skipped %d %s that could not be read: %s%s", len(skipped), noun,
                             ", ".join(p for p, _ in skipped[:5]), " ..." if len(skipped) > 5 else "")
    return train, val, class_names, skipped, task


def file_keys(paths: list[str]) -> list:
    """A key per file that its copies share: its content's digest where another file has its size (the only files
    that can be copies: read just those), else its real path (the same file named twice shares that).

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> for name, data in (("a", b"x"), ("b", b"x"), ("c", b"yz")):
    ...     _ = open(os.path.join(folder, name), "wb").write(data)
    >>> keys = file_keys([os.path.join(folder, n) for n in "abc"])
    >>> keys[0] == keys[1], keys[0] == keys[2]
    (True, False)
    """
    import collections

    def size(path):
        try:
            return os.path.getsize(path) if "://" not in path else None
        except OSError:
            return None

    sizes = [size(p) for p in paths]
    shared = {s for s, n in collections.Counter(sizes).items() if n > 1 and s is not None}
    keys = []
    for path, length in zip(paths, sizes):
        if length in shared:
            digest = hashlib.sha1()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            keys.append(digest.hexdigest())
        else:
            keys.append(os.path.realpath(path) if "://" not in path else path)
    return keys


def keep_copies_in_training(keys: Optional[list], train_rows, val_rows, noun: str):
    """(train rows, validation rows) with every validation row that has a copy among the training rows (the same
    `keys`) moved to training: validation then holds only examples the model has not seen. Logged with the count."""
    if keys is None:
        return train_rows, val_rows
    seen = {keys[i] for i in train_rows}
    copies = np.array([i for i in val_rows if keys[i] in seen], np.int64)
    repeated = len(keys) - len(set(keys))
    if repeated:
        where = (f"; {len(copies)} drawn into validation were moved to training, so that validation holds only "
                 f"{noun} the model has not seen" if len(copies) else "")
        get_logger().warning("data: %d %s are copies of others (the same file or the same content)%s", repeated,
                             noun, where)
    if not len(copies):
        return train_rows, val_rows
    return (np.sort(np.concatenate([np.asarray(train_rows, np.int64), copies])),
            np.setdiff1d(np.asarray(val_rows, np.int64), copies))


def build_pipeline(
    examples: Examples,
    image_size: tuple[int, int],
    batch_size: int,
    *,
    training: bool,
    cache: bool,
    seed: int,
) -> tf.data.Dataset:
    """Decode in parallel, cache, shuffle (training), batch, prefetch.

    Augmentation is not applied here: `DataBundle.augmenter` is, by `finetune`, either on the
    fly or once per cached view.
    """
    n = len(examples)
    if examples.pixels is not None and tuple(examples.pixels.shape[1:3]) == tuple(image_size):
        return gathered_batches(examples.pixels, pipeline_labels(examples.labels), batch_size, shuffle=training,
                                seed=seed, drop_remainder=training and static_shapes()).prefetch(AUTOTUNE)
    if not cache and examples.arrays is None and examples.paths is not None:
        # Files decoded as they are read: their names are shuffled, each epoch, before decoding - a full
        # shuffle at no memory cost, where a buffer of decoded images would hold up to 1024 of them
        # (600 MB at 224 px) outside memory_budget_mb.
        ds = examples.images(image_size, shuffle_seed=seed if training else None)
    else:
        ds = examples.images(image_size)
        if cache and examples.pixels is None:
            ds = ds.cache()
        if training:
            ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=training and static_shapes()).prefetch(AUTOTUNE)


def reorder_rows(array: np.ndarray, order: np.ndarray) -> None:
    """array[:] = array[order] in place, for a permutation `order`: one row held at a time, along the
    permutation's cycles, where `array[order]` would make a second array.

    >>> a = np.array([10, 11, 12, 13])
    >>> reorder_rows(a, np.array([2, 0, 3, 1]))
    >>> a.tolist()
    [12, 10, 13, 11]
    """
    done = np.zeros(len(order), bool)
    for start in range(len(order)):
        if done[start]:
            continue
        held, k = array[start].copy(), start
        while True:
            done[k] = True
            source = int(order[k])
            if source == start:
                array[k] = held
                break
            array[k] = array[source]
            k = source


# === Sources ===


TABLE_EXTENSIONS = (".csv", ".tsv")


def load_examples(
    source: Any,
    key: str,
    class_names: list[str] | None = None,
    *,
    task: str = "single_label",
    image_size: tuple[int, int] | None = None,
    budget_bytes: int = 0,
    **table,
):
    """(Examples, class_names, skipped files) from any supported data source, the labels encoded
    for `task` ("auto" picks it from the labels; see `tlkeras.tasks`).

    For image folders whose decoded, resized pixels (at `image_size`) fit `budget_bytes`, the
    scan for undecodable files keeps those pixels, so no image is decoded twice. `table` holds
    `image_column`, `label_column`, `label_separator` for a CSV/TSV of image paths and labels.
    """
    examples, names, skipped = read_examples(source, key, class_names, task=task, image_size=image_size,
                                             budget_bytes=budget_bytes, **table)
    _, names = encode_examples(examples, task, key, names if names is not None else class_names)
    return examples, names, skipped


def read_examples(
    source: Any,
    key: str,
    class_names: list[str] | None = None,
    *,
    task: str = "auto",
    image_size: tuple[int, int] | None = None,
    budget_bytes: int = 0,
    image_column: str = "image",
    label_column: str = "label",
    label_separator: str = " ",
    max_pixels: Optional[int] = None,
):
    """(Examples with raw labels, class names or None, skipped files): what a source holds, before a
    Task encodes its labels (`tlkeras.tasks.labels`). Folders give class indices and their names;
    image files declaring more than `max_pixels` are skipped (see `tlkeras.data.images.decode_image`)."""
    if isinstance(source, str) and source.startswith("tfds:"):
        return _load_tfds(source, key, class_names)
    if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        path = os.fsdecode(source) if not isinstance(source, str) else source
        if path.lower().endswith(TABLE_EXTENSIONS):
            return _load_image_table(path, key, class_names, image_size, budget_bytes, task=task,
                                     image_column=image_column, label_column=label_column, separator=label_separator,
                                     max_pixels=max_pixels)
        return _load_folder(path, key, class_names, image_size, budget_bytes, max_pixels)
    if isinstance(source, tf.data.Dataset):
        return _load_dataset(source, key, class_names)
    if isinstance(source, (tuple, list)) and len(source) == 2:
        return _load_arrays(source[0], source[1], key, class_names)
    raise DataError(
        f"{key}: {type(source).__name__} is not a data source; pass a folder path, a .csv/.tsv of image paths and "
        "labels, 'tfds:NAME[:SPLIT]', a tuple (images, labels) of arrays or a tf.data.Dataset of (image, label)."
    )


def _load_folder(root: str, key: str, class_names, image_size=None, budget_bytes=0, max_pixels=None):
    if not (tf.io.gfile.exists(root) if "://" in root else os.path.exists(root)):  # gs://... through tf.io
        raise DataError(f"{key}: the path {root!r} does not exist.")
    folder = image_io.list_image_folder(root, class_names)
    examples, bad = _scanned(folder.paths, np.asarray(folder.labels, dtype=np.int64), image_size, budget_bytes,
                             max_pixels)
    bad = folder.skipped + bad
    for c, name in enumerate(folder.class_names):
        if class_names is None and not np.any(examples.labels == c):
            raise DataError(f"{key}: no decodable images in the class folder {os.path.join(root, name)!r}.")
    return examples, folder.class_names, bad


def _scanned(paths: list[str], labels, image_size, budget_bytes, max_pixels=None):
    """Examples of the decodable files among `paths` (labels: an array, or a list of label sets)."""
    keep_pixels = image_size is not None and len(paths) * image_size[0] * image_size[1] * 12 <= budget_bytes
    bad, pixels = image_io.scan_images(paths, image_size if keep_pixels else None, max_pixels)
    bad_paths = {p for p, _ in bad}
    keep = [i for i, p in enumerate(paths) if p not in bad_paths]
    kept = [labels[i] for i in keep] if isinstance(labels, list) else labels[keep]
    return Examples(kept, paths=[paths[i] for i in keep], pixels=pixels, max_pixels=max_pixels), bad


def _load_image_table(path: str, key: str, class_names, image_size, budget_bytes, *, task: str, image_column: str,
                      label_column: str, separator: str, max_pixels=None):
    """A CSV/TSV with an image path column and a labels column (several labels in a cell separated
    by `separator` make a multi-label task); paths relative to the table's folder."""
    from tlkeras.data.tables import label_cell, label_columns, read_table

    table = read_table(path, key, {image_column: "image_column",
                                   **{c: "label_column" for c in label_columns(label_column)}})
    folder = os.path.dirname(os.path.abspath(path))
    cells, paths, skipped = [], [], []
    for line, row in table:
        name = (row.get(image_column) or "").strip()
        if not name:
            skipped.append((f"{path}:{line}", f"empty {image_column!r}"))
            continue
        image = name if os.path.isabs(name) or "://" in name else os.path.join(folder, name)
        if "://" not in image and not os.path.isfile(image):
            skipped.append((image, f"no such file (row {line} of {os.path.basename(path)})"))
            continue
        paths.append(image)
        cells.append(label_cell(row, label_column))
    labels, rows = raw_labels.read_label_cells(cells, task, separator)
    skipped += [(paths[i], f"empty {label_column!r}") for i in sorted(set(range(len(paths))) - set(rows))]
    paths = [paths[i] for i in rows]
    if not paths:
        raise DataError(f"{key}: {path!r} holds no rows with an existing image file and a label.")
    examples, bad = _scanned(paths, labels, image_size, budget_bytes, max_pixels)
    return examples, class_names, skipped + bad


def _load_arrays(x, y, key: str, class_names):
    x = np.asarray(x)
    y = y if raw_labels.is_label_sets(y) else np.asarray(y)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise DataError(
            f"{key}: images must have shape (N, H, W), (N, H, W, 1), (N, H, W, 3) or (N, H, W, 4); got {x.shape}."
        )
    if len(y) != len(x) or (isinstance(y, np.ndarray) and y.ndim not in (1, 2)):
        shape = y.shape if isinstance(y, np.ndarray) else (len(y),)
        raise DataError(f"{key}: labels must have shape ({len(x)},) (or ({len(x)}, classes) multi-hot) to match "
                        f"the images; got {shape}.")
    if np.issubdtype(x.dtype, np.floating) and x.size and float(np.nanmax(x)) <= 1.0:
        get_logger().warning(
            "%s: image values are all <= 1.0; tlkeras expects pixels in [0, 255] (multiply by 255).", key
        )
    return Examples(y, arrays=x), class_names, []


def check_class_names(class_names) -> None:
    """Class names go into labels.txt (one per line) and the SavedModel's vocabulary: refuse names
    that are empty or hold line breaks or control characters. Names are never used as paths
    unsanitised (see `tlkeras.atomic.safe_filename`), so "../../x" is a harmless name.

    >>> check_class_names(["cat", "../../x", "naïve café"])
    >>> check_class_names(["cat", "two\\nlines"])
    Traceback (most recent call last):
    ...
    tlkeras.errors.DataError: class name 'two\\nlines' holds a line break or control character; ...
    """
    for name in class_names:
        if not name.strip() or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
            raise DataError(
                f"class name {name!r} " + ("is empty" if not name.strip() else "holds a line break or control character")
                + "; class names are written one per line to labels.txt and the model: rename it."
            )


def encode_labels(y: np.ndarray, key: str, class_names):
    """(int64 labels, class names) from integer class indices or label strings (sorted into names):
    the single-label Task's encoding (`tlkeras.tasks.single_label`)."""
    return get_task("single_label").encode_labels(np.asarray(y), key, class_names)


def _load_dataset(ds: tf.data.Dataset, key: str, class_names):
    spec = ds.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise DataError(
            f"{key}: a tf.data.Dataset must yield (image, label) pairs; it yields {spec}. "
            "For TFDS use as_supervised=True."
        )
    image_spec, label_spec = spec
    if image_spec.shape.rank == 4:
        ds = ds.unbatch()
        image_spec, label_spec = ds.element_spec
    if image_spec.shape.rank != 3:
        raise DataError(f"{key}: images must be [H, W, C] (or batches of them); got {image_spec.shape}.")
    multi_hot = label_spec.shape.rank == 1
    if label_spec.shape.rank not in (0, 1) or (not multi_hot and not label_spec.dtype.is_integer):
        raise DataError(f"{key}: labels of a tf.data.Dataset must be integer class indices (or multi-hot rows); got "
                        f"{label_spec.dtype.name} {label_spec.shape}.")
    if ds.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise DataError(f"{key}: the tf.data.Dataset is infinite (.repeat()?); pass a finite one.")
    values = [np.asarray(y) for y in ds.map(lambda x, y: y).as_numpy_iterator()]
    if multi_hot:
        labels = np.stack(values) if values else np.zeros((0, 0), np.float32)
    else:
        labels = np.asarray(values, dtype=np.int64).reshape(-1)
    return Examples(labels, dataset=ds), class_names, []


def _load_tfds(source: str, key: str, class_names):
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(f"{key}: {source!r} needs tensorflow-datasets: pip install \"tlkeras[tfds]\".") from None
    parts = source.split(":")
    name = parts[1]
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    try:
        ds, info = tfds.load(name, split=split, as_supervised=True, with_info=True)
    except Exception as e:  # tfds raises many types (DatasetNotFoundError, ValueError, ...)
        raise DataError(f"{key}: could not load {source!r} from TFDS: {str(e).splitlines()[0]}") from None
    names = None
    label_feature = info.features.get("label") if hasattr(info.features, "get") else None
    if label_feature is not None and hasattr(label_feature, "names"):
        names = list(label_feature.names)
    examples, found, _ = _load_dataset(ds, key, class_names or names)
    return examples, found, []


# === Splits and weights ===


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val): `fraction` of every class (rounded, at least 1 where a class has 2+);
    the split of the Task the labels are encoded for (multi-hot rows: iterative stratification)."""
    labels = np.asarray(labels)
    return get_task("multi_label" if labels.ndim == 2 else "single_label").split(labels, fraction, seed)


def class_weights(setting, labels: np.ndarray, class_names: list[str]) -> Optional[dict[int, float]]:
    """Keras `class_weight` of a single-label task (see `tlkeras.tasks.SingleLabel.class_weight`)."""
    return get_task("single_label").class_weight(setting, labels, class_names)
