"""Text classification data: a CSV of text and label columns, a folder of class subfolders of
.txt files, or (texts, labels) arrays - into tf.data pipelines of (string, label).

The model takes raw strings: the backbone (a text-embedding module) does its own tokenising, so
training and serving feed it the same thing and there is nothing to skew. Texts are read as UTF-8;
a file that is not is skipped and listed, never fatal.

Example:

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "reviews.csv")
>>> _ = open(path, "w", encoding="utf-8").write("text,label\\ngreat film,pos\\nawful,neg\\nloved it,pos\\n")
>>> examples, class_names, skipped = load_text_examples(path, "data")
>>> class_names, examples.texts, examples.labels.tolist()
(['neg', 'pos'], ['great film', 'awful', 'loved it'], [1, 0, 1])
"""

from __future__ import annotations

import functools

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from tlkeras.errors import DataError

TEXT_EXTENSIONS = (".txt",)
TABLE_EXTENSIONS = (".csv", ".tsv")
AUTOTUNE = tf.data.AUTOTUNE


@dataclass
class TextExamples:
    """Labelled texts of one split (strings, or (first, second) tuples of sentence pairs)."""

    labels: np.ndarray
    texts: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows) -> "TextExamples":
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        return TextExamples(self.labels[rows], [self.texts[i] for i in rows])

    def split(self, first, second) -> tuple["TextExamples", "TextExamples"]:
        """(subset(first), subset(second)), as `Examples.split` gives for images."""
        return self.subset(first), self.subset(second)

    def identities(self) -> set:
        """What makes two examples the same one: the text (a pair's two texts)."""
        return {t if isinstance(t, str) else "\t".join(t) for t in self.texts}

    def content_keys(self) -> list:
        """A key per row that copies share: the text (a pair's two texts)."""
        return [t if isinstance(t, str) else "\t".join(t) for t in self.texts]

    def joined(self, other: "TextExamples") -> "TextExamples":
        """These texts and `other`'s in one collection (self-training's student, `tlkeras.self_training`)."""
        return TextExamples(np.concatenate([np.asarray(self.labels), np.asarray(other.labels)]),
                            list(self.texts) + list(other.texts))

    def sample_texts(self, count: int, task) -> list[str]:
        """Up to `count` texts spread over the classes (for checking an export)."""
        return [self.texts[i] for i in task.spread_rows(self.labels, count)]

    def fingerprint(self) -> dict:
        h = hashlib.sha256()
        for text, label in zip(self.texts, self.labels):
            code = int(label) if np.ndim(label) == 0 else "".join(str(int(v)) for v in np.asarray(label))
            text = "\t".join(text) if isinstance(text, tuple) else text
            h.update(f"{code}\t{text}\n".encode("utf-8"))
        return {"kind": "texts", "texts": len(self.texts), "sha256": h.hexdigest()}


def text_columns(text_column) -> list[str]:
    """The config's text_column as a list: one column, or the two of a sentence pair.

    >>> text_columns("review"), text_columns(["question1", "question2"])
    (['review'], ['question1', 'question2'])
    """
    return list(text_column) if isinstance(text_column, (list, tuple)) else [text_column]


def is_text_table(path: Any) -> bool:
    return isinstance(path, str) and path.lower().endswith(TABLE_EXTENSIONS)


def load_text_examples(source: Any, key: str, class_names: Optional[list[str]] = None, *,
                       text_column="text", label_column: str = "label", task: str = "single_label",
                       label_separator: str = " "):
    """(TextExamples, class_names, skipped) from a CSV/TSV file, a folder of class subfolders of
    .txt files, or a (texts, labels) pair; the labels encoded for `task` (see `tlkeras.tasks`).
    With two text columns (`text_column=["question1", "question2"]`) each example is a pair: from a
    table's two columns, or from (an [N, 2] array of strings, labels)."""
    from tlkeras.tasks import encode_examples

    examples, names, skipped = read_text_examples(source, key, class_names, text_column=text_column,
                                                  label_column=label_column, task=task,
                                                  label_separator=label_separator)
    _, names = encode_examples(examples, task, key, names if names is not None else class_names)
    return examples, names, skipped


def read_text_examples(source: Any, key: str, class_names: Optional[list[str]] = None, *,
                       text_column="text", label_column: str = "label", task: str = "auto",
                       label_separator: str = " "):
    """(TextExamples with raw labels, class names or None, skipped): what a source holds, before a
    Task encodes its labels."""
    from tlkeras.tasks import labels as raw_labels

    columns = text_columns(text_column)
    if isinstance(source, (tuple, list)) and len(source) == 2:
        if len(columns) == 2:
            pairs = np.asarray(source[0], dtype=object)
            if pairs.ndim != 2 or pairs.shape[1] != 2:
                raise DataError(f"{key}: sentence pairs ({' and '.join(map(repr, columns))}) need an [N, 2] array "
                                f"of texts (first, second); got shape {list(pairs.shape)}.")
            texts = [(str(a), str(b)) for a, b in pairs]
        else:
            texts = [str(t) for t in np.asarray(source[0]).reshape(-1)]
        labels = source[1] if raw_labels.is_label_sets(source[1]) else np.asarray(source[1])
        if len(texts) != len(labels):
            raise DataError(f"{key}: {len(texts)} texts but {len(labels)} labels.")
        return TextExamples(labels, texts), class_names, []
    if not isinstance(source, str):
        raise DataError(f"{key}: {type(source).__name__} is not a text source; pass a .csv/.tsv file with "
                        f"{' and '.join(map(repr, columns + [label_column]))} columns, a folder of class subfolders "
                        "of .txt files, or a (texts, labels) pair.")
    if not os.path.exists(source):
        raise DataError(f"{key}: the path {source!r} does not exist.")
    if os.path.isdir(source):
        if len(columns) == 2:
            raise DataError(f"{key}: {source!r} is a folder of single texts, but text_column names two columns "
                            "(sentence pairs); pass a .csv/.tsv file with both columns.")
        return _load_folder(source, key, class_names)
    if is_text_table(source):
        return _load_table(source, key, class_names, columns, label_column, task, label_separator)
    raise DataError(f"{key}: {source!r} is neither a .csv/.tsv file nor a folder of class subfolders of .txt files.")


def _load_table(path: str, key: str, class_names, columns: list[str], label_column: str, task: str,
                separator: str):
    from tlkeras.data.tables import label_cell, label_columns, read_table
    from tlkeras.tasks.labels import read_label_cells

    rows = read_table(path, key, {**{c: "text_column" for c in columns},
                                  **{c: "label_column" for c in label_columns(label_column)}})
    cells = [label_cell(row, label_column) for _, row in rows]
    labels, kept = read_label_cells(cells, task, separator)
    skipped = [(f"{path}:{rows[i][0]}", f"empty {label_column!r}") for i in sorted(set(range(len(rows))) - set(kept))]
    if len(columns) == 2:  # a sentence pair per row
        texts = [tuple(rows[i][1].get(c) or "" for c in columns) for i in kept]
    else:
        texts = [rows[i][1].get(columns[0]) or "" for i in kept]
    if not texts:
        raise DataError(f"{key}: {path!r} holds no labelled rows.")
    return TextExamples(labels, texts), class_names, skipped


def _load_folder(root: str, key: str, class_names):
    found = sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)) and not n.startswith("."))
    if not found:
        raise DataError(f"{key}: {root!r} has no class subfolders; put the .txt files of each class in a folder of "
                        f"its own, e.g. {os.path.join(root, 'positive', 'review1.txt')}.")
    names = list(class_names) if class_names is not None else found
    unknown = [n for n in found if n not in names]
    if unknown:
        raise DataError(f"{key}: {root!r} has class folders the model does not know: {', '.join(unknown)} "
                        f"(known: {', '.join(names)}).")
    texts, labels, skipped = [], [], []
    for name in found:
        folder = os.path.join(root, name)
        files = sorted(
            os.path.join(dirpath, f)
            for dirpath, dirnames, filenames in os.walk(folder)
            for f in filenames
            if f.lower().endswith(TEXT_EXTENSIONS) and not f.startswith(".")
            and not any(part.startswith(".") for part in os.path.relpath(dirpath, folder).split(os.sep) if part != ".")
        )
        if not files:
            raise DataError(f"{key}: the class folder {folder!r} holds no .txt files.")
        for path in files:
            try:
                with open(path, encoding="utf-8-sig") as f:
                    texts.append(f.read().strip())
            except UnicodeDecodeError as e:
                skipped.append((path, f"not UTF-8 text ({e.reason} at byte {e.start})"))
                continue
            labels.append(names.index(name))
    return TextExamples(np.asarray(labels, dtype=np.int64), texts), names, skipped


def text_pipeline(examples: TextExamples, batch_size: int, *, training: bool, seed: int) -> tf.data.Dataset:
    """Batched (tf.string [N], int32 label [N]) - of sentence pairs ((tf.string [N], tf.string [N]), label) -
    shuffled each epoch when training."""
    from tlkeras.distribute import static_shapes

    from tlkeras.tasks.labels import pipeline_labels

    if examples.texts and isinstance(examples.texts[0], tuple):
        texts = tuple(tf.constant([pair[i] for pair in examples.texts], dtype=tf.string) for i in range(2))
    else:
        texts = tf.constant(examples.texts, dtype=tf.string)
    ds = tf.data.Dataset.from_tensor_slices((texts, pipeline_labels(examples.labels)))
    if training:
        ds = ds.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=training and static_shapes()).prefetch(AUTOTUNE)


def load_unlabeled_texts(source: Any, cfg) -> tuple[TextExamples, list]:
    """(TextExamples with placeholder labels, skipped) of unlabelled texts: a .txt file (one text per line), a
    .csv/.tsv with the `text_column` (two columns for sentence pairs), or a list of strings (or of pairs)."""
    columns = text_columns(cfg.text_column)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise DataError(f"unlabeled_data: {path!r} is not a file; give a .txt file of one text per line or a "
                            f".csv/.tsv with the {' and '.join(map(repr, columns))} column(s).")
        if path.lower().endswith(TABLE_EXTENSIONS):
            from tlkeras.data.tables import read_table

            rows = [row for _, row in read_table(path, "unlabeled_data", {c: "text_column" for c in columns})]
            texts = [tuple(row.get(c) or "" for c in columns) if len(columns) == 2 else (row.get(columns[0]) or "")
                     for row in rows]
        else:
            with open(path, encoding="utf-8") as f:
                texts = [line.rstrip("\n") for line in f]
    elif isinstance(source, (list, tuple)) and all(isinstance(t, (str, tuple)) for t in source):
        texts = list(source)
    else:
        raise DataError(f"unlabeled_data: {type(source).__name__} is not a source of texts; give a .txt file of one "
                        "text per line, a .csv/.tsv with the text column, or a list of strings.")
    empty = {i for i, t in enumerate(texts) if not _words(t)}
    skipped = [(f"unlabeled_data row {i + 1}", "empty text") for i in sorted(empty)]
    texts = [t for i, t in enumerate(texts) if i not in empty]
    return TextExamples(np.zeros(len(texts), np.int64), texts), skipped


def with_training_texts(bundle, examples: TextExamples, cfg):
    """`bundle` training on `examples` instead (its validation and classes unchanged)."""
    import dataclasses

    rebuild = functools.partial(text_pipeline, examples, cfg.batch_size, training=True, seed=cfg.seed)
    return dataclasses.replace(
        bundle, train=rebuild(), rebuild_train=rebuild, train_examples=examples,
        class_weight=bundle.task.class_weight(cfg.class_weight, examples.labels, bundle.class_names))


def _words(text) -> bool:
    """Whether a text (or either text of a pair) holds more than white space."""
    return any(part.strip() for part in text) if isinstance(text, tuple) else bool(text.strip())


def make_text_datasets(cfg, *, batch_size: Optional[int] = None):
    """The training and validation pipelines of a text run (the text twin of `make_datasets`)."""
    from tlkeras.data.datasets import DataBundle, load_splits

    if cfg.data is None:
        raise DataError("data: nothing to train on; pass a .csv/.tsv file of texts and labels, a folder of class "
                        "subfolders of .txt files, or a (texts, labels) pair.")
    if cfg.augment.resolved("text").enabled:
        raise DataError("augment: image augmentation does not apply to text; remove the augment settings "
                        "(augment.feature_mixup, which mixes cached features, does apply).")
    batch_size = batch_size or cfg.batch_size

    def load(source, key, class_names, task):
        return read_text_examples(source, key, class_names, text_column=cfg.text_column,
                                  label_column=cfg.label_column, task=task, label_separator=cfg.label_separator)

    train, val, class_names, skipped, task = load_splits(load, cfg, cfg.data, cfg.val_data, "texts")
    if not any(_words(text) for text in train.texts):
        columns = " and ".join(repr(c) for c in text_columns(cfg.text_column))
        raise DataError(f"data: all {len(train)} training texts are empty (text_column {columns}): there is nothing "
                        "to learn from. Check that text_column names the column that holds the texts.")
    rebuild = functools.partial(text_pipeline, train, batch_size, training=True, seed=cfg.seed)
    return DataBundle(
        train=rebuild(), rebuild_train=rebuild,
        val=text_pipeline(val, batch_size, training=False, seed=cfg.seed) if val is not None else None,
        class_names=class_names, train_examples=train, val_examples=val, skipped=skipped,
        class_weight=task.class_weight(cfg.class_weight, train.labels, class_names), cached=True, augmenter=None,
        task=task, task_options=task.options(train.labels, cfg.task_settings()),
    )
