"""Patient-level splits, label budgets and unlabelled pools.

Splits are always by patient (case), never by slice, so no patient's anatomy leaks between
training and evaluation. Three schemes:

* ``"paper"`` — Work A's published ACDC split of the 100 training patients: patients whose
  number ends in 1 (1, 11, …, 91) are the test set, those ending in 2 (2, 12, …, 92) the
  validation set, the other 80 the training set. Patients of ACDC's separate ``testing``
  subset are held out entirely.
* ``"random"`` — a seeded random patient split of the training subset with the given
  validation and test fractions; ``testing``-subset cases are held out.
* ``"official"`` — train (minus a seeded validation fraction) on the ``training`` subset,
  test on the dataset's own ``testing`` subset (needs its labels, as in ACDC 2023 / MSD
  phantoms).

Label budgets pick which training slices carry labels. Both kinds are *nested*: for one
seed, the 7-slice set contains the 3-slice set (a single seeded permutation is cut at each
size), so a data-efficiency curve changes only the amount of data, not which data.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from medssl_utils.errors import DataError, ParameterError

SCHEMES = ("paper", "random", "official")


@dataclass(frozen=True)
class Split:
    """Case ids per role. ``held_out`` cases are in no role (e.g. an unused testing subset)."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    held_out: tuple[str, ...] = ()
    scheme: str = ""
    meta: dict = field(default_factory=dict)

    def role_of(self, case_id: str) -> str:
        for role in ("train", "val", "test"):
            if case_id in getattr(self, role):
                return role
        return "held_out"

    def as_dict(self) -> dict:
        return {"scheme": self.scheme, "train": list(self.train), "val": list(self.val),
                "test": list(self.test), "held_out": list(self.held_out)}


def _cases_by_subset(index: pd.DataFrame) -> tuple[list[str], list[str]]:
    cases = index.drop_duplicates("case_id")[["case_id", "subset"]]
    training = sorted(cases.loc[cases["subset"] != "testing", "case_id"])
    testing = sorted(cases.loc[cases["subset"] == "testing", "case_id"])
    return training, testing


def _patient_number(case_id: str) -> int:
    m = re.search(r"(\d+)$", case_id)
    if not m:
        raise DataError(f"case {case_id!r}: the 'paper' split needs numbered patients (e.g. patient001)")
    return int(m.group(1))


def _permute(items: list[str], seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [items[i] for i in rng.permutation(len(items))]


def make_split(index: pd.DataFrame, scheme: str = "paper", *, val_fraction: float = 0.1,
               test_fraction: float = 0.1, seed: int = 0) -> Split:
    """Split the cases of a slice index (``SliceCache.index``) by patient."""
    if scheme not in SCHEMES:
        raise ParameterError(f"split scheme={scheme!r}; expected one of {list(SCHEMES)}")
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= frac < 1:
            raise ParameterError(f"{name}={frac}; expected 0 <= {name} < 1")
    training, testing = _cases_by_subset(index)
    if scheme == "paper":
        test = [c for c in training if _patient_number(c) % 10 == 1]
        val = [c for c in training if _patient_number(c) % 10 == 2]
        train = [c for c in training if c not in test and c not in val]
        held = testing
    elif scheme == "random":
        perm = _permute(training, seed)
        n_test = _count(len(perm), test_fraction)
        n_val = _count(len(perm), val_fraction)
        test, val, train = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
        held = testing
    else:
        if not testing:
            raise DataError("split scheme 'official' needs cases of a 'testing' subset; this dataset has none")
        perm = _permute(training, seed)
        n_val = _count(len(perm), val_fraction)
        val, train, test, held = perm[:n_val], perm[n_val:], testing, []
        if not index.loc[index["case_id"].isin(testing), "has_label"].astype(bool).any():
            raise DataError("split scheme 'official': the testing subset has no labels to evaluate on "
                            "(ACDC 2017 testing has none); use 'paper' or 'random'")
    if not train:
        raise DataError(f"split scheme {scheme!r} left no training patients out of {len(training)}")
    return Split(tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)), tuple(sorted(held)), scheme,
                 {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction})


def _count(n: int, fraction: float) -> int:
    if fraction == 0:
        return 0
    return min(max(1, round(n * fraction)), max(n - 1, 0))


def labelled_slices(index: pd.DataFrame, split: Split, role: str = "train", *,
                    phases=("ED", "ES")) -> np.ndarray:
    """Row numbers of labelled slices of ``role`` patients (annotated ED/ES frames by default)."""
    if role not in ("train", "val", "test"):
        raise ParameterError(f"role={role!r}; expected train, val or test")
    cases = set(getattr(split, role))
    m = index["case_id"].isin(cases) & index["has_label"].astype(bool)
    if phases is not None and (index["phase"].isin(("ED", "ES"))).any():
        m &= index["phase"].isin(tuple(phases))
    return index.index[m].to_numpy()


def budget_slices(rows: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """A nested, seeded subset of ``n`` slice rows (first ``n`` of one seeded permutation)."""
    rows = np.sort(np.asarray(rows))
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ParameterError(f"labelled_slices={n!r}; expected a whole number >= 1")
    if n > len(rows):
        raise ParameterError(f"labelled_slices={n}: only {len(rows)} labelled training slices are available")
    perm = np.random.default_rng(seed).permutation(len(rows))
    return np.sort(rows[perm[:n]])


def budget_fraction(index: pd.DataFrame, rows: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Slices of a nested, seeded ``fraction`` of the training patients behind ``rows``.

    The number of patients is ``ceil(fraction × patients)``; a fraction that selects nobody
    is an error.
    """
    if not 0 < fraction <= 1:
        raise ParameterError(f"labelled_fraction={fraction!r}; expected 0 < fraction <= 1")
    rows = np.sort(np.asarray(rows))
    cases = sorted(index.loc[rows, "case_id"].unique())
    if not cases:
        raise DataError("labelled_fraction: there are no labelled training slices to choose from")
    k = math.ceil(round(fraction * len(cases), 9))
    chosen = set(_permute(cases, seed)[:k])
    picked = rows[index.loc[rows, "case_id"].isin(chosen).to_numpy()]
    if len(picked) == 0:
        raise DataError(f"labelled_fraction={fraction} selected no slices out of {len(cases)} patients")
    return picked


def unlabelled_pool(index: pd.DataFrame, split: Split, *, include_val: bool = False,
                    phases: tuple[str, ...] | None = None) -> np.ndarray:
    """Rows usable for self-supervised pretraining: slices of training (± validation) patients.

    Test and held-out patients are never included. ``phases`` restricts to e.g. ``("cine",)``
    (all cine frames) — by default every slice of those patients is used.
    """
    cases = set(split.train) | (set(split.val) if include_val else set())
    m = index["case_id"].isin(cases)
    if phases is not None:
        m &= index["phase"].isin(tuple(phases))
    rows = index.index[m].to_numpy()
    if len(rows) == 0:
        raise DataError("the unlabelled pool is empty: no slices of training patients matched")
    return rows
