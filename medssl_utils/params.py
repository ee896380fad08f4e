"""Validation of notebook parameters (the cell right after papermill's ``parameters`` cell).

Each check raises :class:`~medssl_utils.errors.ParameterError` whose message names the
parameter and what is allowed, so a bad ``papermill -p`` value stops the run at once with
one clear line instead of failing deep inside a training loop.
"""

from __future__ import annotations

from medssl_utils.errors import ParameterError


def check_int(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParameterError(f"{name}={value!r}: expected a whole number"
                             + (f" in {lo}..{hi}" if lo is not None and hi is not None else ""))
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ParameterError(f"{name}={value}: expected a whole number {rng}")
    return value


def check_number(name: str, value, lo: float | None = None, hi: float | None = None, *, low_open: bool = False,
                 what: str | None = None) -> float:
    """A finite real number (not a bool) in ``[lo, hi]`` (``(lo, hi]`` with ``low_open``)."""
    import math

    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if low_open else value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        if what is None:
            what = "a finite number" + ("" if lo is None else f" {'>' if low_open else '>='} {lo}") + (
                "" if hi is None else f" and <= {hi}")
        raise ParameterError(f"{name}={value!r}: expected {what}")
    return float(value)


def check_spec(name: str, value):
    """A dataset spec string (see :mod:`medssl_utils.data.specs`); returns the parsed spec."""
    from medssl_utils.data.specs import parse_spec

    try:
        return parse_spec(value)
    except ParameterError as exc:
        raise ParameterError(f"{name}: {exc}") from None


def check_specs(name: str, values) -> list:
    if isinstance(values, str) or not isinstance(values, (list, tuple)) or not values:
        raise ParameterError(f"{name}={values!r}: expected a non-empty list of dataset specs")
    return [check_spec(f"{name}[{i}]", v) for i, v in enumerate(values)]
