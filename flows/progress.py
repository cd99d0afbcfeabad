"""Progress of a driver loop: a tqdm bar on a terminal, a plain line now and then in a log.

A bar redraws itself with carriage returns, which a log file (``ray job submit``, ``| tee``, CI) keeps
as one ever-growing line; there a line ``[layerleak] <desc>: n/total (rate)`` every ``interval``
seconds says the same.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm


def interactive() -> bool:
    """Whether stderr is a terminal (bars) rather than a file or pipe (lines)."""
    return sys.stderr.isatty()


class LogProgress:
    """tqdm's ``update`` / context-manager surface, printing a line at most every ``interval`` seconds."""

    def __init__(self, total: int, desc: str, unit: str, interval: float = 30.0):
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.n = 0
        self.start = self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.interval and self.n < self.total:
            self.last = now
            rate = self.n / max(now - self.start, 1e-9)
            print(f"[layerleak] {self.desc}: {self.n}/{self.total} {self.unit}s ({rate:.1f}/s)", file=sys.stderr, flush=True)

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def progress(total: int, desc: str, unit: str) -> tqdm | LogProgress:
    """A bar on a terminal, occasional lines otherwise; use as a context manager and call ``update``."""
    if interactive():
        return tqdm(total=total, desc=desc, unit=unit)
    return LogProgress(total, desc, unit)
