"""SIGTERM ends the driver like Ctrl-C: one line, finished parts kept, exit status 143.

Ray's ``ray.init`` replaces the SIGTERM handler (its core worker prints a C++ stack dump on SIGTERM), so
``flows.runtime.init_ray`` installs this handler again after it.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

EXIT_SIGTERM = 128 + signal.SIGTERM  # the shell's status for a process ended by SIGTERM


_received = threading.Event()


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM; a KeyboardInterrupt, so every cleanup that Ctrl-C runs, runs."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _received.set()
    raise Terminated


def terminated(error: BaseException) -> bool:
    """Whether ``error`` ends the run because of SIGTERM (Ray re-raises an interrupt in ray.get as a plain
    KeyboardInterrupt, so the signal is remembered too)."""
    return isinstance(error, Terminated) or _received.is_set()


def handle_sigterm() -> None:
    """Make SIGTERM raise ``Terminated`` in the main thread (signal handlers can only be set there)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
