"""CSV/TSV tables of examples (image paths or texts, and labels): one reader for both.

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "photos.csv")
>>> _ = open(path, "w", encoding="utf-8").write("image,label\\na.jpg,beach sunset\\nb.jpg,\\n")
>>> [(line, row["label"]) for line, row in read_table(path, "data", {"image": "image_column"})]
[(2, 'beach sunset'), (3, '')]
"""

from __future__ import annotations

import csv
from tlkeras.errors import DataError, did_you_mean

# A cell may hold a long text (a whole review, an article): csv's default limit of 128 KiB is too
# small for that, while a limit keeps a corrupt file from being read as one field of gigabytes.
FIELD_LIMIT = 16 << 20


def read_table(path: str, key: str, required: dict[str, str]) -> list[tuple[int, dict]]:
    """(line number, row) of each row of a .csv (comma) or .tsv (tab) file read as UTF-8; `required`
    maps each column that must exist to the config key that names it (for the error message)."""
    delimiter = _delimiter(path, "\t" if path.lower().endswith(".tsv") else ",", list(required))
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))
    rows = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            columns = reader.fieldnames or []
            for column, setting in required.items():
                if column not in columns:
                    raise DataError(_missing_column(key, path, column, setting, columns, delimiter, list(required)))
            for line, row in enumerate(reader, start=2):
                rows.append((line, row))
    except UnicodeDecodeError as e:
        raise DataError(f"{key}: {path!r} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8.") from None
    except csv.Error as e:
        raise DataError(f"{key}: {path!r} is not a readable {'TSV' if delimiter == chr(9) else 'CSV'} file ({e}).") \
            from None
    return rows


def _missing_column(key: str, path: str, column: str, setting: str, columns: list[str], delimiter: str,
                    named: tuple = ()) -> str:
    """The one line that says a required column is missing: the columns as another separator splits the header
    when the file reads as one column with it (a spreadsheet's ";" CSV whose columns have other names), with the
    closest one that no other setting `named` as the example.

    >>> print(_missing_column("data", "t.csv", "image", "image_column", ["img;class"], ","))
    data: 't.csv' has no column 'image'. Its columns, separated by ';', are img, class (read that way once the \
column settings name them); set image_column to the right one (e.g. --set image_column=img).
    """
    if len(columns) == 1:
        for sep in (";", "\t", "|", ","):
            parts = [c.strip().strip('"') for c in columns[0].split(sep)]
            if sep != delimiter and len(parts) > 1:
                free = [p for p in parts if p not in named] or parts
                return (f"{key}: {path!r} has no column {column!r}. Its columns, separated by {sep!r}, are "
                        f"{', '.join(parts)} (read that way once the column settings name them); set {setting} to "
                        f"the right one (e.g. --set {setting}={_closest(column, free)}).")
    return (f"{key}: {path!r} has no column {column!r}.{did_you_mean(column, columns)} Its columns "
            f"are {', '.join(columns) or '(none: an empty file?)'}; set {setting} to the right one.")


def _closest(name: str, choices: list[str]) -> str:
    import difflib

    return (difflib.get_close_matches(name, choices, n=1, cutoff=0.0) or choices)[0]


def _delimiter(path: str, expected: str, columns: list[str]) -> str:
    """`expected` (comma for .csv, tab for .tsv), unless the header holds the required columns only when split by
    another common separator (a spreadsheet's ";" CSV): then that one, said in the log."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            header = f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError):
        return expected  # read_table says what is wrong with the file
    def fits(sep):
        return all(column in [c.strip().strip('"') for c in header.split(sep)] for column in columns)

    if fits(expected):
        return expected
    for sep in (";", "\t", ",", "|"):
        if sep != expected and fits(sep):
            from tlkeras._logging import get_logger

            get_logger().info("%s: its columns are separated by %r, not %r: read that way", path, sep, expected)
            return sep
    return expected


def label_columns(label_column) -> list[str]:
    """The label column(s) a config names: one, or several (a regression's targets).

    >>> label_columns("label"), label_columns(["age", "weight"])
    (['label'], ['age', 'weight'])
    """
    return list(label_column) if isinstance(label_column, (list, tuple)) else [label_column]


def label_cell(row: dict, label_column):
    """The label cell of a row: a string, or a tuple of strings when several columns hold the labels.

    >>> label_cell({"age": "31", "weight": ""}, ["age", "weight"]), label_cell({"label": None}, "label")
    (('31', ''), '')
    """
    if isinstance(label_column, (list, tuple)):
        return tuple(row.get(c) or "" for c in label_column)
    return row.get(label_column) or ""
