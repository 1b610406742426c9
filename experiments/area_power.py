"""Area and power breakdowns of every single-node design (component tables, CACTI SRAMs).

    python -m experiments.area_power [--quick] [--force] [--out results]

Area and leakage per role (array, nonlinear, vector, control, ...) and per SRAM; average dynamic
power per op class on the headline workload (Llama-2-70B-GQA, b8, s4096, paper preset).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments import _costlib as cl
from mugi_jax.report.helpers import figure, table

#: The report's entry for this script (mugi_jax.report.registry discovers it).
EXPERIMENT = {
    "title": "Area and power breakdowns",
    "section": "Cost", "needs": "", "in_quick": True, "est_s": 10, "order": 110,
}


def run(out_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    from mugi_jax.hw import ARCH_NAMES, area_breakdown_mm2, leakage_breakdown_mw

    out_dir = Path(out_dir)
    names = list(ARCH_NAMES)
    rows = []
    for n, a in zip(names, cl.archs(names)):
        ar, lk = area_breakdown_mm2(a), leakage_breakdown_mw(a)
        for part in sorted(set(ar) | set(lk), key=lambda k: (k in ("logic", "sram", "total"), k)):
            rows.append({"design": n, "part": part, "area_mm2": ar.get(part, 0.0), "leakage_mw": lk.get(part, 0.0)})
    rep = cl.sweep(names, [cl.workload()], "paper")
    b = rep.breakdown
    prow = []
    for i, n in enumerate(names):
        t_tot = float(np.asarray(rep.execution_time_s)[i, 0])
        for c, cls in enumerate(cl.CLASSES):
            prow.append({"design": n, "class": cls,
                         "dynamic_energy_j": float(np.asarray(b.dynamic_energy_j)[i, 0, c]),
                         "avg_dynamic_power_w": float(np.asarray(b.dynamic_energy_j)[i, 0, c]) / t_tot})
        prow.append({"design": n, "class": "leakage", "dynamic_energy_j": 0.0,
                     "avg_dynamic_power_w": float(np.asarray(rep.leakage_w)[i, 0])})
    tables = [table(out_dir, "area_leakage.csv", rows, "Area and leakage per part and design"),
              table(out_dir, "power.csv", prow, "Average power per op class (dynamic) and leakage, Llama-2-70B-GQA b8 s4096, paper preset")]
    parts = [p for p in dict.fromkeys(r["part"] for r in rows) if p not in ("logic", "sram", "total")]
    with figure(out_dir / "area_power.png", 1, 2, figsize=(15, 5)) as (fig, ax):
        from matplotlib.pyplot import setp as plt_setp

        bottom = np.zeros(len(names))
        for p in parts:
            v = np.array([sum(r["area_mm2"] for r in rows if r["design"] == n and r["part"] == p) for n in names])
            ax[0].bar(names, v, bottom=bottom, label=p)
            bottom += v
        ax[0].set_title("area per part", fontsize=9), ax[0].set_ylabel("area [mm$^2$]")
        ax[0].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        bottom = np.zeros(len(names))
        for cls in cl.CLASSES + ("leakage",):
            v = np.array([cl.get(prow, design=n, **{"class": cls})["avg_dynamic_power_w"] for n in names])
            ax[1].bar(names, v, bottom=bottom, label=cls)
            bottom += v
        ax[1].set_title("average power per op class (paper preset)", fontsize=9)
        ax[1].set_ylabel("average power [W]")
        ax[1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        for a in ax:
            a.tick_params(axis="x", labelsize=7)
            plt_setp(a.get_xticklabels(), rotation=60, ha="right", rotation_mode="anchor")
    tot = {n: cl.get(rows, design=n, part="total") for n in names}
    sram = {n: cl.get(rows, design=n, part="sram") for n in names}
    readings = [
        f"Mugi-256x8 area {tot['mugi-256x8']['area_mm2']:.3g} mm^2 ({sram['mugi-256x8']['area_mm2'] / tot['mugi-256x8']['area_mm2']:.1%} SRAM) "
        f"vs SA-16 {tot['sa-16']['area_mm2']:.3g} mm^2 ({sram['sa-16']['area_mm2'] / tot['sa-16']['area_mm2']:.1%} SRAM) "
        f"and SIMD-16 {tot['simd-16']['area_mm2']:.3g} mm^2: Mugi/SA-16 area ratio {tot['mugi-256x8']['area_mm2'] / tot['sa-16']['area_mm2']:.3g}.",
        "Leakage: " + ", ".join(f"{n} {tot[n]['leakage_mw']:.3g} mW" for n in cl.HEAD_DESIGNS) + ".",
    ]
    return {"tables": tables, "figures": [{"file": "area_power.png", "caption": "Left: area of each design split by part (32 nm; logic from the component "
                       "library, SRAM from CACTI). Right: average dynamic power per op class plus leakage "
                       "on Llama-2-70B-GQA, batch 8, sequence 4096, paper preset"}],
            "readings": readings, "comparisons": [],
            "headline": {"mugi256_area_mm2": tot["mugi-256x8"]["area_mm2"], "sa16_area_mm2": tot["sa-16"]["area_mm2"]},
            "config": {"designs": names}}


if __name__ == "__main__":
    from mugi_jax.report import cli_main

    cli_main("area_power")
