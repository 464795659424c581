"""Checks of card values: each returns None when a value is fine, else what it allows."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], str | None]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def number(low: float = -math.inf, high: float = math.inf, *, integer: bool = False,
           above: bool = False, below: bool = False) -> Check:
    """A finite number (whole with ``integer``) from ``low`` to ``high`` (``above``/``below``:
    excluding that end)."""
    parts = [f"above {low:g}" if above else f"at least {low:g}"] if low > -math.inf else []
    if high < math.inf:
        parts.append(f"below {high:g}" if below else f"at most {high:g}")
    allowed = ("a whole number" if integer else "a finite number") + (
        ", " + " and ".join(parts) if parts else "")

    def check(value: Any) -> str | None:
        if not _is_number(value) or (integer and not isinstance(value, int)) \
                or not math.isfinite(value):
            return allowed
        inside = (low < value if above else low <= value) and (
            value < high if below else value <= high)
        return None if inside else allowed
    return check


def pair(item: Check) -> Check:
    """Two values, each passing ``item``, the first not above the second."""
    def check(value: Any) -> str | None:
        if not isinstance(value, list) or len(value) != 2 or any(item(v) for v in value) \
                or value[0] > value[1]:
            return f"a pair [low, high], each {item(None)}, low <= high"
        return None
    return check


def triple(item: Check) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, list) or len(value) != 3 or any(item(v) for v in value):
            return f"three values, each {item(None)}"
        return None
    return check


def one_of(options: tuple[str, ...]) -> Check:
    return lambda value: None if value in options else f"one of {', '.join(options)}"


def either(first: Check, second: Check) -> Check:
    return lambda value: None if first(value) is None or second(value) is None \
        else f"{first(value)}, or {second(value)}"


def of_type(kind: type, allowed: str) -> Check:
    return lambda value: None if isinstance(value, kind) else allowed
