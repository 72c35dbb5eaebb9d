"""Raw labels as data sources give them, before a Task encodes them.

Three forms reach a Task: a 1-D array (one class index or name per example), a 2-D 0/1 array
(a multi-hot matrix, one column per class) and a list of label sets (a CSV cell split by
`label_separator`: names, possibly none). `auto_task` names the Task that `task: auto` picks
(`tlkeras.tasks.resolve_task` looks it up in the registry).

>>> auto_task([["beach", "sunset"], ["beach"]], "data")
'multi_label'
>>> auto_task(np.array(["cat", "dog"]), "data")
'single_label'
"""

from __future__ import annotations

import numpy as np

from tlkeras._logging import get_logger
from tlkeras.errors import DataError


def is_label_sets(raw) -> bool:
    return isinstance(raw, list) and (not raw or isinstance(raw[0], (list, tuple, set, frozenset)))


def is_matrix(raw) -> bool:
    return isinstance(raw, np.ndarray) and raw.ndim == 2


def split_cell(cell: str, separator: str) -> list[str]:
    """The labels of one table cell: split on `separator`, blanks dropped, order kept, no repeats.

    >>> split_cell(" beach  sunset beach", " ")
    ['beach', 'sunset']
    """
    parts = cell.split(separator) if separator.strip() else cell.split()
    out: list[str] = []
    for part in (p.strip() for p in parts):
        if part and part not in out:
            out.append(part)
    return out


def multi_label_evidence(raw):
    """(row, its label count) of the first example with other than one label, or None."""
    if is_label_sets(raw):
        for row, labels in enumerate(raw):
            if len(labels) >= 2:
                return row, len(labels)
        return None
    if is_matrix(raw):
        sums = np.asarray(raw, dtype=np.float64).sum(axis=1)
        odd = np.flatnonzero(sums != 1)
        return (int(odd[0]), int(sums[odd[0]])) if len(odd) else None
    return None


def auto_task(raw, key: str) -> str:
    """The name of the Task that `task: auto` picks for these raw labels: "regression" for several label columns, or
    when every label is a number and more than `max(20, 5% of the rows)` of them are distinct (an array of integers
    is class indices); "multi_label" when an example has several labels; else "single_label". A choice other than
    single-label is logged with its reason.

    >>> auto_task(np.array([str(v / 2) for v in range(30)]), "data")
    'regression'
    >>> auto_task(np.arange(30), "data")
    'single_label'
    """
    if is_matrix(raw) and (np.asarray(raw).dtype.kind in "USO" or not np.isin(raw, (0, 1)).all()):
        get_logger().info("task auto: regression, since %s has %d label columns%s; set task: regression to say so",
                          key, np.asarray(raw).shape[1], "" if np.asarray(raw).dtype.kind in "USO" else
                          " holding numbers other than 0 and 1")
        return "regression"
    distinct = numeric_distinct(raw)
    if distinct is not None and distinct > regression_threshold(len(raw)):
        get_logger().info("task auto: regression, since every label of %s is a number and %d of them are distinct "
                          "(more than %d); set task: single_label to read them as classes", key, distinct,
                          regression_threshold(len(raw)))
        return "regression"
    evidence = multi_label_evidence(raw)
    if evidence is None:
        return "single_label"
    row, count = evidence
    example = ""
    if is_label_sets(raw):
        example = f" ({', '.join(map(repr, list(raw[row])[:4]))})"
    get_logger().info("task auto: multi-label, since example %d of %s has %d labels%s; set task: single_label if "
                      "a class name holds the label separator", row + 1, key, count, example)
    return "multi_label"


def regression_threshold(rows: int) -> int:
    """More distinct numbers than this make `task: auto` a regression: max(20, 5% of the rows)."""
    return max(20, int(0.05 * rows))


def numeric_distinct(raw):
    """How many distinct values labels have when each is a number given as a float or as text, else None (integer
    arrays are class indices, label sets are classes).

    >>> numeric_distinct(np.array(["1.5", "2", "1.5"])), numeric_distinct(np.array(["1", "cat"]))
    (2, None)
    """
    if is_label_sets(raw) or is_matrix(raw):
        return None
    values = np.asarray(raw)
    if values.ndim != 1 or not len(values) or values.dtype.kind in "biu":
        return None
    if values.dtype.kind == "f":
        return int(len(np.unique(values)))
    try:
        numbers = np.asarray([float(str(v).strip()) for v in values])
    except ValueError:
        return None
    return int(len(np.unique(numbers))) if np.isfinite(numbers).all() else None


def check_multi_hot(matrix: np.ndarray, key: str, class_names) -> np.ndarray:
    values = np.asarray(matrix)
    if values.dtype.kind not in "biuf" or not np.isin(values, (0, 1)).all():
        raise DataError(f"{key}: a label matrix must hold 0/1 (multi-hot, one column per class); "
                        f"found values such as {np.unique(values)[:5].tolist()}.")
    if class_names is not None and values.shape[1] != len(class_names):
        raise DataError(f"{key}: the label matrix has {values.shape[1]} columns but there are {len(class_names)} "
                        "classes.")
    return values.astype(np.float32)


def pipeline_labels(labels: np.ndarray) -> np.ndarray:
    """Encoded labels as pipelines feed them: int32 class indices, or float32 multi-hot rows."""
    labels = np.asarray(labels)
    return labels.astype(np.int32) if labels.dtype.kind in "iu" else labels.astype(np.float32)


def read_label_cells(cells: list, setting: str, separator: str):
    """Raw labels of a table's label column, and the rows kept: with `single_label` or `regression` each
    non-empty cell is one label (empty cells are dropped); with `multi_label` each cell is split on
    `separator` (an empty cell is an example with no label); `auto` splits, and reads the column
    as single-label when no cell holds two labels. Cells of several columns (tuples: a regression's
    targets) are a [rows, columns] array of strings, rows with an empty cell dropped.

    >>> read_label_cells(["a", "", "b"], "auto", " ")
    (array(['a', 'b'], dtype='<U1'), [0, 2])
    >>> read_label_cells(["a b", "", "b"], "auto", " ")
    ([['a', 'b'], [], ['b']], [0, 1, 2])
    >>> read_label_cells([("31", "70.5"), ("", "60"), ("45", "82")], "auto", " ")
    (array([['31', '70.5'],
           ['45', '82']], dtype='<U4'), [0, 2])
    """
    if cells and isinstance(cells[0], tuple):
        rows = [i for i, cell in enumerate(cells) if all(c.strip() for c in cell)]
        return np.asarray([[c.strip() for c in cells[i]] for i in rows]).reshape(len(rows), len(cells[0])), rows
    if setting in ("auto", "multi_label"):
        sets = [split_cell(cell, separator) for cell in cells]
        if setting == "multi_label" or any(len(s) >= 2 for s in sets):
            return sets, list(range(len(cells)))
    rows = [i for i, cell in enumerate(cells) if cell.strip()]
    return np.asarray([cells[i].strip() for i in rows]), rows


def k_folds(strata: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The fold (0 .. k-1) of each example: each stratum's examples shuffled (seeded) and dealt round the folds in
    turn, the deal of each stratum starting where the last one ended - every fold holds each stratum's share, and
    the fold sizes differ by one at most.

    >>> folds = k_folds(np.array([0] * 6 + [1] * 3), 3, seed=0)
    >>> np.bincount(folds).tolist(), [np.bincount(folds[:6]).tolist(), np.bincount(folds[6:]).tolist()]
    ([3, 3, 3], [[2, 2, 2], [1, 1, 1]])
    """
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    folds = np.empty(len(strata), dtype=np.int64)
    at = 0
    for stratum in np.unique(strata):
        rows = rng.permutation(np.flatnonzero(strata == stratum))
        folds[rows] = (at + np.arange(len(rows))) % k
        at = (at + len(rows)) % k
    return folds
