"""Files as tlkeras writes and reads them: every write is atomic (written aside, synced, renamed), every read of a
run's file fails in one line naming it; temporary names, free space, safe file names."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator


TEMP_PREFIX = ".tmp-"  # every temporary file or folder tlkeras makes next to what it publishes


def temp_prefix(kind: str = "") -> str:
    """".tmp-[kind-]<pid>-": a temporary name that says which process made it, so a later run can
    tell a dead run's leftovers (see `is_stale_temp`) from a live writer's (a concurrent export)."""
    return f"{TEMP_PREFIX}{kind + '-' if kind else ''}{os.getpid()}-"


def is_stale_temp(name: str) -> bool:
    """Whether `name` is a temporary file or folder whose process is gone (or is this one).

    >>> is_stale_temp(temp_prefix("export") + "abc"), is_stale_temp("model.keras")
    (True, False)
    >>> is_stale_temp(".tmp-export-999999999-abc"), is_stale_temp(".tmp-k2j3h4.png")
    (True, True)
    """
    if not name.startswith(TEMP_PREFIX):
        return False
    pid = next((int(part) for part in name[len(TEMP_PREFIX):].split("-")[:2] if part.isdigit()), None)
    return pid is None or pid == os.getpid() or not _process_alive(pid)


def _process_alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows: assume it lives
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file, or a folder's entries, to disk (best effort where the OS cannot)."""
    flags = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if os.path.isdir(path) else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # Windows cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    """`fsync_path` every file and folder under `path` (a SavedModel before it is published)."""
    for folder, _, files in os.walk(path):
        for name in files:
            fsync_path(os.path.join(folder, name))
        fsync_path(folder)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """A temporary path next to `path` to write to; synced to disk and renamed over `path` when the
    block ends without error (and the folder synced), removed otherwise. A reader, a run killed
    mid-write, or a power loss sees the old file or the new one, never half of one or an empty one.
    `suffix` keeps writers that check extensions happy (".keras", ".weights.h5", ".npz").

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
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(), suffix=suffix, dir=folder)
    os.close(fd)
    try:
        try:
            yield tmp
        except OSError as e:  # a full disk found by write() or close() names no file: name the one being written
            if e.filename is None or e.filename == tmp:
                e.filename = path
            raise
        # mkstemp makes the file 0600; what we publish follows the umask, as open() would
        os.chmod(tmp, 0o666 & ~_umask())
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(folder)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_free_space(path: str | os.PathLike, needed: int) -> None:
    """Refuse, as a full disk would (OSError ENOSPC naming `path`), to start writing `needed` bytes to
    `path` when its file system has less free: for writers that do not survive a full disk - h5py
    segfaults or leaves a RuntimeError when HDF5's write fails halfway (measured on a 1-2 MB tmpfs).

    >>> check_free_space(".", 1)
    >>> check_free_space(".", 1 << 62)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    OSError: [Errno 28] No space left on device (needs about 4398046511104 MB...): '.'
    """
    import errno
    import shutil

    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"No space left on device (needs about {-(-needed // 2**20)} MB"
                      f"{f', {free // 2**20} MB free' if free >= 2**20 else ''})", os.fspath(path))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through `atomic_path` (synced to disk before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


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
    """`write_bytes_atomic` of `text` in UTF-8 (file names that are not UTF-8 keep their own bytes)."""
    write_bytes_atomic(path, text.encode("utf-8", "surrogateescape"))


def read_text(path: str | os.PathLike, what: str = "") -> str:
    """The UTF-8 text of a file tlkeras wrote or reads; a file that is not UTF-8 is one error line naming it."""
    from tlkeras.errors import TlkerasError

    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TlkerasError(f"{os.fspath(path)!r} is not UTF-8 text (byte 0x{data[e.start]:02x} at position {e.start}); "
                           f"{what or 'save it as UTF-8'}.") from None


def read_json(path: str | os.PathLike, what: str = "") -> Any:
    """The JSON value in a file; a damaged one (cut short by a kill, edited by hand) is one error line
    naming it and `what` to do.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "metrics.json")
    >>> _ = open(path, "w").write('{"accuracy": 0.9')
    >>> read_json(path, "train again with --overwrite")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    tlkeras.errors.TlkerasError: '.../metrics.json' is damaged (not valid JSON: ... (line 1, column 17)); train again with --overwrite.
    """
    from tlkeras.errors import TlkerasError

    text = read_text(path, what)
    try:
        return json.loads(text)
    except ValueError as e:
        detail = f"{e.msg} (line {e.lineno}, column {e.colno})" if hasattr(e, "msg") else str(e)
        raise TlkerasError(f"{os.fspath(path)!r} is damaged (not valid JSON: {detail}); "
                           f"{what or 'restore it or remove it'}.") from None


def write_json_atomic(path: str | os.PathLike, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    # NumPy scalars and arrays reach here from metrics and histories.
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
