"""The study's figures, CSV tables and a self-contained HTML report.

Five modules, dependencies pointing down: :mod:`~medssl_utils.report.figures` (the ``fig_*``
functions and their style helpers), :mod:`~medssl_utils.report.captions` (captions and the
:data:`~medssl_utils.report.captions.FIGURES` registry), :mod:`~medssl_utils.report.tables`
(readable tables), :mod:`~medssl_utils.report.page` (``report.html`` and its files) and
:mod:`~medssl_utils.report.cli` (``medssl report``). Their public names are importable from here.

Each ``fig_*`` function takes the tidy tables of :func:`medssl_utils.results.analyse` and returns
a :class:`matplotlib.figure.Figure` (not registered with pyplot, so a notebook shows it once,
when returned), or ``None`` when there is no data for it. Every figure says in its title what it
was computed on and how many seeds stand behind each point; points are means over seeds with
±1 SD (never one run).

:func:`write_report` writes ``figures/*.png``, ``tables/*.csv`` and ``report.html`` (figures
embedded, so the one file can be mailed), each file atomically (temp file + rename);
``report.html`` is written last. :func:`~medssl_utils.report.cli.run_cli` is ``medssl report DIR``
(parsed in :mod:`medssl_utils.cli`).

Typical notebook use::

    from medssl_utils import results, report
    res = results.gather("results/quick")
    an = results.analyse(res, target=0.95)
    report.fig_convergence(an.curves, an.steps)
    report.write_report(res, target=0.95)
"""

from medssl_utils.report.captions import FIGURES, FigureSpec, figures
from medssl_utils.report.figures import (fig_convergence, fig_error_vs_slices, fig_hssl, fig_per_structure,
                                         fig_pretraining_length, fig_probe, fig_speedup_vs_epochs, fig_steps_to_target)
from medssl_utils.report.page import render_html, write_report
from medssl_utils.report.tables import (claims_display, display_tables, effects_display, format_claims, hssl_wide,
                                        selection_display)

__all__ = ["FIGURES", "FigureSpec", "claims_display", "display_tables", "effects_display", "fig_convergence",
           "fig_error_vs_slices", "fig_hssl", "fig_per_structure", "fig_pretraining_length", "fig_probe",
           "fig_speedup_vs_epochs", "fig_steps_to_target", "figures", "format_claims", "hssl_wide", "render_html",
           "selection_display", "write_report"]
