"""Multi-node scaling: meshes 1x1 .. 8x8 of Mugi / Carat / SA / SIMD nodes.

    python -m experiments.multinode [--quick] [--force] [--out results]

Paper preset (speedup = node count by construction: no NoC or DRAM bound) and, in the full run,
the realistic preset (shared DRAM roofline).
"""

from __future__ import annotations

from pathlib import Path

from experiments import _costlib as cl
from mugi_jax.report.helpers import figure, table

#: The report's entry for this script (mugi_jax.report.registry discovers it).
EXPERIMENT = {
    "title": "Multi-node scaling",
    "section": "Cost", "needs": "", "in_quick": True, "est_s": 10, "order": 100,
}

BASES = ("mugi-256x8", "carat-256x8", "sa-16", "simd-16")


def run(out_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    from mugi_jax.hw import MESHES

    out_dir = Path(out_dir)
    rows = []
    presets = ("paper",) if quick else ("paper", "realistic")
    for preset in presets:
        bases = BASES if preset == "paper" else ("mugi-256x8", "sa-16")
        names = [f"{b}@{m}" for b in bases for m in MESHES]
        try:
            rep = cl.sweep(names, [cl.workload()], preset)
        except Exception as err:  # noqa: BLE001 - a preset without mesh support is reported, not fatal
            rows.append({"design": "-", "mesh": "-", "nodes": 0, "preset": preset, "note": f"unsupported: {err}"})
            continue
        for r in cl.scalar_rows(rep, names, [cl.HEAD_MODEL], preset):
            base, mesh = r["design"].split("@")
            a, b = (int(v) for v in mesh.split("x"))
            rows.append({"design": base, "mesh": mesh, "nodes": a * b, "preset": preset, "note": "",
                         **{k: r[k] for k in ("throughput_gflops", "energy_efficiency", "gflop_per_j", "area_mm2", "execution_time_s")}})
    good = [r for r in rows if r["nodes"]]
    for r in good:
        one = [x for x in good if x["design"] == r["design"] and x["preset"] == r["preset"] and x["nodes"] == 1][0]
        r["speedup"] = r["throughput_gflops"] / one["throughput_gflops"]
        r["scaling_efficiency"] = r["speedup"] / r["nodes"]
    tables = [table(out_dir, "multinode.csv", rows, "Mesh scaling (Llama-2-70B-GQA, b8, s4096)",
                    fieldnames=list(good[0].keys()) if good else None)]
    with figure(out_dir / "multinode.png", 1, 1, figsize=(6, 4)) as (fig, ax):
        for preset in presets:
            for b in BASES:
                sel = [r for r in good if r["design"] == b and r["preset"] == preset]
                if sel:
                    ax.plot([r["nodes"] for r in sel], [r["speedup"] for r in sel], marker="o",
                            ls="-" if preset == "paper" else "--", label=f"{b} ({preset})")
        ax.plot([1, 64], [1, 64], color="k", lw=0.6, label="linear")
        ax.set_xscale("log", base=2), ax.set_yscale("log", base=2)
        ax.set_xlabel("nodes (log2)"), ax.set_ylabel("speedup vs 1 node [x] (log2)"), ax.legend(fontsize=6)
    readings = []
    for preset in presets:
        sel = [r for r in good if r["preset"] == preset and r["nodes"] == 64]
        if sel:
            readings.append(f"{preset} preset, 8x8 mesh: scaling efficiency " + ", ".join(
                f"{r['design']} {r['scaling_efficiency']:.3g}" for r in sel)
                + (" (the published model assumes speedup = node count)." if preset == "paper" else "."))
        else:
            readings.append(f"{preset} preset: meshes not supported ({[r['note'] for r in rows if r['preset'] == preset][:1]}).")
    return {"tables": tables, "figures": [{"file": "multinode.png", "caption": "Speedup vs node count"}],
            "readings": readings, "comparisons": [], "headline": {},
            "config": {"bases": BASES, "meshes": list(MESHES), "presets": presets}}


if __name__ == "__main__":
    from mugi_jax.report import cli_main

    cli_main("multinode")
