"""Small file helpers shared by the run directory writers: every write is atomic."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """A temporary path next to `path` to write to; renamed over `path` when the block ends
    without error, removed otherwise. A reader (or a run killed mid-write) sees the old file or
    the new one, never half of one. `suffix` keeps writers that check extensions happy
    (".keras", ".weights.h5", ".npz").

    >>> import tempfile, os
    >>> target = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> with atomic_path(target) as tmp:
    ...     _ = open(tmp, "w").write("hello")
    >>> open(target).read(), os.listdir(os.path.dirname(target))
    ('hello', ['a.txt'])
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        # mkstemp makes the file 0600; what we publish follows the umask, as open() would
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through `atomic_path`, synced to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def safe_filename(name: str, max_length: int = 80) -> str:
    """A file name made from untrusted text (a class name): no path separators, no "..", no
    control or shell-special characters; never empty.

    >>> safe_filename("../../etc/passwd"), safe_filename("naïve café"), safe_filename("..")
    ('.._.._etc_passwd', 'naïve café', '__')
    """
    cleaned = "".join(ch if (ch.isalnum() or ch in " ._-+=,()") else "_" for ch in str(name))
    cleaned = cleaned.strip(" ")[:max_length]
    if set(cleaned) <= {"."}:  # "", ".", ".." name the folder itself or its parent
        cleaned = "_" * max(1, len(cleaned))
    return cleaned


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """`write_bytes_atomic` of `text` in UTF-8."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    # NumPy scalars and arrays reach here from metrics and histories.
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def as_tensor(array):
    """A tf.Tensor over a NumPy array's memory, without a copy where TensorFlow allows it.

    tf.data.Dataset.from_tensor_slices copies NumPy arrays; given this tensor it does not, so a
    gigabyte of cached pixels is held once, not twice.
    """
    import numpy as np
    import tensorflow as tf

    array = np.ascontiguousarray(array)
    try:
        return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
    except Exception:  # dtype or layout DLPack cannot share: copy
        return tf.convert_to_tensor(array)

