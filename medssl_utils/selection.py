"""Hyperparameter selection on validation data: which combination of a study's ``sweep`` wins a cell.

A study file may sweep fine-tuning parameters (``finetune.sweep``, see :mod:`medssl_utils.study`):
every combination runs at the cell's *selection seeds*, and only the winning combination runs at
the other seeds. The winner is chosen here, from **validation** Dice alone: :func:`pick` is given
nothing but each combination's validation scores (``val_final_dice`` of its selection runs'
``result.json``, :func:`validation_score`), so test metrics cannot enter the choice by construction.

Rule: the highest mean validation Dice over the selection seeds wins; means are compared rounded
to 3 decimals, and a tie goes to the combination listed first in the study file (the lowest
``order``: the product of the sweep's lists, first key slowest, values in the order written).
Study files list the simplest / default value of each axis first, so a tie keeps the simpler
setting instead of a difference below the third decimal deciding.

A leaf module: it imports nothing from medssl_utils but :mod:`medssl_utils.errors` (no torch, no
pandas), so the runner and the analysis recompute the same selection from the same numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal

from medssl_utils.errors import ParameterError

#: The ``result.json`` key a selection run's score is read from: the final validation Dice.
SCORE_KEY = "val_final_dice"
#: How the winner is chosen, in words (also in :func:`pick`'s result).
RULE = ("highest mean validation Dice over the selection seeds (3 decimals); ties: the combination listed "
        "first in the study file")
DECIMALS = 3
_SAFE = re.compile(r"[A-Za-z0-9_@-][A-Za-z0-9._@-]*")


# ============================================================================ combination labels
def format_value(value) -> str:
    """A sweep value as it appears in a folder name: ``0.01`` -> ``0.01``, ``1.0e-3`` -> ``0.001``,
    ``1.0`` -> ``1``, ``50`` -> ``50``, ``True`` -> ``true``, ``None`` -> ``null``, a string as written
    (letters, digits and ``. _ - @``, not starting with ``.``; else :class:`ParameterError`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ParameterError(f"{value!r} is not a finite number")
        text = repr(value)
        if "e" in text or "E" in text:  # 1e-05 -> 0.00001: the shortest exact digits, positional
            text = format(Decimal(text), "f")
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return "0" if text in ("-0", "") else text
    if isinstance(value, str):
        if not _SAFE.fullmatch(value):
            raise ParameterError(f"{value!r} cannot be part of a folder name; use letters, digits and . _ - @ "
                                 "(not starting with '.')")
        return value
    raise ParameterError(f"{value!r}: a sweep value must be a number, true / false, null or a string")


def combo_label(values: Mapping) -> str:
    """The folder name of one combination: ``key-value`` joined by ``+`` in the mapping's order,
    e.g. ``lr-0.01+encoder_lr_scale-1``; raises :class:`ParameterError` for an unsafe value."""
    parts = []
    for key, value in values.items():
        if not _SAFE.fullmatch(str(key)):
            raise ParameterError(f"{key!r} cannot be part of a folder name")
        parts.append(f"{key}-{format_value(value)}")
    return "+".join(parts)


# ============================================================================ selection
def _finite(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def validation_score(result: Mapping | None) -> float | None:
    """The selection score of one run's ``result.json``: its ``val_final_dice`` when a finite number, else None."""
    return _finite((result or {}).get(SCORE_KEY))


def mean_score(scores: Sequence) -> float:
    """The mean of the finite entries of ``scores`` (NaN / None ignored); NaN when there are none."""
    finite = [v for v in (_finite(s) for s in scores) if v is not None]
    return sum(finite) / len(finite) if finite else math.nan


def pick(candidates: Sequence[Mapping]) -> dict:
    """The winning combination of one cell, from validation scores only.

    ``candidates``: ``{"combo": label, "order": position in the study file's grid, "scores": [validation
    Dice of each selection run]}``. Returns ``{"combo": the winner (None when no candidate has a finite
    score), "score": its mean (NaN without a winner), "ranking": [(combo, mean), ...] best first (those
    without a score last, in grid order), "tied": [combos whose rounded mean equals the winner's, the
    winner excluded], "rule": RULE}``. Means are compared rounded to 3 decimals; ties go to the lowest
    ``order`` — the combination listed first, by convention the simplest one.
    """
    scored = []
    for i, c in enumerate(candidates):
        score = mean_score(list(c.get("scores") or []))
        scored.append((str(c["combo"]), int(c.get("order", i)), i, score))

    def key(item):
        _, order, i, score = item
        return (math.isnan(score), -round(score, DECIMALS) if not math.isnan(score) else 0.0, order, i)

    ranked = sorted(scored, key=key)
    ranking = [(combo, score) for combo, _, _, score in ranked]
    if not ranked or math.isnan(ranked[0][3]):
        return {"combo": None, "score": math.nan, "ranking": ranking, "tied": [], "rule": RULE}
    best = round(ranked[0][3], DECIMALS)
    tied = [combo for combo, _, _, score in ranked[1:] if not math.isnan(score) and round(score, DECIMALS) == best]
    return {"combo": ranked[0][0], "score": ranked[0][3], "ranking": ranking, "tied": tied, "rule": RULE}
