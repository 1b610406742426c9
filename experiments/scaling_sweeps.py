"""Batch-size, sequence-length and GQA-group-size sweeps: Mugi-256x8 vs SA-16 and SIMD-16.

    python -m experiments.scaling_sweeps [--quick] [--force] [--out results]

Llama-2-70B; paper preset everywhere, realistic preset too in the full run.  The base point is
batch 8, sequence 4096, 8 KV heads (GQA); each sweep varies one of the three.
"""

from __future__ import annotations

from pathlib import Path

from experiments import _costlib as cl
from mugi_jax.report.helpers import figure, table

#: The report's entry for this script (mugi_jax.report.registry discovers it).
EXPERIMENT = {
    "title": "Batch-size, sequence-length and GQA-group sweeps",
    "section": "Cost", "needs": "", "in_quick": True, "est_s": 30, "order": 90,
}


def _sweep_rows(preset):
    from mugi_jax.workloads import BATCH_SIZES, GQA_KV_HEADS, SEQ_LENS

    names = list(cl.HEAD_DESIGNS)
    rows = []
    for sweep, values, mk in (("batch", BATCH_SIZES, lambda v: cl.workload(batch=v)),
                              ("seq_len", SEQ_LENS, lambda v: cl.workload(seq=v)),
                              ("kv_heads", GQA_KV_HEADS, lambda v: cl.workload("llama2-70b", kv_heads=v))):
        rep = cl.sweep(names, [mk(v) for v in values], preset)
        rows += cl.scalar_rows(rep, names, [{"sweep": sweep, "value": v} for v in values], preset)
    for r in rows:
        base = cl.get(rows, design="sa-16", sweep=r["sweep"], value=r["value"], preset=preset)
        simd = cl.get(rows, design="simd-16", sweep=r["sweep"], value=r["value"], preset=preset)
        r["throughput_vs_sa16"] = r["throughput_gflops"] / base["throughput_gflops"]
        r["energy_eff_vs_simd16"] = r["energy_efficiency"] / simd["energy_efficiency"]
    return rows


def run(out_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    out_dir = Path(out_dir)
    presets = ("paper",) if quick else ("paper", "realistic")
    rows = [r for p in presets for r in _sweep_rows(p)]
    tables = [table(out_dir, "scaling_sweeps.csv", rows, "Batch / sequence / KV-head sweeps (Llama-2-70B)")]
    with figure(out_dir / "scaling_sweeps.png", 2, 3, figsize=(15, 7)) as (fig, ax):
        for k, sweep in enumerate(("batch", "seq_len", "kv_heads")):
            for p in presets:
                sel = [r for r in rows if r["sweep"] == sweep and r["preset"] == p and r["design"] == "mugi-256x8"]
                ax[0, k].plot([r["value"] for r in sel], [r["throughput_vs_sa16"] for r in sel], marker="o", label=p)
                ax[1, k].plot([r["value"] for r in sel], [r["energy_eff_vs_simd16"] for r in sel], marker="o", label=p)
            for i, t in enumerate(("throughput Mugi-256x8 / SA-16", "energy efficiency Mugi-256x8 / SIMD-16")):
                ax[i, k].set_xscale("log", base=2)
                ax[i, k].set_xlabel({"batch": "batch [sequences]", "seq_len": "sequence length [tokens]",
                                     "kv_heads": "KV heads"}[sweep] + " (log2)")
                ax[i, k].set_ylabel("ratio [x]")
                ax[i, k].set_title(t, fontsize=9)
                ax[i, k].legend(fontsize=7)
    readings = []
    for p in presets:
        for sweep in ("batch", "seq_len", "kv_heads"):
            sel = [r for r in rows if r["sweep"] == sweep and r["preset"] == p and r["design"] == "mugi-256x8"]
            t = [r["throughput_vs_sa16"] for r in sel]
            e = [r["energy_eff_vs_simd16"] for r in sel]
            readings.append(f"{p} preset, {sweep} {sel[0]['value']}..{sel[-1]['value']}: Mugi-256x8 throughput "
                            f"{min(t):.3g}x-{max(t):.3g}x SA-16, energy efficiency {min(e):.3g}x-{max(e):.3g}x SIMD-16.")
    return {"tables": tables, "figures": [{"file": "scaling_sweeps.png", "caption": "Mugi-256x8 advantage across batch size, sequence length and KV heads"}],
            "readings": readings, "comparisons": [], "headline": {},
            "config": {"presets": presets, "designs": cl.HEAD_DESIGNS, "model": "llama2-70b"}}


if __name__ == "__main__":
    from mugi_jax.report import cli_main

    cli_main("scaling_sweeps")
