"""``medssl report DIR``'s work (its parser is in :mod:`medssl_utils.cli`)."""

from __future__ import annotations

import pandas as pd

from medssl_utils import results as R
from medssl_utils.report.page import write_report
from medssl_utils.report.tables import format_claims


# =============================================================================== command line
def run_cli(args) -> int:
    """``medssl report``'s work (its parser: :mod:`medssl_utils.cli`)."""
    res = R.gather(args.dirs)
    page = write_report(res, args.out, target=args.target, reference=args.reference)
    print(res.summary())
    claims = pd.read_csv(page.parent / "tables" / "claims.csv") if (page.parent / "tables" / "claims.csv").is_file() \
        else None
    if claims is not None and len(claims):
        print("claims (tables/claims.csv):")
        text = claims.astype({"note": object, "quantity": object})  # all-empty columns are read as float
        print(format_claims(text.fillna({"note": "", "quantity": ""})))
    print(f"report: {page}")
    return print_problems(res.problems)


def print_problems(problems: pd.DataFrame, file=None) -> int:
    """Each problem of a gather (``Results.problems``) as one line ``<run dir>: <problem>`` under a
    count; returns the command's exit status: 1 when there are problems (the report is written but
    some runs could not be used in full), else 0. Skipped runs are not problems."""
    if not len(problems):
        return 0
    n, runs = len(problems), problems["run_id"].nunique()
    print(f"{n} problem{'s' if n > 1 else ''} in {runs} run{'s' if runs > 1 else ''} (also listed in report.html):",
          file=file)
    for _, row in problems.iterrows():
        print(f"  {row['run_dir']}: {row['problem']}", file=file)
    return 1
