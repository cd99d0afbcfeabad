"""One exception type for bad user input: the CLI prints its message as one line and exits non-zero."""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class LayerleakError(Exception):
    """A problem with the user's input (config, data, checkpoint, run folder) that they can fix."""


def one_line(error: BaseException | str) -> str:
    """A message whole, on one line: line breaks, runs of spaces and terminal colour codes folded, never cut
    (a cut message loses the part that says what to do). An exception without a message gives its type."""
    text = " ".join(_ANSI.sub("", str(error)).split())
    if not text and isinstance(error, BaseException):
        return type(error).__name__
    return text
