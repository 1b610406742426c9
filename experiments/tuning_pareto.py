"""Tuning Pareto front: held-out perplexity vs hardware cost of per-layer gradient-tuned VLP
parameters, uniform choices and the grid search (SmolLM2-135M, SOTU).

    python -m experiments.tuning_pareto [--quick] [--force] [--out results]

Wraps ``experiments/tuning.py`` (``--quick``: 3 budgets, small grid, 5 steps; full: 30 steps).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from mugi_jax.report.helpers import load_smollm2


def run(out_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    from experiments import tuning

    load_smollm2()  # Unavailable if the model is not fetched
    out_dir = Path(out_dir)
    steps = 5 if quick else 30
    argv = ["experiments.tuning", "--out", str(out_dir), "--seed", str(seed), "--steps", str(steps)]
    if quick:
        argv.append("--quick")
    saved = sys.argv
    sys.argv = argv
    try:
        tuning.main()
    finally:
        sys.argv = saved
    s = json.loads((out_dir / "summary.json").read_text())
    pareto = list(csv.DictReader(open(out_dir / "pareto.csv")))
    readings = [
        f"At the paper's budget ({s['paper_budget']}): held-out perplexity tuned per layer {s['tuned_heldout_ppl']:.4g} "
        f"({s['tuned_model_evals']} model evaluation), grid-best uniform {s['grid_best_heldout_ppl']:.4g} "
        f"({s['grid_model_evals']} evaluations), published default {s['default_heldout_ppl']:.4g}, exact {s['exact_heldout_ppl']:.4g}.",
    ]
    tuned = [r for r in pareto if r["method"] == "tuned per-layer" and not r.get("note")]
    unif = [r for r in pareto if r["method"].startswith("uniform (paper")]
    wins = sum(float(t["heldout_ppl"]) <= float(u["heldout_ppl"]) for t, u in zip(tuned, unif))
    if tuned:
        readings.append(f"Pareto: per-layer tuning matches or beats the paper's uniform choice at {wins} of {min(len(tuned), len(unif))} budgets.")
    prov = out_dir / "provenance.json"
    cfg = json.loads(prov.read_text()).get("config", {}) if prov.exists() else {}
    return {"tables": [{"file": "paper_budget.csv", "title": "At the paper's budget: tuned vs grid vs default vs exact"},
                       {"file": "pareto.csv", "title": "Pareto: held-out perplexity vs cost per budget"}],
            "figures": [{"file": "pareto.png", "caption": "Held-out perplexity vs hardware cost"}],
            "readings": readings, "comparisons": [],
            "headline": {k: s[k] for k in ("tuned_heldout_ppl", "grid_best_heldout_ppl", "default_heldout_ppl", "exact_heldout_ppl")},
            "config": dict(cfg, steps=steps, quick=quick)}


if __name__ == "__main__":
    from mugi_jax.report import cli_main

    cli_main("tuning_pareto")
