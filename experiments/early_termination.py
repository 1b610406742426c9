"""Data-driven early-termination statistics (SmolLM2-135M INT4 codes and nonlinear inputs).

    python -m experiments.early_termination [--quick] [--force] [--out results]

Average cycles per k-step of the Mugi GEMM array (H = 32..256, 1..8 row adders): measured on the
real SmolLM2 INT4 weight and KV-cache codes, analytic models and Monte Carlo (wraps
``experiments/paper_vs_realistic.et_cycles``); mean VLP nonlinear cycles per tile per layer with
and without early termination (from ``mugi_jax/data/cost/nonlinear_cycles_smollm2.csv``).  The
paper preset charges full termination (8 cycles per k-step).
"""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

from mugi_jax.report.helpers import figure, table

#: The report's entry for this script (mugi_jax.report.registry discovers it).
EXPERIMENT = {
    "title": "Data-driven early-termination statistics",
    "section": "Cost", "needs": "", "in_quick": True, "est_s": 20, "order": 130,
}

FULL_CYCLES = 8.0  # paper preset: every k-step takes the full 8 cycles


def run(out_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    from experiments import paper_vs_realistic as pvr

    out_dir = Path(out_dir)
    samples = 20000
    et = pvr.et_cycles(samples=0 if quick else samples)  # quick: no Monte Carlo column
    for r in et:
        r["saving_vs_full"] = 1 - r["measured"] / FULL_CYCLES
    text = resources.files("mugi_jax").joinpath("data/cost/nonlinear_cycles_smollm2.csv").read_text()
    nl = [{k: (float(v) if k != "fn" else v) for k, v in r.items()}
          for r in csv.DictReader(ln for ln in text.splitlines() if not ln.startswith("#"))]
    for r in nl:
        r["layer"] = int(r["layer"])
        r["saving"] = 1 - r["mean_cycles_et"] / r["mean_cycles_full"]
    tables = [table(out_dir, "et_gemm.csv", et, "GEMM cycles per k-step: measured on SmolLM2 codes vs models"),
              table(out_dir, "et_nonlinear.csv", nl, "VLP nonlinear cycles per tile per layer (SmolLM2, SOTU)")]
    with figure(out_dir / "early_termination.png", 1, 2, figsize=(12, 4)) as (fig, ax):
        for op, style in (("weights", "-"), ("kv_cache", "--")):
            for a in sorted({r["adders_per_row"] for r in et}):
                sel = [r for r in et if r["operand"] == op and r["adders_per_row"] == a]
                ax[0].plot([r["height"] for r in sel], [r["measured"] for r in sel], style, marker="o", label=f"{op}, {a} adders")
        ax[0].axhline(FULL_CYCLES, color="k", lw=0.8, label="paper preset (full)")
        ax[0].set_xscale("log", base=2), ax[0].set_xlabel("array height H [rows] (log2)")
        ax[0].set_ylabel("cycles per k-step [cycles]"), ax[0].set_title("VLP GEMM", fontsize=9)
        ax[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        for fn in sorted({r["fn"] for r in nl}):
            sel = [r for r in nl if r["fn"] == fn]
            ax[1].plot([r["layer"] for r in sel], [r["saving"] for r in sel], marker=".", label=fn)
        ax[1].set_xlabel("layer"), ax[1].set_ylabel("cycles saved by early termination [fraction]")
        ax[1].set_title("VLP nonlinear units (SmolLM2, SOTU)", fontsize=9)
        ax[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    w256 = {r["adders_per_row"]: r for r in et if r["operand"] == "weights" and r["height"] == 256}
    kv256 = {r["adders_per_row"]: r for r in et if r["operand"] == "kv_cache" and r["height"] == 256}
    readings = [
        "GEMM at H = 256 (weights), cycles per k-step measured on SmolLM2 codes: " + ", ".join(
            f"{a} adder(s) {w256[a]['measured']:.3g}" for a in sorted(w256)) + f" (paper preset: {FULL_CYCLES:g}); "
        "with a single row adder the adder, not the data, bounds the step.",
        "KV cache at H = 256: " + ", ".join(f"{a} adder(s) {kv256[a]['measured']:.3g}" for a in sorted(kv256)) + ".",
    ]
    for fn in sorted({r["fn"] for r in nl}):
        sel = [r["saving"] for r in nl if r["fn"] == fn]
        readings.append(f"VLP {fn}: early termination saves {min(sel):.2%}-{max(sel):.2%} of the tile cycles across "
                        f"{len(sel)} layers (mean {sum(sel) / len(sel):.2%}).")
    return {"tables": tables, "figures": [{"file": "early_termination.png", "caption": "Early termination. Left: cycles per k-step of the VLP GEMM measured on "
                       "SmolLM2's INT4 codes, per array height, operand and row adders, against the paper "
                       "preset's 8 (full sweep). Right: fraction of the VLP nonlinear units' tile cycles "
                       "saved per layer"}],
            "readings": readings, "comparisons": [], "headline": {},
            "config": {"monte_carlo_samples": samples}}


if __name__ == "__main__":
    from mugi_jax.report import cli_main

    cli_main("early_termination")
