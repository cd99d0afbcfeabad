"""Driver progress: a bar on a terminal, plain occasional lines in a log."""

from __future__ import annotations

import io
import sys

from tqdm import tqdm

from flows import progress as progress_mod
from flows.progress import LogProgress, progress


def test_lines_in_a_log(monkeypatch, capsys):
    monkeypatch.setattr(progress_mod, "interactive", lambda: False)
    bar = progress(10, "extract (2 CPU actors)", "sample")
    assert isinstance(bar, LogProgress)
    bar.interval = 0.0
    with bar:
        for _ in range(4):
            bar.update(3)
    lines = capsys.readouterr().err.splitlines()
    # one line per update before completion, none once complete (the stage prints its own summary)
    assert [l.split(": ")[1].split(" ")[0] for l in lines] == ["3/10", "6/10", "9/10"]
    assert all(l.startswith("[layerleak] extract (2 CPU actors): ") and "\r" not in l for l in lines)


def test_quiet_between_intervals(capsys):
    bar = LogProgress(100, "sweep", "coalition", interval=3600)
    for _ in range(50):
        bar.update(1)
    assert capsys.readouterr().err == ""
    assert bar.n == 50


def test_bar_on_a_terminal(monkeypatch):
    monkeypatch.setattr(progress_mod, "interactive", lambda: True)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with progress(5, "sweep", "coalition") as bar:
        assert isinstance(bar, tqdm)
        bar.update(5)
    assert "5/5" in sys.stderr.getvalue()
