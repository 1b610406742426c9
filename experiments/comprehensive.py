"""The comprehensive table (throughput, energy efficiency, power efficiency, area, carbon) under
the paper and realistic presets, and the paper's headline ratios.

    python -m experiments.comprehensive [--quick] [--force] [--out results]

Wraps ``experiments/paper_vs_realistic.py`` (its ``comprehensive`` rows); the
quick mode evaluates only the three headline designs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments import _costlib as cl
from mugi_jax.report import compare
from mugi_jax.report.helpers import figure, table

KEYS = {"throughput Mugi-256x8 / SA-16": "llm_throughput_x",
        "energy efficiency (paper metric) Mugi / SIMD-16": "llm_energy_eff_x",
        "operational carbon SA-16 / Mugi": "operational_carbon_x",
        "embodied carbon SA-16 / Mugi": "embodied_carbon_x"}


def _headlines(rows):
    """The paper's four headline ratios (computed here so that the table does not depend on the
    design list of paper_vs_realistic.headlines)."""
    out = []
    for label, num, den, key, invert in (
            ("throughput Mugi-256x8 / SA-16", "mugi-256x8", "sa-16", "throughput_gflops", False),
            ("energy efficiency (paper metric) Mugi / SIMD-16", "mugi-256x8", "simd-16", "energy_efficiency_paper", False),
            ("GFLOP/J Mugi / SA-16", "mugi-256x8", "sa-16", "gflop_per_j", False),
            ("GFLOP/J Mugi / SIMD-16", "mugi-256x8", "simd-16", "gflop_per_j", False),
            ("operational carbon SA-16 / Mugi", "mugi-256x8", "sa-16", "operational_carbon_g", True),
            ("embodied carbon SA-16 / Mugi", "mugi-256x8", "sa-16", "embodied_carbon_g", True),
            ("J/token SA-16 / Mugi", "mugi-256x8", "sa-16", "j_per_token", True)):
        v = {}
        for preset in ("paper", "realistic"):
            a, b = cl.get(rows, design=num, preset=preset)[key], cl.get(rows, design=den, preset=preset)[key]
            v[preset] = b / a if invert else a / b
        out.append({"ratio": label, "paper": v["paper"], "realistic": v["realistic"],
                    "change_pct": 100 * (v["realistic"] / v["paper"] - 1)})
    return out


def run(out_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    from experiments import paper_vs_realistic as pvr

    out_dir = Path(out_dir)
    if quick:
        import mugi_jax.hw as hw

        saved = hw.ARCH_NAMES
        hw.ARCH_NAMES = cl.HEAD_DESIGNS + ("tensor-8x16x16",)  # pvr.comprehensive imports the name list at call time
        try:
            rows = pvr.comprehensive(cl.HEAD_MODEL, cl.HEAD_BATCH, cl.HEAD_SEQ)
        finally:
            hw.ARCH_NAMES = saved
    else:
        rows = pvr.comprehensive(cl.HEAD_MODEL, cl.HEAD_BATCH, cl.HEAD_SEQ)
    heads = _headlines(rows)
    tables = [table(out_dir, "headlines.csv", heads, "The paper's headline ratios under both presets"),
              table(out_dir, "comprehensive.csv", rows, "Every design x preset (Llama-2-70B-GQA, b8, s4096)")]
    designs = list(dict.fromkeys(r["design"] for r in rows))
    with figure(out_dir / "comprehensive.png", 1, 4, figsize=(18, 4.5)) as (fig, ax):
        x = np.arange(len(designs))
        for i, (key, label) in enumerate((("throughput_gflops", "throughput [GFLOP/s]"),
                                          ("energy_efficiency_paper", "energy efficiency (paper metric)"),
                                          ("gflop_per_j", "GFLOP/J"), ("area_mm2", "area [mm^2]"))):
            for j, preset in enumerate(("paper", "realistic")):
                ax[i].bar(x + (j - 0.5) * 0.4, [cl.get(rows, design=d, preset=preset)[key] for d in designs],
                          0.4, label=preset)
            ax[i].set_xticks(x, designs, rotation=70, fontsize=7)
            ax[i].set_yscale("log")
            ax[i].set_title(label, fontsize=9)
        ax[0].legend(fontsize=7)
    comps, readings = [], []
    for h in heads:
        if h["ratio"] in KEYS:
            c = compare(KEYS[h["ratio"]], h["paper"])
            comps.append(c)
            readings.append(c["text"] + f" Realistic preset: {h['realistic']:.3g} ({h['change_pct']:+.1f}% vs the paper preset).")
        else:
            readings.append(f"{h['ratio']}: {h['paper']:.3g} (paper preset), {h['realistic']:.3g} (realistic, {h['change_pct']:+.1f}%).")
    return {"tables": tables, "figures": [{"file": "comprehensive.png", "caption": "Comprehensive metrics per design, paper vs realistic preset"}],
            "readings": readings, "comparisons": comps,
            "headline": {h["ratio"]: {"paper": h["paper"], "realistic": h["realistic"]} for h in heads},
            "config": {"model": cl.HEAD_MODEL, "batch": cl.HEAD_BATCH, "seq_len": cl.HEAD_SEQ, "designs": designs}}


if __name__ == "__main__":
    from mugi_jax.report import cli_main

    cli_main("comprehensive")
