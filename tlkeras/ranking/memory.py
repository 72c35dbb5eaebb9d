"""Peak resident memory of this process over a block of code, sampled (Linux: /proc/self/statm)."""

from __future__ import annotations

import os
import resource
import threading
from typing import Optional


def rss_mb() -> Optional[float]:
    """Resident memory of this process now, in MB (None where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """`with PeakMemory() as m: ...` then `m.peak_mb`: the highest RSS seen during the block,
    sampled every `interval` seconds (the process's lifetime peak where /proc is missing: macOS).

    >>> with PeakMemory() as memory:
    ...     block = bytearray(50 * 2**20)
    >>> memory.peak_mb > 0
    True
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak_mb: Optional[float] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "PeakMemory":
        self.peak_mb = rss_mb()
        if self.peak_mb is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()

    def _take(self) -> None:
        now = rss_mb()
        if now is not None and (self.peak_mb is None or now > self.peak_mb):
            self.peak_mb = now

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._take()
        else:  # ru_maxrss: KB on Linux, bytes on macOS
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.peak_mb = peak / 2**20 if os.uname().sysname == "Darwin" else peak / 1024
        self.peak_mb = round(self.peak_mb, 1)
