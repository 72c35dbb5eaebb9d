"""The process while a run trains: Python's garbage collector swept less often, and Keras's progress display chosen
for where the output goes."""

from __future__ import annotations

import contextlib
from typing import Iterator


# Python's full collection walks every object the process holds - with TensorFlow and a Keras model loaded, a
# few million - and tracing a function makes objects fast enough to trigger one every few tenths of a second.
FULL_COLLECTION_EVERY = 100  # young collections per full one during a run (Python's default: 10)


@contextlib.contextmanager
def fewer_full_collections(every: int = FULL_COLLECTION_EVERY) -> Iterator[None]:
    """Within the block, Python's garbage collector sweeps all objects (its oldest generation) after
    `every` younger collections instead of 10; the thresholds are as before when the block ends,
    however it ends. Garbage is still collected, only its full sweeps are rarer: on a run of 722
    cached 64-px images they took 0.15 s of stage 1's 0.48 s above its cache pass
    (benchmarks/RESULTS.md, issue 17). A higher setting of the caller's own is kept.

    >>> import gc
    >>> before = gc.get_threshold()
    >>> with fewer_full_collections(50):
    ...     gc.get_threshold()[2] == max(50, before[2])
    True
    >>> gc.get_threshold() == before
    True
    """
    import gc

    before = gc.get_threshold()
    gc.set_threshold(before[0], before[1], max(every, before[2]))
    try:
        yield
    finally:
        gc.set_threshold(*before)


def progress_verbosity() -> int:
    """Keras's verbosity for progress: 1 (a live bar) on a terminal, 2 (one plain line per epoch, no
    control characters) when output goes to a log, a pipe or a notebook's captured stream."""
    import sys

    return 1 if getattr(sys.stdout, "isatty", lambda: False)() else 2
