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
from tlkeras.utils import as_tensor

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

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: np.ndarray) -> "Examples":
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        labels = self.labels[rows]
        if self.paths is not None:
            return Examples(labels, paths=[self.paths[i] for i in rows],
                            pixels=self.pixels[rows] if self.pixels is not None else None)
        if self.arrays is not None:
            return Examples(labels, arrays=self.arrays[rows])
        base = self.index if self.index is not None else np.arange(len(self.labels))
        return Examples(labels, dataset=self.dataset, index=base[rows])

    def images(self, image_size: tuple[int, int]) -> tf.data.Dataset:
        """Unbatched (float32 [h, w, 3] in [0, 255], int32 label) in a fixed order."""
        labels = self.labels.astype(np.int32)
        if self.pixels is not None and tuple(self.pixels.shape[1:3]) == tuple(image_size):
            return tf.data.Dataset.from_tensor_slices((as_tensor(self.pixels), labels))
        if self.paths is not None:
            ds = tf.data.Dataset.from_tensor_slices((self.paths, labels))
            return ds.map(
                lambda p, y: (image_io.load_image(p, image_size), y), num_parallel_calls=AUTOTUNE
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
        ds = ds.map(
            lambda x, y: (image_io.prepare_image(x, image_size), tf.cast(y, tf.int32)), num_parallel_calls=AUTOTUNE
        )
        return ds.apply(tf.data.experimental.assert_cardinality(len(self.labels)))

    def sample_bytes(self, count: int) -> list[bytes]:
        """Up to `count` encoded images spread over the classes (for checking an export)."""
        return self.encoded(_spread_rows(self.labels, count))

    def encoded(self, rows) -> list[bytes]:
        """The images of `rows` as encoded bytes: a file's own bytes, else PNG of the pixels."""
        rows = [int(r) for r in rows]
        if self.paths is not None:
            return [tf.io.read_file(self.paths[i]).numpy() for i in rows]
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


def _spread_rows(labels: np.ndarray, count: int) -> list[int]:
    """Row indices taking the first image of each class in turn (round robin)."""
    by_class = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    rows: list[int] = []
    while len(rows) < min(count, len(labels)):
        for members in by_class:
            if members and len(rows) < count:
                rows.append(int(members.pop(0)))
    return rows


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
        counts = np.bincount(examples.labels, minlength=len(self.class_names))
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
    train, val, class_names, skipped = load_splits(
        lambda source, key, names: load_examples(source, key, names, image_size=image_size, budget_bytes=budget),
        cfg, data, val_data, "images",
    )

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

    train_ds = build_pipeline(train, image_size, batch_size, training=True, cache=cache, seed=cfg.seed)
    val_ds = (
        build_pipeline(val, image_size, batch_size, training=False, cache=cache, seed=cfg.seed)
        if val is not None
        else None
    )
    return DataBundle(
        train=train_ds,
        val=val_ds,
        class_names=class_names,
        train_examples=train,
        val_examples=val,
        skipped=skipped,
        class_weight=class_weights(cfg.class_weight, train.labels, class_names),
        cached=cache,
        augmenter=build_augmenter(cfg.augment, cfg.seed),
    )


def load_splits(load, cfg: FinetuneConfig, data: Any, val_data: Any, noun: str):
    """(train, val, class_names, skipped) of images or texts: `data` loaded with `load(source, key,
    class_names)`, and `val_data` likewise or else a stratified `val_split` of `data`; the classes
    checked (at least 2, each with training examples, names fit for labels.txt)."""
    train, class_names, skipped = load(data, "data", cfg.class_names)
    if val_data is not None:
        val, _, val_skipped = load(val_data, "val_data", class_names)
        skipped = skipped + val_skipped
    elif cfg.val_split > 0:
        train_rows, val_rows = stratified_split(train.labels, cfg.val_split, cfg.seed)
        val = train.subset(val_rows) if len(val_rows) else None
        train = train.subset(train_rows)
    else:
        val = None
    if len(class_names) < 2:
        where = f" in {cfg.data!r}" if isinstance(cfg.data, str) else ""
        raise DataError(f"data: found only {len(class_names)} class ({', '.join(class_names)}){where}; a classifier "
                        f"needs at least 2 - put each class's {noun} in a subfolder of its own (or give them "
                        "their own label).")
    check_class_names(class_names)
    missing = [class_names[c] for c in range(len(class_names)) if not np.any(train.labels == c)]
    if missing:
        raise DataError(f"data: no training {noun} for class(es) {', '.join(missing)}.")
    if skipped:
        get_logger().warning("skipped %d %s that could not be read: %s%s", len(skipped), noun,
                             ", ".join(p for p, _ in skipped[:5]), " ..." if len(skipped) > 5 else "")
    return train, val, class_names, skipped


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
    in_memory = examples.pixels is not None or examples.arrays is not None
    if training and not cache and not in_memory and examples.paths is not None:
        # Shuffle file names, not decoded images: a full shuffle at no memory cost.
        order = np.random.default_rng(seed).permutation(n)
        examples = Examples(examples.labels[order], paths=[examples.paths[i] for i in order])
    ds = examples.images(image_size)
    if cache and examples.pixels is None:
        ds = ds.cache()
    if training:
        full = cache or in_memory or examples.paths is None
        ds = ds.shuffle(n if full else min(n, 1024), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=training and static_shapes()).prefetch(AUTOTUNE)


# === Sources ===


def load_examples(
    source: Any,
    key: str,
    class_names: list[str] | None = None,
    *,
    image_size: tuple[int, int] | None = None,
    budget_bytes: int = 0,
):
    """(Examples, class_names, skipped files) from any supported data source.

    For image folders whose decoded, resized pixels (at `image_size`) fit `budget_bytes`, the
    scan for undecodable files keeps those pixels, so no image is decoded twice.
    """
    if isinstance(source, str) and source.startswith("tfds:"):
        return _load_tfds(source, key, class_names)
    if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        return _load_folder(str(source), key, class_names, image_size, budget_bytes)
    if isinstance(source, tf.data.Dataset):
        return _load_dataset(source, key, class_names)
    if isinstance(source, (tuple, list)) and len(source) == 2:
        return _load_arrays(source[0], source[1], key, class_names)
    raise DataError(
        f"{key}: {type(source).__name__} is not a data source; pass a folder path, 'tfds:NAME[:SPLIT]', "
        "a tuple (images, labels) of arrays or a tf.data.Dataset of (image, label)."
    )


def _load_folder(root: str, key: str, class_names, image_size=None, budget_bytes=0):
    import os

    if not (tf.io.gfile.exists(root) if "://" in root else os.path.exists(root)):  # gs://... through tf.io
        raise DataError(f"{key}: the path {root!r} does not exist.")
    folder = image_io.list_image_folder(root, class_names)
    keep_pixels = image_size is not None and len(folder.paths) * image_size[0] * image_size[1] * 12 <= budget_bytes
    bad, pixels = image_io.scan_images(folder.paths, image_size if keep_pixels else None)
    bad_paths = {p for p, _ in bad}
    keep = [i for i, p in enumerate(folder.paths) if p not in bad_paths]
    labels = np.asarray(folder.labels, dtype=np.int64)[keep]
    examples = Examples(labels, paths=[folder.paths[i] for i in keep], pixels=pixels)
    for c, name in enumerate(folder.class_names):
        if class_names is None and not np.any(labels == c):
            raise DataError(f"{key}: no decodable images in the class folder {os.path.join(root, name)!r}.")
    return examples, folder.class_names, bad


def _load_arrays(x, y, key: str, class_names):
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise DataError(
            f"{key}: images must have shape (N, H, W), (N, H, W, 1), (N, H, W, 3) or (N, H, W, 4); got {x.shape}."
        )
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{key}: labels must have shape ({len(x)},) to match the images; got {y.shape}.")
    if np.issubdtype(x.dtype, np.floating) and x.size and float(np.nanmax(x)) <= 1.0:
        get_logger().warning(
            "%s: image values are all <= 1.0; tlkeras expects pixels in [0, 255] (multiply by 255).", key
        )
    labels, class_names = encode_labels(y, key, class_names)
    return Examples(labels, arrays=x), class_names, []


def check_class_names(class_names) -> None:
    """Class names go into labels.txt (one per line) and the SavedModel's vocabulary: refuse names
    that are empty or hold line breaks or control characters. Names are never used as paths
    unsanitised (see `tlkeras.utils.safe_filename`), so "../../x" is a harmless name.

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
    """(int64 labels, class names) from integer class indices or label strings (sorted into names)."""
    if y.dtype.kind in "iu":
        labels = y.astype(np.int64)
        if labels.size and labels.min() < 0:
            raise DataError(f"{key}: labels must be class indices >= 0; found {labels.min()}.")
        if class_names is None:
            class_names = [str(i) for i in range(int(labels.max()) + 1 if labels.size else 0)]
        elif labels.size and labels.max() >= len(class_names):
            raise DataError(f"{key}: label {labels.max()} is out of range for {len(class_names)} classes.")
        return labels, list(class_names)
    names = [str(v) for v in y]
    if class_names is None:
        class_names = sorted(set(names))
    lookup = {name: i for i, name in enumerate(class_names)}
    unknown = sorted(set(names) - set(lookup))
    if unknown:
        raise DataError(f"{key}: labels {', '.join(unknown[:5])} are not among the classes {', '.join(class_names)}.")
    return np.array([lookup[n] for n in names], dtype=np.int64), list(class_names)


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
    if not label_spec.dtype.is_integer:
        raise DataError(f"{key}: labels of a tf.data.Dataset must be integer class indices; got {label_spec.dtype.name}.")
    if ds.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise DataError(f"{key}: the tf.data.Dataset is infinite (.repeat()?); pass a finite one.")
    labels = np.fromiter((int(y) for y in ds.map(lambda x, y: y).as_numpy_iterator()), dtype=np.int64)
    labels, class_names = encode_labels(labels, key, class_names)
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
    """Row indices (train, val): `fraction` of every class (rounded, at least 1 where a class has 2+)."""
    rng = np.random.default_rng(seed)
    train_rows, val_rows = [], []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        rng.shuffle(rows)
        n_val = int(round(fraction * len(rows)))
        if len(rows) >= 2:
            n_val = min(max(n_val, 1), len(rows) - 1)
        else:
            n_val = 0
        val_rows.extend(rows[:n_val])
        train_rows.extend(rows[n_val:])
    return np.sort(np.array(train_rows, dtype=np.int64)), np.sort(np.array(val_rows, dtype=np.int64))


# class_weight="auto" turns balanced weights on when the largest class has more than this many
# times the training images of the smallest: below it the weights would change little, above it
# an unweighted loss lets the large classes dominate.
AUTO_IMBALANCE_RATIO = 2.0


def class_weights(setting, labels: np.ndarray, class_names: list[str]) -> Optional[dict[int, float]]:
    """Keras `class_weight` for `setting`: None, "balanced" (n / (k * n_c)), "auto" (balanced
    when the class counts differ by more than AUTO_IMBALANCE_RATIO, else None; logged) or
    {class name or index: weight}.

    >>> class_weights("auto", np.array([0] * 9 + [1] * 3), ["a", "b"])
    {0: 0.6666666666666666, 1: 2.0}
    >>> class_weights("auto", np.array([0] * 4 + [1] * 3), ["a", "b"]) is None
    True
    """
    if setting is None:
        return None
    k = len(class_names)
    if setting == "auto":
        counts = np.bincount(labels, minlength=k)
        ratio = counts.max() / max(counts.min(), 1)
        imbalanced = ratio > AUTO_IMBALANCE_RATIO
        get_logger().info(
            "class_weight=auto: the largest class has %.1fx the images of the smallest (threshold %.1fx): %s",
            ratio, AUTO_IMBALANCE_RATIO, "balanced weights on" if imbalanced else "no weights",
        )
        return class_weights("balanced", labels, class_names) if imbalanced else None
    if setting == "balanced":
        counts = np.bincount(labels, minlength=k).astype(np.float64)
        return {c: float(len(labels) / (k * counts[c])) if counts[c] else 0.0 for c in range(k)}
    weights = {c: 1.0 for c in range(k)}
    for name, weight in setting.items():
        if name in class_names:
            weights[class_names.index(name)] = float(weight)
        elif isinstance(name, int) and 0 <= name < k:
            weights[name] = float(weight)
        else:
            raise DataError(f"class_weight: {name!r} is not a class; classes are {', '.join(class_names)}.")
    return weights
