"""Numbers read from environment variables (torchrun's, the cache's, the test hooks'): a value that does not parse
is one line naming the variable, never a ValueError."""

from __future__ import annotations

import math
import os

from alexnet.errors import UserError


def env_int(name: str, default: int, minimum: int) -> int:
    """A whole number from the environment (unset or blank: `default`); UserError naming the variable otherwise."""
    return int(_env_number(name, default, minimum, int, "a whole number"))


def env_float(name: str, default: float, minimum: float) -> float:
    """A finite number from the environment (unset or blank: `default`); UserError naming the variable otherwise."""
    return float(_env_number(name, default, minimum, float, "a finite number"))


def _env_number(name: str, default: float, minimum: float, parse: type, kind: str) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not {kind}: unset it or fix it") from None
    if not math.isfinite(value) or value < minimum:
        bound = f"at least {minimum}" if parse is int else f"a finite number of at least {minimum}"
        raise UserError(f"environment variable {name}={raw} must be {bound}: unset it or fix it")
    return value
