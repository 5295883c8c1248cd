"""Checks of user input: each failure is a ValueError naming the parameter, the value and what is allowed.

Called before any work starts or any file is written, by the library and by the notebooks'
validation cells.
"""
from __future__ import annotations

import ast
import math
import re
from numbers import Integral, Real


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def check_choice(name: str, value, allowed):
    """``value`` must be one of ``allowed``."""
    allowed = list(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {allowed}")
    return value


def check_bool(name: str, value):
    """``value`` must be True or False (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be True or False")
    return value


def check_choices(name: str, values, allowed):
    """``values`` must be a non-empty list of distinct members of ``allowed``."""
    if isinstance(values, str) or not hasattr(values, "__iter__"):
        raise ValueError(f"{name}={values!r} must be a list, e.g. {list(allowed)[:3]}")
    values = list(values)
    if not values:
        raise ValueError(f"{name} is empty; give at least one of {list(allowed)}")
    for v in values:
        check_choice(f"{name} entry", v, allowed)
    if len(set(values)) != len(values):
        raise ValueError(f"{name}={values!r} repeats an entry")
    return values


def check_positive_int(name: str, value, maximum: int | None = None):
    """An integer >= 1 (and <= ``maximum`` when given)."""
    hi = f" to {maximum}" if maximum is not None else ""
    if not _is_int(value) or value < 1 or (maximum is not None and value > maximum):
        raise ValueError(f"{name}={value!r} is not allowed; it must be an integer from 1{hi}")
    return int(value)


def check_nonnegative_int(name: str, value):
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name}={value!r} is not allowed; it must be an integer >= 0")
    return int(value)


def check_number(name: str, value, minimum: float | None = None, maximum: float | None = None):
    """A finite real number in [minimum, maximum]."""
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} is not allowed; it must be a finite number")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        lo = "-inf" if minimum is None else minimum
        hi = "inf" if maximum is None else maximum
        raise ValueError(f"{name}={value!r} is out of range; it must lie in [{lo}, {hi}]")
    return float(value)


def check_positive_number(name: str, value):
    check_number(name, value)
    if value <= 0:
        raise ValueError(f"{name}={value!r} is not allowed; it must be a finite number > 0")
    return float(value)


def check_sigma(name: str, value):
    """A noise standard deviation: a finite number >= 0."""
    return check_number(name, value, minimum=0.0)


def check_numbers(name: str, values, minimum: float | None = None, maximum: float | None = None):
    """A non-empty list of finite numbers in range."""
    if isinstance(values, str) or not hasattr(values, "__iter__") or not list(values):
        raise ValueError(f"{name}={values!r} must be a non-empty list of numbers")
    return [check_number(f"{name} entry", v, minimum, maximum) for v in values]


def check_seeds(name: str, seeds):
    """A non-empty list of distinct integers >= 0."""
    if isinstance(seeds, str) or not hasattr(seeds, "__iter__") or not list(seeds):
        raise ValueError(f"{name}={seeds!r} must be a non-empty list of integers >= 0, e.g. [0, 1, 2]")
    seeds = [check_nonnegative_int(f"{name} entry", s) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{name}={seeds!r} repeats a seed")
    return seeds


def as_list(name: str, value, example: str, words: bool = False):
    """papermill's ``-p`` passes a list as its text (``'[0, 0.1]'``): read it back. One number (or, with
    ``words``, one bare word such as ``penalty``) is a list of one."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            if words and re.fullmatch(r"[\w+\-:./]+", value.strip()):
                return [value.strip()]
            raise ValueError(f"{name}={value!r} is not a list; write it as a list such as {example} "
                             f"(papermill: -p {name} '{example}' or -y '{name}: {example}')") from None
    if (isinstance(value, Real) and not isinstance(value, bool)) or (words and isinstance(value, str)):
        value = [value]
    return list(value) if isinstance(value, tuple) else value


def check_per_class(name: str, value):
    """A per-class size: an integer >= 1 or the string "full"."""
    if not (value == "full" or (_is_int(value) and value >= 1)):
        raise ValueError(f"{name}={value!r} is not allowed; it must be an integer >= 1 or 'full'")
    return value if value == "full" else int(value)
