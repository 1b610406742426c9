# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The cost model: paper vs realistic preset, and one design change
#
# The **paper** preset replicates the published cost model (full early termination, 4096 decode
# steps for every projection, no DRAM bound, DRAM energy excluded); the **realistic** preset fixes
# its known weaknesses (see docs/cost_model.md).  We evaluate Llama-2-70B with GQA at batch 8,
# sequence 4096 on Mugi-256x8, a 16x16 systolic array and a 16x16 SIMD array, then explore one
# design change: the height H of the Mugi array.
#
# `MUGI_JAX_NOTEBOOK_SMALL=1` shortens the sweeps.

# %%
import os

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt
import numpy as np

from mugi_jax.cost import evaluate, sweep
from mugi_jax.hw import get_arch
from mugi_jax.workloads import Workload, get_model

SMALL = os.environ.get("MUGI_JAX_NOTEBOOK_SMALL") == "1"
workload = Workload(get_model("llama2-70b-gqa"), 8, 1024 if SMALL else 4096)
designs = ["mugi-256x8", "sa-16", "simd-16"]

# %% [markdown]
# ## Both presets on the headline designs

# %%
rep = {p: {d: evaluate(get_arch(d), workload, p) for d in designs} for p in ("paper", "realistic")}
print(f"{'design':12} {'preset':10} {'GFLOP/s':>9} {'GFLOP/J':>9} {'J/token':>9} {'area mm2':>9}")
for p in rep:
    for d in designs:
        r = rep[p][d]
        print(f"{d:12} {p:10} {float(r.throughput_gflops):9.2f} {float(r.power_efficiency_gflops_per_j):9.2f} "
              f"{float(r.j_per_token):9.3g} {float(r.area_mm2):9.3f}")

for p in rep:
    m, s, v = rep[p]["mugi-256x8"], rep[p]["sa-16"], rep[p]["simd-16"]
    print(f"{p}: throughput Mugi/SA-16 {float(m.throughput_gflops / s.throughput_gflops):.3f} (paper: 2.07), "
          f"energy efficiency Mugi/SIMD-16 {float(m.energy_efficiency / v.energy_efficiency):.3f} (paper: 3.11)")

# %% [markdown]
# ## Where the time goes (per op class)

# %%
classes = ["projection", "attention", "ffn", "nonlinear", "output"]
fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
for k, p in enumerate(rep):
    bottom = np.zeros(len(designs))
    for c, cls in enumerate(classes):
        v = np.array([float(rep[p][d].breakdown.time_s[c]) for d in designs])
        ax[k].bar(designs, v, bottom=bottom, label=cls)
        bottom += v
    ax[k].set_title(f"{p}: time per class [s]")
ax[0].legend(fontsize=7)

# %% [markdown]
# ## A design change: the Mugi array height H
#
# Taller arrays process more output columns per cycle (peak H MACs/cycle) and H/16 nonlinear
# elements per cycle, at the price of area.  The paper preset scales throughput ideally; the
# realistic preset adds fill/drain, DRAM bandwidth and data-driven early termination.

# %%
heights = (64, 256) if SMALL else (32, 64, 128, 256)
names = [f"mugi-{h}x8" for h in heights]
archs = [get_arch(n) for n in names]
paper = sweep(archs, [workload], "paper")
real = sweep(archs, [workload], "realistic")
print(f"{'H':>4} {'paper GFLOP/s':>14} {'real GFLOP/s':>13} {'area':>7} {'paper GFLOP/s/mm2':>18}")
for i, h in enumerate(heights):
    print(f"{h:4d} {paper.throughput_gflops[i, 0]:14.2f} {real.throughput_gflops[i, 0]:13.2f} "
          f"{paper.area_mm2[i, 0]:7.3f} {paper.throughput_gflops[i, 0] / paper.area_mm2[i, 0]:18.2f}")
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(heights, paper.throughput_gflops[:, 0], "o-", label="paper")
ax.plot(heights, real.throughput_gflops[:, 0], "s--", label="realistic")
ax.set_xscale("log", base=2), ax.set_xlabel("Mugi array height H"), ax.set_ylabel("GFLOP/s"), ax.legend()
