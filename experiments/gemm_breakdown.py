"""GEMM breakdown per layer type (projection, attention, FFN, LM head), design and model.

    python -m experiments.gemm_breakdown [--quick] [--force] [--out results]

Paper preset, batch 8, sequence 4096, every Llama-2 model; cycles, time and energy per op class,
plus the published per-layer cycle check (Llama-2-7B, 4 projections, Mugi 256x8 vs SA 16x16).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments import _costlib as cl
from mugi_jax.report import compare
from mugi_jax.report.helpers import figure, table

#: The report's entry for this script (mugi_jax.report.registry discovers it).
EXPERIMENT = {
    "title": "GEMM breakdown per layer type, design and model",
    "section": "Cost", "needs": "", "in_quick": True, "est_s": 10, "order": 60,
}

MODELS = ("llama2-7b", "llama2-13b", "llama2-70b", "llama2-70b-gqa")
DESIGNS = ("mugi-256x8", "carat-256x8", "sa-16", "sa-figna-16", "simd-16", "tensor-8x16x16", "mixpe-16")
GEMM_CLASSES = ("projection", "attention", "ffn", "output")


def run(out_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    from mugi_jax.workloads import get_model

    out_dir = Path(out_dir)
    names = list(DESIGNS)
    rep = cl.sweep(names, [cl.workload(m) for m in MODELS], "paper")
    rows = [r for r in cl.class_rows(rep, names, [{"model": m} for m in MODELS], "paper")
            if r["class"] in GEMM_CLASSES]
    for r in rows:  # share of GEMM time (excluding the nonlinear class)
        tot = sum(x["time_s"] for x in rows if x["design"] == r["design"] and x["model"] == r["model"])
        r["gemm_time_share"] = r["time_s"] / tot
    tables = [table(out_dir, "gemm_breakdown.csv", rows, "GEMM cycles/time/energy per class, design and model (paper preset, b8, s4096)")]
    # published per-layer check: Llama-2-7B, 4 projections, 32 layers
    n_layers = get_model("llama2-7b").layers
    per_layer = {d: cl.get(rows, design=d, model="llama2-7b", **{"class": "projection"})["cycles"] / n_layers
                 for d in ("mugi-256x8", "sa-16")}
    c1 = compare("layer_cycles_mugi256", per_layer["mugi-256x8"], tol=0.01)
    c2 = compare("layer_cycles_sa16", per_layer["sa-16"], tol=0.01)
    with figure(out_dir / "gemm_breakdown.png", 1, len(MODELS), figsize=(4 * len(MODELS), 4), sharey=False) as (fig, ax):
        for k, m in enumerate(MODELS):
            bottom = np.zeros(len(names))
            for cls in GEMM_CLASSES:
                v = np.array([cl.get(rows, design=d, model=m, **{"class": cls})["time_s"] for d in names])
                ax[k].bar(names, v, bottom=bottom, label=cls)
                bottom += v
            ax[k].set_title(m, fontsize=9)
            ax[k].set_ylabel("GEMM time [s]")
            ax[k].tick_params(axis="x", rotation=70, labelsize=7)
        ax[0].legend(fontsize=7)
    mugi = {c: cl.get(rows, design="mugi-256x8", model=cl.HEAD_MODEL, **{"class": c}) for c in GEMM_CLASSES}
    sa = {c: cl.get(rows, design="sa-16", model=cl.HEAD_MODEL, **{"class": c}) for c in GEMM_CLASSES}
    readings = [c1["text"], c2["text"],
                "Llama-2-70B-GQA GEMM time, Mugi-256x8 vs SA-16 per class: " + "; ".join(
                    f"{c} {sa[c]['time_s'] / mugi[c]['time_s']:.3g}x faster" for c in GEMM_CLASSES) + ".",
                "Largest GEMM class on Mugi-256x8 (Llama-2-70B-GQA): "
                + max(GEMM_CLASSES, key=lambda c: mugi[c]["time_s"])
                + f" ({max(mugi[c]['gemm_time_share'] for c in GEMM_CLASSES):.1%} of GEMM time)."]
    return {"tables": tables, "figures": [{"file": "gemm_breakdown.png", "caption": "GEMM time per op class, design and model (paper preset)"}],
            "readings": readings, "comparisons": [c1, c2],
            "headline": {"layer_cycles_mugi256": per_layer["mugi-256x8"], "layer_cycles_sa16": per_layer["sa-16"]},
            "config": {"models": MODELS, "designs": names, "batch": cl.HEAD_BATCH, "seq_len": cl.HEAD_SEQ}}


if __name__ == "__main__":
    from mugi_jax.report import cli_main

    cli_main("gemm_breakdown")
