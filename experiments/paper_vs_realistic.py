"""Paper vs realistic preset: the comprehensive table for every design, the headline ratios, and
the early-termination histograms / cycles table.

    python -m experiments.paper_vs_realistic [--model llama2-70b-gqa] [--batch 8] [--seq-len 4096]

Writes ``results/paper_vs_realistic/``: ``comprehensive.csv`` (every single-node design x
{paper, realistic}, plus Mugi-256x8 on an 8x8 mesh, the tensor core on 2x2 and Mugi with 2 row
adders (where early termination can act): throughput, the paper's energy efficiency, GFLOP/J, pJ/FLOP with and without
DRAM, J/token with and without DRAM, area, operational and embodied carbon, TTFT, TPOT),
``headlines.csv`` (the paper's headline ratios under both presets and how far they move),
``et_cycles.csv`` (average cycles per k-step, H = 32..256 x adders 1, 2, 4, 8: measured on the
real SmolLM2 codes, analytic k-class and i.i.d. models, Monte Carlo), ``comprehensive.png``,
``et_histograms.png`` and ``provenance.json``; prints the headline and cycles tables.
"""

from __future__ import annotations

import argparse
import csv
import time
from importlib import resources
from pathlib import Path

import numpy as np

HEADLINE_ARCHS = ("mugi-256x8", "sa-16", "simd-16")


def comprehensive(model: str, batch: int, seq_len: int, designs=None):
    """Every design (``designs``: names; default every built-in) under both presets, plus the
    mesh and extra-adder variants."""
    from mugi_jax.cost import evaluate
    from mugi_jax.cost.realistic import evaluate_realistic
    from mugi_jax.hw import ARCH_NAMES, get_arch
    from mugi_jax.workloads import Workload, get_model

    w = Workload(get_model(model), batch, seq_len)
    rows = []
    from mugi_jax.cost.realistic import RealisticConfig

    extra = ["mugi-256x8@8x8", "tensor-8x16x16@2x2", "mugi-256x8+2adders", "mugi-32x8+2adders"]
    for name in list(ARCH_NAMES if designs is None else designs) + extra:
        base, _, mesh = name.partition("@")
        base, _, adders = base.partition("+")
        arch = get_arch(base, nodes=mesh or "1x1")
        cfg = RealisticConfig(adders_per_row=2) if adders else RealisticConfig()
        p = evaluate(arch, w, "paper")
        r, x = evaluate_realistic(arch, w, cfg)
        for preset, rep in (("paper", p), ("realistic", r)):
            flops = float(rep.flops_g) * 1e9
            e_on = float(rep.energy_j) if preset == "paper" else x.onchip_energy_j
            rows.append({
                "design": name, "preset": preset,
                "throughput_gflops": float(rep.throughput_gflops),
                "energy_j": float(rep.energy_j),
                "energy_efficiency_paper": float(rep.energy_efficiency),
                "gflop_per_j": float(rep.power_efficiency_gflops_per_j),
                "pj_per_flop": float(rep.energy_j) / flops * 1e12,
                "pj_per_flop_onchip": e_on / flops * 1e12,
                "j_per_token": float(rep.j_per_token),
                "j_per_token_onchip": e_on / float(rep.tokens),
                "area_mm2": float(rep.area_mm2),
                "operational_carbon_g": float(rep.operational_carbon_g),
                "embodied_carbon_g": float(rep.embodied_carbon_g),
                "execution_time_s": float(rep.execution_time_s),
                "ttft_s": x.ttft_s if preset == "realistic" else float("nan"),
                "tpot_s": x.tpot_s if preset == "realistic" else float("nan"),
                "memory_bound_fraction": x.memory_bound_fraction if preset == "realistic" else 0.0,
            })
    return rows


#: (label, numerator design, denominator design, metric, invert) of the headline ratios.
HEADLINE_SPECS: tuple[tuple[str, str, str, str, bool], ...] = (
        ("throughput Mugi-256x8 / SA-16", "mugi-256x8", "sa-16", "throughput_gflops", False),
        ("energy efficiency (paper metric) Mugi / SIMD-16", "mugi-256x8", "simd-16", "energy_efficiency_paper", False),
        ("GFLOP/J Mugi / SA-16", "mugi-256x8", "sa-16", "gflop_per_j", False),
        ("GFLOP/J Mugi / SIMD-16", "mugi-256x8", "simd-16", "gflop_per_j", False),
        ("operational carbon SA-16 / Mugi", "mugi-256x8", "sa-16", "operational_carbon_g", True),
        ("embodied carbon SA-16 / Mugi", "mugi-256x8", "sa-16", "embodied_carbon_g", True),
        ("J/token SA-16 / Mugi", "mugi-256x8", "sa-16", "j_per_token", True),
        ("multi-node speedup Mugi-256x8 8x8 mesh / 1 node", "mugi-256x8@8x8", "mugi-256x8", "throughput_gflops", False),
        ("multi-node speedup tensor core 2x2 / 1 node", "tensor-8x16x16@2x2", "tensor-8x16x16", "throughput_gflops", False),
        ("Mugi-256x8 2 adders/row (ET) / 1 adder, throughput", "mugi-256x8+2adders", "mugi-256x8", "throughput_gflops", False),
        ("Mugi-32x8 2 adders/row (ET) / 1 adder, throughput", "mugi-32x8+2adders", "mugi-32x8", "throughput_gflops", False),
)


def headlines(rows, specs=HEADLINE_SPECS, rows_for=None):
    """The ratios ``specs`` under both presets (default: the paper's headline ratios, Mugi-256x8
    vs SA-16, energy efficiency vs SIMD-16); ``rows_for(label)`` may pick other rows per ratio."""
    out = []
    for label, num, den, key, invert in specs:
        src = rows if rows_for is None else rows_for(label)
        get = {(r["design"], r["preset"]): r for r in src}
        vals = {}
        for preset in ("paper", "realistic"):
            a, b = get[(num, preset)][key], get[(den, preset)][key]
            vals[preset] = b / a if invert else a / b
        out.append({"ratio": label, "paper": vals["paper"], "realistic": vals["realistic"],
                    "change_pct": 100 * (vals["realistic"] / vals["paper"] - 1)})
    return out


def et_cycles(samples: int = 20000):
    """Cycles per k-step, measured and modelled (``samples=0``: no Monte Carlo column)."""
    import jax

    from mugi_jax.cost import early_termination as et

    text = resources.files("mugi_jax").joinpath("data/cost/et_measured_smollm2.csv").read_text()
    meas = list(csv.DictReader(ln for ln in text.splitlines() if not ln.startswith("#")))
    weights = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    tab = et.code_table()
    rows = []
    for group, tensors in (("weights", weights), ("kv_cache", {"k_cache", "v_cache"})):
        pooled = np.concatenate([tab.pmfs(t) for t in sorted(tensors)]).mean(0)
        for h in et.HEIGHTS:
            for a in et.ADDERS:
                sel = [r for r in meas if r["tensor"] in tensors and int(r["height"]) == h
                       and int(r["adders_per_row"]) == a]
                mc = float(et.monte_carlo_cycles_per_kstep(jax.random.key(h * 10 + a), pooled, h, a,
                                                           samples=samples)) if samples else float("nan")
                rows.append({
                    "operand": group, "height": h, "adders_per_row": a,
                    "measured": float(np.mean([float(r["measured"]) for r in sel])),
                    "analytic_kbinned": float(np.mean([float(r["kbinned"]) for r in sel])),
                    "analytic_iid": float(np.mean([float(r["iid"]) for r in sel])),
                    "analytic_iid_pooled": float(et.expected_cycles_np(pooled, h, a)),
                    "monte_carlo_iid_pooled": mc,
                    "tensors": len(sel),
                })
    return rows


def plots(rows, et_rows, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mugi_jax.cost import early_termination as et
    from mugi_jax.io import save_figure

    designs = sorted({r["design"] for r in rows}, key=[r["design"] for r in rows].index)
    get = {(r["design"], r["preset"]): r for r in rows}
    x = np.arange(len(designs))
    fig, ax = plt.subplots(1, 3, figsize=(17, 4.8))
    for i, (key, label, log) in enumerate((("throughput_gflops", "throughput [GFLOP/s]", True),
                                            ("pj_per_flop", "energy per FLOP [pJ] (realistic: with DRAM)", False),
                                            ("j_per_token", "energy per token [J]", True))):
        for j, preset in enumerate(("paper", "realistic")):
            ax[i].bar(x + (j - 0.5) * 0.4, [get[(d, preset)][key] for d in designs], 0.4, label=preset)
        ax[i].set_xticks(x, designs, rotation=70, fontsize=7)
        ax[i].set_title(label, fontsize=9)
        if log:
            ax[i].set_yscale("log")
        ax[i].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "comprehensive.png", dpi=120)
    plt.close(fig)

    tab = et.code_table()
    fig, ax = plt.subplots(1, 2, figsize=(12, 4))
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed",
             "k_cache", "v_cache")
    for i, name in enumerate(names):
        ax[0].bar(np.arange(8) + (i - 4.5) * 0.08, tab.pmfs(name).mean(0), 0.08, label=name)
    ax[0].set_xlabel("|code| (sign-magnitude INT4)")
    ax[0].set_ylabel("fraction")
    ax[0].set_title("SmolLM2-135M code magnitudes (mean over layers)", fontsize=9)
    ax[0].legend(fontsize=6, ncol=2)
    for op, style in (("weights", "-"), ("kv_cache", "--")):
        for a in et.ADDERS[1:]:
            sel = [r for r in et_rows if r["operand"] == op and r["adders_per_row"] == a]
            ax[1].plot([r["height"] for r in sel], [r["measured"] for r in sel], style, marker="o",
                       label=f"{op}, {a} adders (measured)")
            ax[1].plot([r["height"] for r in sel], [r["analytic_kbinned"] for r in sel], style,
                       marker="x", alpha=0.5, label=f"{op}, {a} adders (analytic)")
    ax[1].axhline(8, color="k", lw=0.8, label="1 adder / no ET")
    ax[1].set_xscale("log", base=2)
    ax[1].set_xlabel("array height H")
    ax[1].set_ylabel("cycles per k-step")
    ax[1].legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, out / "et_histograms.png", dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama2-70b-gqa")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--out", default="results/paper_vs_realistic")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    from mugi_jax.report.helpers import script_out_dir

    script_out_dir(args.out)
    t0 = time.perf_counter()
    from mugi_jax.io import provenance, write_csv, write_json

    rows = comprehensive(args.model, args.batch, args.seq_len)
    heads = headlines(rows)
    et_rows = et_cycles()
    out = Path(args.out)
    write_csv(out / "comprehensive.csv", rows)
    write_csv(out / "headlines.csv", heads)
    write_csv(out / "et_cycles.csv", et_rows)
    if not args.no_plots:
        plots(rows, et_rows, out)
    write_json(out / "provenance.json", provenance(vars(args), seed=0, wall_time_s=time.perf_counter() - t0))
    print(f"{args.model}, batch {args.batch}, seq {args.seq_len}")
    print(f"{'headline ratio':52s} {'paper':>8s} {'realistic':>10s} {'change':>8s}")
    for h in heads:
        print(f"{h['ratio']:52s} {h['paper']:8.3f} {h['realistic']:10.3f} {h['change_pct']:+7.1f}%")
    print("\naverage cycles per k-step: measured on SmolLM2 INT4 codes / analytic k-class model / analytic "
          "i.i.d. per tensor  [analytic i.i.d. pooled distribution vs Monte Carlo]")
    for op in ("weights", "kv_cache"):
        print(f"  {op}: H \\ adders per row = 1, 2, 4, 8")
        for hgt in (32, 64, 128, 256):
            cells = [r for r in et_rows if r["operand"] == op and r["height"] == hgt]
            print(f"  {hgt:>5d} " + "".join(
                f" {c['measured']:5.3f}/{c['analytic_kbinned']:5.3f}/{c['analytic_iid']:5.3f}"
                f" [{c['analytic_iid_pooled']:5.3f} vs {c['monte_carlo_iid_pooled']:5.3f}] |"
                for c in cells))
    from mugi_jax.cost import early_termination as et

    for fn in ("softmax", "silu"):
        print(f"nonlinear {fn}: cycles per tile measured {et.nonlinear_cycles_per_tile(fn):.3f}, "
              f"analytic {et.nonlinear_analytic_cycles_per_tile(fn):.3f}, "
              f"no early termination {et.nonlinear_cycles_per_tile(fn, False):.0f}")
    print(f"\nwrote {out}/ in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
