"""Who writes OUT: one writing run at a time, and the actors of a run that lost OUT commit nothing.

Local paths (and shared mounts): an OS lock, ``fcntl.flock`` on OUT/.lock, held by the driver for the
whole command. The kernel releases it when the driver dies, however it dies, so the next run takes
over at once. The file holds the holder's record (run id, pid, host, since); a RunDir with a run id
reads it before each commit (``RunDir.check_owner``).

Object stores (``s3://``, ``gs://``, any non-local pyarrow filesystem): no OS lock reaches them, so
OUT/.lock is a lease object holding the same record and an expiry, renewed by a heartbeat thread every
third of ``LEASE_S``. A lease whose expiry has passed (its driver was killed) is taken over. pyarrow
offers no conditional PUT, so two runs that start within the same moment could both write a lease:
each re-reads it after ``SETTLE_S`` and only the run it names goes on; the other refuses.

A second writer is refused with one line naming the holder; a reader (``layerleak report``) takes a
shared lock, so it never reads a folder while a run writes it.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from .errors import LayerleakError
from .rundir import LOCK, RunDir, holder_text, read_holder

LEASE_S = 60.0  # an object-store lease lasts this long unless its heartbeat renews it
SETTLE_S = 1.0  # after writing a lease, wait this long and re-read it: the last writer wins


def _record(run_id: str, expires: float | None = None) -> dict[str, Any]:
    rec = {"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname(),
           "since": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
    if expires is not None:
        rec["expires"] = expires
    return rec


def _busy(rd: RunDir, holder: dict[str, Any] | None) -> LayerleakError:
    return LayerleakError(f"OUT {rd.uri} is being written by another layerleak {holder_text(holder)}; "
                          f"wait for it to finish, or choose another --out")


class WriterLock:
    """The writing run's exclusive hold on OUT, for a ``with`` block (see the module docstring)."""

    def __init__(self, rd: RunDir, lease_s: float = LEASE_S, settle_s: float = SETTLE_S):
        self.rd, self.lease_s, self.settle_s = rd, lease_s, settle_s
        self.plain = rd.unowned()  # lease writes are the lock itself: not subject to the owner check
        self.fd: int | None = None
        self.stop = threading.Event()
        self.heartbeat: threading.Thread | None = None

    def __enter__(self) -> WriterLock:
        if self.rd.local:
            self._lock_file()
        else:
            self._take_lease()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # leftovers of this run now find no record naming it
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
        if self.heartbeat is not None:
            self.stop.set()
            self.heartbeat.join()
            holder = read_holder(self.rd)
            if holder is not None and holder.get("run_id") == self.rd.run_id:
                self.plain.delete(LOCK)

    def _lock_file(self) -> None:
        path = self.rd.path(LOCK)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # a read-only or immutable OUT: one line, as for any other write
            raise LayerleakError(f"cannot write {path}: {e.strerror or e}; choose a writable --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            time.sleep(0.2)  # the holder writes its record right after taking the lock
            raise _busy(self.rd, read_holder(self.rd)) from None
        data = json.dumps(_record(self.rd.run_id)).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        self.fd = fd

    def _take_lease(self) -> None:
        holder = read_holder(self.rd)
        if holder is not None and holder.get("run_id") != self.rd.run_id and holder.get("expires", 0) > time.time():
            raise _busy(self.rd, holder)
        if holder is not None and holder.get("run_id") != self.rd.run_id:
            print(f"[layerleak] OUT {self.rd.uri}: the lease of {holder_text(holder)} has expired; taking it over")
        self._write_lease()
        time.sleep(self.settle_s)
        holder = read_holder(self.rd)
        if holder is None or holder.get("run_id") != self.rd.run_id:
            raise _busy(self.rd, holder)
        self.heartbeat = threading.Thread(target=self._renew, name="layerleak-lease", daemon=True)
        self.heartbeat.start()

    def _write_lease(self) -> None:
        self.plain.write_json(LOCK, _record(self.rd.run_id, time.time() + self.lease_s))

    def _renew(self) -> None:
        while not self.stop.wait(self.lease_s / 3):
            holder = read_holder(self.rd)
            if holder is not None and holder.get("run_id") != self.rd.run_id:
                return  # taken over: this run's commits fail their owner check from now on
            try:
                self._write_lease()
            except (OSError, LayerleakError):
                continue  # a failed PUT is retried at the next beat; the lease lasts three beats


class ReaderLock:
    """A command that reads OUT (the report) while no run writes it: a shared OS lock, or no live lease."""

    def __init__(self, rd: RunDir, command: str):
        self.rd, self.command = rd, command
        self.fd: int | None = None

    def __enter__(self) -> ReaderLock:
        if not self.rd.local:
            holder = read_holder(self.rd)
            if holder is not None and holder.get("expires", 0) > time.time():
                raise self._busy(holder)
            return self
        if not self.rd.exists(LOCK):
            return self  # never written by a locking run
        fd = os.open(self.rd.path(LOCK), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._busy(read_holder(self.rd)) from None
        self.fd = fd
        return self

    def _busy(self, holder: dict[str, Any] | None) -> LayerleakError:
        return LayerleakError(f"OUT {self.rd.uri} is being written by layerleak {holder_text(holder)}; "
                              f"run 'layerleak {self.command}' when it has finished")

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


@contextmanager
def writing(rd: RunDir) -> Iterator[RunDir]:
    """Claim OUT (its marker) and hold its writer lock, in ``rd``'s run id, for the block."""
    if rd.run_id is None:
        raise ValueError("a writing RunDir needs a run id")
    rd.claim()
    with WriterLock(rd):
        yield rd


@contextmanager
def reading(rd: RunDir, command: str) -> Iterator[RunDir]:
    """A layerleak run folder that no run is writing, for the block; nothing is written to check it."""
    rd.check_run_folder(command)
    with ReaderLock(rd, command):
        yield rd
