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


def check_choice(name: str, value, allowed) -> None:
    """Raise :class:`ParameterError` unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if isinstance(value, (list, dict, set)) or value not in allowed:
        hint = ""
        if isinstance(value, str):
            import difflib

            words = {str(a).lower(): a for a in allowed if isinstance(a, str)}
            close = difflib.get_close_matches(value.lower(), list(words), n=1, cutoff=0.6)
            hint = f"; did you mean {words[close[0]]!r}?" if close else ""
        raise ParameterError(f"{name}={value!r} is not allowed; expected one of {allowed}{hint}")
