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
    """The name of the Task that `task: auto` picks for these raw labels: "multi_label" when an example has
    several labels (logged, with the example), else "single_label"."""
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


def read_label_cells(cells: list[str], setting: str, separator: str):
    """Raw labels of a table's label column, and the rows kept: with `single_label` each non-empty
    cell is one label (empty cells are dropped); with `multi_label` each cell is split on
    `separator` (an empty cell is an example with no label); `auto` splits, and reads the column
    as single-label when no cell holds two labels.

    >>> read_label_cells(["a", "", "b"], "auto", " ")
    (array(['a', 'b'], dtype='<U1'), [0, 2])
    >>> read_label_cells(["a b", "", "b"], "auto", " ")
    ([['a', 'b'], [], ['b']], [0, 1, 2])
    """
    if setting != "single_label":
        sets = [split_cell(cell, separator) for cell in cells]
        if setting == "multi_label" or any(len(s) >= 2 for s in sets):
            return sets, list(range(len(cells)))
    rows = [i for i, cell in enumerate(cells) if cell.strip()]
    return np.asarray([cells[i].strip() for i in rows]), rows
