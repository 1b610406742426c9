"""Gradient tuning of the VLP parameters vs the uniform grid search (SmolLM2-135M, SOTU).

Run: ``python -m experiments.tuning [--steps 30] [--quick]``.  Writes ``results/tuning/``:

* ``paper_budget.csv`` - (a) at the paper's budget (mantissa_bits<=3, window<=8): held-out
  perplexity (exact kernels) and full-model evaluations of the per-layer tuned config, the best
  uniform grid config (e_top of softmax x e_top of SiLU in -4..4, W = 8, b = 3: 81 evaluations),
  the per-layer greedy search on the proxy, the published default (e_top = 3) and the exact model;
* ``grid.csv`` - every grid trial (calibration NLL);
* ``pareto.csv`` / ``pareto.png`` - (b) held-out perplexity vs hardware cost (table entries,
  cycles per tile, energy per element) across budgets down to b = 1 and W = 4 for: tuned
  per-layer (gradient), uniform proxy-best (the e_top per function minimising the same proxy,
  shared by all layers), greedy per-layer on the proxy (per-unit argmin over e_top), the paper's
  uniform choice (grid-best e_tops at the paper budget, transplanted), plus an energy-weighted
  tuned point (lambda = 1) at the paper budget;
* ``summary.json``, ``provenance.json``.

Held-out perplexities in (b) use the hard relaxed units with traced parameters (bit-identical to
the exact kernels - tests/tune - and compiled once); (a) uses the exact kernels.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from mugi_jax import io
from mugi_jax.nonlinear.config import VLPConfig
from mugi_jax.tune import pipeline
from mugi_jax.tune.model import params_from_configs
from mugi_jax.tune.tuner import (config_cost, greedy_search, grid_search, parse_budget, tune,
                                 hard_unit_errors)

OUT = Path("results/tuning")
PAPER_BUDGET = "mantissa_bits<=3,window<=8"
PARETO_BUDGETS = [(3, 8), (2, 8), (3, 6), (2, 6), (1, 6), (2, 4), (1, 4)]


def _uniform(n_layers: int, e_sm: int, e_si: int, w: int, b: int) -> list:
    base = VLPConfig()
    return [(VLPConfig(e_top=e_sm, window=w, mantissa_bits=b, lut_exponents=base.lut_exponents),
             VLPConfig(e_top=e_si, window=w, mantissa_bits=b)) for _ in range(n_layers)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="2 Pareto budgets (the ends of the range), small grid")
    ap.add_argument("--out", default="results/tuning")
    ap.add_argument("--start", default="default", choices=("default", "uniform-proxy"),
                    help="starting point of the gradient tuner")
    ap.add_argument("--pareto-only", action="store_true",
                    help="skip (a); take the grid-best e_tops from OUT/grid.csv; write "
                         "pareto_START.csv/png")
    args = ap.parse_args()
    from mugi_jax.report.helpers import script_out_dir

    script_out_dir(args.out)
    global OUT
    OUT = Path(args.out)  # noqa: PLW0603
    t0 = time.perf_counter()
    log = lambda s: print(f"[{time.perf_counter() - t0:7.1f}s] {s}", flush=True)  # noqa: E731

    from mugi_jax import models

    model, tok, cfg = models.load("smollm2-135m")
    n = cfg.n_layers
    sp = pipeline.splits(tok, "sotu")
    assert sp.calib_range[1] <= sp.heldout_range[0]
    cal, cached = pipeline.cached_calibration(model, sp.calib, "smollm2-135m", seed=args.seed)
    log(f"calibration {'from cache' if cached else 'captured'}: softmax {tuple(cal.softmax_x.shape)}"
        f" silu {tuple(cal.silu_x.shape)}; exact calib nll {cal.nll:.4f}")

    if args.pareto_only:
        import csv
        with open(OUT / "grid.csv") as fh:
            trials = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(fh)]
        best = min(trials, key=lambda t: t["calib_nll"])
        best = {k: (int(v) if k != "calib_nll" else v) for k, v in best.items()}
        grid_evals = len(trials)
        res = None
    else:
        # ---- (a) paper budget -------------------------------------------------------------------
        budget = parse_budget(PAPER_BUDGET)
        res = tune(model, sp.calib, budget, steps=args.steps, calibration=cal, seed=args.seed, log=log,
                   start=args.start)
        log(f"tuned: proxy {res.proxy:.4g} (start {res.proxy_start:.4g}) in {res.seconds:.1f}s")
        e_tops = (0, 3) if args.quick else None
        g = grid_search(model, sp.calib, budget, e_tops=e_tops, log=None)
        best = g.trials[int(np.argmin([t["calib_nll"] for t in g.trials]))]
        log(f"grid: {g.evals} evals in {g.seconds:.1f}s, best {best}")
        io.write_csv(OUT / "grid.csv", g.trials)
        gp = greedy_search(lambda p: hard_unit_errors(cal, p), g.params, budget, additive=True)
        default = _uniform(n, 3, 3, 8, 3)

        rows = []
        entries = [("tuned (per-layer, gradient)", res.configs, 1),
                   ("grid-best uniform", g.configs, g.evals),
                   ("greedy per-layer (proxy)", gp.configs, 1),
                   ("published default (e_top=3)", default, 0)]
        for name, configs, evals in entries:
            ppl = pipeline.heldout_ppl(model, sp.heldout, configs)
            c = config_cost(params_from_configs(configs), cal.elements)
            rows.append({"method": name, "heldout_ppl": ppl, "model_evals": evals, **c})
            log(f"(a) {name:32s} held-out ppl {ppl:.4f}  model evals {evals}")
        exact_ppl = pipeline.heldout_ppl(model, sp.heldout, None)
        rows.append({"method": "exact FP32", "heldout_ppl": exact_ppl, "model_evals": 0,
                     "table_entries": float("nan"), "cycles": float("nan"), "energy_pj": float("nan")})
        log(f"(a) exact held-out ppl {exact_ppl:.4f}")
        io.write_csv(OUT / "paper_budget.csv", rows)
        io.write_json(OUT / "summary.json", _summary(rows, exact_ppl, best, res, sp, args, t0))

        grid_evals = g.evals

    # ---- (b) Pareto ----------------------------------------------------------------------------
    budgets = PARETO_BUDGETS[::6] if args.quick else PARETO_BUDGETS
    pareto = []
    pareto_name = "pareto.csv" if not args.pareto_only else f"pareto_{args.start}.csv"

    def add(kind: str, b: int, w: int, configs: list, evals: int, extra: str = "") -> None:
        ppl = pipeline.heldout_ppl(model, sp.heldout, configs, exact_kernels=False)
        c = config_cost(params_from_configs(configs), cal.elements)
        pareto.append({"method": kind, "budget_b": b, "budget_w": w, "note": extra,
                       "heldout_ppl": ppl, "model_evals": evals, **c})
        log(f"(b) b<={b} W<={w} {kind:24s} {extra:10s} ppl {ppl:.4f} energy {c['energy_pj']:.4f} "
            f"entries {c['table_entries']:.1f} cycles {c['cycles']:.2f}")

    for b, w in budgets:
        bud = f"mantissa_bits<={b},window<={w}"
        r = res if (b, w) == (3, 8) and res is not None else tune(
            model, sp.calib, bud, steps=args.steps, calibration=cal, seed=args.seed,
            start=args.start)
        add("tuned per-layer", b, w, r.configs, 1)
        # proxy of every unit at each e_top (9 hard evaluations on the captured data): the best
        # uniform e_top per function (sum over layers) and the per-unit greedy argmin
        es = list(range(-4, 5))
        d = np.stack([np.asarray(hard_unit_errors(cal, params_from_configs(_uniform(n, e, e, w, b))))
                      for e in es])  # E L F
        e_sm, e_si = (es[int(np.argmin(d[:, :, f].sum(axis=1)))] for f in (0, 1))
        add("uniform (proxy-best)", b, w, _uniform(n, e_sm, e_si, w, b), 1, f"e_top={e_sm},{e_si}")
        per_unit = np.asarray(es)[np.argmin(d, axis=0)]
        add("greedy per-layer (proxy)", b, w,
            [(VLPConfig(e_top=int(per_unit[i, 0]), window=w, mantissa_bits=b),
              VLPConfig(e_top=int(per_unit[i, 1]), window=w, mantissa_bits=b)) for i in range(n)], 1)
        add("uniform (grid-best e_top)", b, w,
            _uniform(n, best["e_top_softmax"], best["e_top_silu"], w, b), grid_evals)
        io.write_csv(OUT / pareto_name, pareto)
    for lam in ((1.0,) if not args.quick else ()):
        r = tune(model, sp.calib, PAPER_BUDGET, steps=args.steps, calibration=cal,
                 seed=args.seed, cost_weight=lam, start=args.start)
        add("tuned per-layer", 3, 8, r.configs, 1, f"lambda={lam}")
    io.write_csv(OUT / "pareto.csv", pareto)
    _plot(pareto, OUT / "pareto.png")

    io.write_json(OUT / "summary.json", _summary(rows, exact_ppl, best, res, sp, args, t0))
    io.write_json(OUT / ("provenance.json" if not args.pareto_only else
                         f"provenance_pareto_{args.start}.json"), io.provenance(
        {"steps": args.steps, "quick": args.quick, "budgets": budgets, "thin": pipeline.THIN,
         "start": args.start, "pareto_only": args.pareto_only},
        args.seed, time.perf_counter() - t0))
    log("done")


def _summary(rows: list, exact_ppl: float, best: dict, res: object, sp: object, args: object,
             t0: float) -> dict:
    return {
        "paper_budget": PAPER_BUDGET,
        "tuned_heldout_ppl": rows[0]["heldout_ppl"], "tuned_model_evals": rows[0]["model_evals"],
        "grid_best_heldout_ppl": rows[1]["heldout_ppl"], "grid_model_evals": rows[1]["model_evals"],
        "greedy_proxy_heldout_ppl": rows[2]["heldout_ppl"],
        "default_heldout_ppl": rows[3]["heldout_ppl"], "exact_heldout_ppl": exact_ppl,
        "grid_best": best, "tuned_config": res.config_table(),
        "calib_tokens": list(sp.calib_range), "heldout_tokens": list(sp.heldout_range),
        "steps": args.steps, "seconds": time.perf_counter() - t0,
    }


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    styles = {"tuned per-layer": ("o", "C0"), "uniform (proxy-best)": ("s", "C1"),
              "uniform (grid-best e_top)": ("^", "C2"), "greedy per-layer (proxy)": ("x", "C3")}
    for ax, metric, label in zip(axes, ("table_entries", "cycles", "energy_pj"),
                                 ("table entries (mean per unit)", "cycles per tile",
                                  "energy per element [pJ]")):
        for kind, (mk, col) in styles.items():
            pts = [(r[metric], r["heldout_ppl"]) for r in rows if r["method"] == kind]
            if pts:
                x, y = zip(*pts)
                ax.scatter(x, y, marker=mk, color=col, label=kind)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("held-out perplexity (SOTU)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("SmolLM2-135M: VLP parameters tuned per layer vs uniform, across budgets")
    fig.tight_layout()
    io.save_figure(fig, path, dpi=120)


if __name__ == "__main__":
    main()
