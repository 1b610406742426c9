"""End-to-end latency breakdown per op class and design, paper vs realistic preset.

    python -m experiments.latency_breakdown [--quick] [--force] [--out results]

Llama-2-70B (GQA), batch 8, sequence 4096.  Realistic rows add TTFT / TPOT and the memory-bound
fraction (DRAM roofline).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments import _costlib as cl
from mugi_jax.report.helpers import figure, table

#: The report's entry for this script (mugi_jax.report.registry discovers it).
EXPERIMENT = {
    "title": "End-to-end latency breakdown",
    "section": "Cost", "needs": "", "in_quick": True, "est_s": 20, "order": 70,
}


def run(out_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    from mugi_jax.cost.realistic import evaluate_realistic

    out_dir = Path(out_dir)
    rows, names, real_names = cl.paper_and_realistic(cl.class_rows, quick)
    ext = []
    for a, n in zip(cl.archs(real_names), real_names):
        _, x = evaluate_realistic(a, cl.workload())
        ext.append({"design": n, "ttft_s": x.ttft_s, "tpot_s": x.tpot_s,
                    "memory_bound_fraction": x.memory_bound_fraction})
    tables = [table(out_dir, "latency_breakdown.csv", rows, "Time and energy per op class (Llama-2-70B-GQA, b8, s4096)"),
              table(out_dir, "ttft_tpot.csv", ext, "Realistic preset: time to first token, time per output token, memory-bound fraction")]
    with figure(out_dir / "latency_breakdown.png", 1, 2, figsize=(14, 4.5)) as (fig, ax):
        for k, (preset, ns) in enumerate((("paper", names), ("realistic", real_names))):
            bottom = np.zeros(len(ns))
            for cls in cl.CLASSES:
                v = np.array([cl.get(rows, design=d, preset=preset, **{"class": cls})["time_s"] for d in ns])
                ax[k].bar(ns, v, bottom=bottom, label=cls)
                bottom += v
            # linear axis: stacked bars on a log axis misstate every segment but the bottom one
            ax[k].set_title(f"{preset} preset: execution time per op class", fontsize=9)
            ax[k].set_ylabel("execution time [s]")
            ax[k].tick_params(axis="x", rotation=70, labelsize=7)
        ax[0].legend(fontsize=7)
    readings = []
    for d in cl.HEAD_DESIGNS:
        p = {c: cl.get(rows, design=d, preset="paper", **{"class": c})["time_share"] for c in cl.CLASSES}
        r = {c: cl.get(rows, design=d, preset="realistic", **{"class": c})["time_share"] for c in cl.CLASSES}
        readings.append(f"{d}: time shares paper -> realistic: " + ", ".join(
            f"{c} {p[c]:.1%} -> {r[c]:.1%}" for c in cl.CLASSES) + ".")
    m = cl.get(ext, design="mugi-256x8")
    readings.append(f"Realistic Mugi-256x8: TTFT {m['ttft_s']:.3g} s, TPOT {m['tpot_s'] * 1e3:.3g} ms, "
                    f"{m['memory_bound_fraction']:.1%} of the time memory-bound on the DRAM roofline (a bound the "
                    "paper model does not have).")
    return {"tables": tables, "figures": [{"file": "latency_breakdown.png", "caption": "Execution time per op class, paper vs realistic preset"}],
            "readings": readings, "comparisons": [],
            "headline": {"mugi_tpot_ms": m["tpot_s"] * 1e3, "mugi_ttft_s": m["ttft_s"]},
            "config": {"model": cl.HEAD_MODEL, "batch": cl.HEAD_BATCH, "seq_len": cl.HEAD_SEQ,
                       "designs": names, "realistic_designs": real_names}}


if __name__ == "__main__":
    from mugi_jax.report import cli_main

    cli_main("latency_breakdown")
