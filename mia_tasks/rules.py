"""What each config key accepts, declared next to the key: a type, a range, choices, null or not.

A ``Rule`` turns a raw YAML value into the value the audit uses (``1e-3`` written without a dot is a
string to YAML; a number rule reads it as 0.001) or raises ``LayerleakError`` naming the key, the value
and what is allowed. ``field(default=..., metadata=allow(rule))`` declares a key with its rule, so every key of
``mia_tasks.config`` is checked by one walk instead of an if-chain that forgets keys.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import LayerleakError

META_HELP = "help"  # a field's metadata key for its meaning (allow's second argument)


@dataclass(frozen=True)
class Rule:
    """A key's allowed values: ``what`` says them in words (a callable when it comes from a registry)."""

    what: str | Callable[[], str]
    accept: Callable[[Any], Any]  # the value to use; raises ValueError or TypeError when not allowed
    null: bool = False

    def describe(self) -> str:
        what = self.what() if callable(self.what) else self.what
        return f"{what} or null" if self.null else what

    def check(self, key: str, value: Any) -> Any:
        """The accepted value of ``key``; LayerleakError naming the key, the value and what is allowed."""
        if value is None and self.null:
            return None
        try:
            return self.accept(value)
        except (ValueError, TypeError):
            raise LayerleakError(f"config {key}: {value!r} is not allowed; expected {self.describe()}") from None

    def or_null(self) -> Rule:
        return dataclasses.replace(self, null=True)


def allow(rule: Rule, meaning: str = "") -> dict[str, Any]:
    """A dataclass field's metadata carrying its rule and what the key means, in words:
    ``x: int = field(default=1, metadata=allow(integer(1), "how many ..."))``. The meaning is what ``layerleak config``
    prints and docs/configuration.md is generated from (mia_tasks.configdoc); every key declares one."""
    return {"rule": rule, META_HELP: meaning}


def _interval(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    return f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"


def integer(lo: int | None = None, hi: int | None = None) -> Rule:
    """An integer (not a bool) in [lo, hi]."""
    if lo == 1 and hi is None:
        what = "a positive integer"
    elif lo == 0 and hi is None:
        what = "a non-negative integer"
    else:
        what = f"an integer in {_interval(lo, hi, False, False)}"

    def accept(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ValueError
        return v
    return Rule(what, accept)


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Rule:
    """A finite real number in the interval; a string such as '1e-3' (YAML's reading of it) is converted."""
    if lo == 0 and lo_open and hi is None:
        what = "a positive number"
    elif lo == 0 and not lo_open and hi is None:
        what = "a non-negative number"
    else:
        what = f"a number in {_interval(lo, hi, lo_open, hi_open)}"

    def accept(v: Any) -> float | int:
        if isinstance(v, bool):
            raise TypeError
        if isinstance(v, str):
            v = float(v)
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise ValueError
        if hi is not None and (v >= hi if hi_open else v > hi):
            raise ValueError
        return v
    return Rule(what, accept)


def boolean() -> Rule:
    def accept(v: Any) -> bool:
        if not isinstance(v, bool):
            raise TypeError
        return v
    return Rule("true or false", accept)


def text(what: str = "a non-empty string") -> Rule:
    """A non-empty string (paths, addresses, names)."""
    def accept(v: Any) -> str:
        if not isinstance(v, str) or not v.strip():
            raise ValueError
        return v
    return Rule(what, accept)


def choice(values: Iterable[str] | Callable[[], Iterable[str]]) -> Rule:
    """One of ``values`` (a callable reads a registry when the rule is used, so there is one list)."""
    names = values if callable(values) else (lambda v=tuple(values): v)

    def accept(v: Any) -> str:
        if not isinstance(v, str) or v not in tuple(names()):
            raise ValueError
        return v
    return Rule(lambda: "one of " + ", ".join(names()), accept)


def list_of(item: Rule, *, nonempty: bool = True) -> Rule:
    """A list whose every element ``item`` accepts."""
    def accept(v: Any) -> list:
        if not isinstance(v, list) or (nonempty and not v):
            raise ValueError
        return [item.accept(x) for x in v]
    return Rule(lambda: f"a {'non-empty ' if nonempty else ''}list, each {item.describe()}", accept)


def mapping(what: str = "a mapping {key: value}", value: Rule | None = None, *, nonempty: bool = False) -> Rule:
    """A mapping with string keys (each value checked by ``value`` when given)."""
    def accept(v: Any) -> dict:
        if not isinstance(v, dict) or (nonempty and not v) or not all(isinstance(k, str) for k in v):
            raise ValueError
        return {k: value.accept(x) for k, x in v.items()} if value else v
    return Rule(what, accept)


def either(*rules: Rule) -> Rule:
    """The first of ``rules`` that accepts the value."""
    def accept(v: Any) -> Any:
        for rule in rules:
            try:
                return rule.accept(v)
            except (ValueError, TypeError):
                continue
        raise ValueError
    return Rule(lambda: ", or ".join(r.describe() for r in rules), accept)


def check_fields(obj: Any, where: str = "") -> None:
    """Apply each field's rule to ``obj`` (a dataclass, recursing into nested ones), storing the accepted values."""
    for f in dataclasses.fields(obj):
        key = f"{where}.{f.name}" if where else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_fields(value, key)
        elif "rule" in f.metadata:
            setattr(obj, f.name, f.metadata["rule"].check(key, value))
        else:
            raise LayerleakError(f"internal: config key {key} declares no rule")  # caught by tests/test_config.py
