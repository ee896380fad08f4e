"""User-facing errors.

Every error a user can cause (a wrong path, a broken file, a bad parameter) is raised as a
:class:`MedsslError` whose message names the file or parameter and what was expected. The
command line prints such errors as one line, without a traceback, and exits non-zero.
"""

from __future__ import annotations


class MedsslError(Exception):
    """An error caused by the user's input, explained in its message."""


class DataError(MedsslError, ValueError):
    """A dataset, file or volume is missing, malformed, or does not match what was expected."""


class ParameterError(MedsslError, ValueError):
    """A parameter value is out of range or not one of the allowed values."""


def close_matches(name, known, n: int = 3) -> list[str]:
    """Names in ``known`` that ``name`` is probably a misspelling of (case ignored), best first."""
    import difflib

    lower = {str(k).lower(): k for k in known}
    return [lower[m] for m in difflib.get_close_matches(str(name).lower(), list(lower), n=n, cutoff=0.6)]


def check_choice(name: str, value, allowed) -> None:
    """Raise :class:`ParameterError` unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if isinstance(value, (list, dict, set)) or value not in allowed:
        close = close_matches(value, [a for a in allowed if isinstance(a, str)], n=1) if isinstance(value, str) else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ParameterError(f"{name}={value!r} is not allowed; expected one of {allowed}{hint}")
