"""Tuning Pareto front: held-out perplexity vs hardware cost of per-layer gradient-tuned VLP
parameters, uniform choices and the grid search (SmolLM2-135M, SOTU).

    python -m experiments.tuning_pareto [--quick] [--force] [--out results]

Wraps ``experiments/tuning.py``.  A complete full run of that script already present next to
this result (``OUT/tuning/`` with its ``provenance.json``, ``quick: false``) is reused (its files
are copied, and the reading says so); otherwise it is run here with ``--quick`` (2 budgets, the
range's ends; small grid; ``--steps 5`` in ``report --quick``, 30 otherwise), which fits the report's time budget.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

from mugi_jax.report.helpers import load_smollm2

#: The report's entry for this script (mugi_jax.report.registry discovers it).
EXPERIMENT = {
    "title": "Tuning: held-out perplexity vs hardware cost (Pareto)",
    "section": "Tuning", "needs": "model", "in_quick": False, "est_s": 600, "order": 140,
}


def run(out_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    from experiments import tuning

    load_smollm2()  # Unavailable if the model is not fetched
    out_dir = Path(out_dir)
    steps = 5 if quick else 30
    prior = out_dir.parent / "tuning"
    reused = None
    if not quick and (prior / "provenance.json").exists():
        pc = json.loads((prior / "provenance.json").read_text())
        if not pc.get("config", {}).get("quick", True) and all(
                (prior / f).exists() for f in ("summary.json", "pareto.csv", "paper_budget.csv", "pareto.png")):
            out_dir.mkdir(parents=True, exist_ok=True)
            for f in ("summary.json", "pareto.csv", "paper_budget.csv", "pareto.png", "grid.csv"):
                if (prior / f).exists():
                    shutil.copyfile(prior / f, out_dir / f)
            reused = pc
    if reused is None:
        argv = ["experiments.tuning", "--out", str(out_dir), "--seed", str(seed), "--steps", str(steps), "--quick"]
        saved = sys.argv
        sys.argv = argv
        try:
            tuning.main()
        finally:
            sys.argv = saved
    s = json.loads((out_dir / "summary.json").read_text())
    pareto = list(csv.DictReader(open(out_dir / "pareto.csv")))
    g = lambda k: s.get(k, float("nan"))  # noqa: E731 - tolerate a changed summary schema
    readings = [
        f"At the paper's budget ({s.get('paper_budget')}): held-out perplexity tuned per layer {g('tuned_heldout_ppl'):.4g} "
        f"({s.get('tuned_model_evals')} model evaluation), grid-best uniform {g('grid_best_heldout_ppl'):.4g} "
        f"({s.get('grid_model_evals')} evaluations), published default {g('default_heldout_ppl'):.4g}, exact {g('exact_heldout_ppl'):.4g}.",
    ]
    tuned = [r for r in pareto if r.get("method") == "tuned per-layer" and not r.get("note")]
    unif = [r for r in pareto if str(r.get("method", "")).startswith(("uniform (grid-best", "uniform (paper"))]
    wins = sum(float(t["heldout_ppl"]) <= float(u["heldout_ppl"]) for t, u in zip(tuned, unif))
    if tuned:
        readings.append(f"Pareto: per-layer tuning matches or beats the grid-best uniform choice (the paper's method) at {wins} of {min(len(tuned), len(unif))} budgets.")
    if reused is not None:
        readings.append(f"Reused the full run of `python -m experiments.tuning` in {prior} (git revision "
                        f"{reused.get('git_revision')}, {reused.get('wall_time_s') or 0:.0f} s, steps "
                        f"{reused.get('config', {}).get('steps')}).")
        cfg = dict(reused.get("config", {}), reused_from=str(prior))
    else:
        readings.append(f"Ran `python -m experiments.tuning --quick --steps {steps}` (2 budgets: b<=3 W<=8 and b<=1 W<=4, small grid).")
        prov = out_dir / "provenance.json"
        cfg = json.loads(prov.read_text()).get("config", {}) if prov.exists() else {}
    return {"tables": [{"file": "paper_budget.csv", "title": "At the paper's budget: tuned vs grid vs default vs exact"},
                       {"file": "pareto.csv", "title": "Pareto: held-out perplexity vs cost per budget"}],
            "figures": [{"file": "pareto.png", "caption": "Held-out perplexity vs hardware cost"}],
            "readings": readings, "comparisons": [],
            "headline": {k: s.get(k) for k in ("tuned_heldout_ppl", "grid_best_heldout_ppl", "default_heldout_ppl", "exact_heldout_ppl")},
            "config": dict(cfg, report_steps=steps)}


if __name__ == "__main__":
    from mugi_jax.report import cli_main

    cli_main("tuning_pareto")
