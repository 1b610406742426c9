"""Reproduction report: the experiment registry/runner and ``report.md`` generation.

    from mugi_jax import report
    report.run_experiment("comprehensive", "results", quick=True)
    report.run_suite("results", quick=True)          # every experiment + results/report.md

See docs/report.md.
"""

from mugi_jax.report.paper import PAPER, compare
from mugi_jax.report.registry import (BY_NAME, EXPERIMENTS, Experiment, Outcome, Unavailable,
                                      cli_main, load, run_experiment)
from mugi_jax.report.suite import render_report, run_suite

__all__ = ["PAPER", "compare", "BY_NAME", "EXPERIMENTS", "Experiment", "Outcome", "Unavailable",
           "cli_main", "load", "run_experiment", "render_report", "run_suite"]
