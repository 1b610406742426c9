"""Shared helpers of the cost-model experiments (report suite): the headline workload, sweeps
under both presets, per-class breakdown rows."""

from __future__ import annotations

import numpy as np

HEAD_MODEL, HEAD_BATCH, HEAD_SEQ = "llama2-70b-gqa", 8, 4096
HEAD_DESIGNS = ("mugi-256x8", "sa-16", "simd-16")
CLASSES = ("projection", "attention", "ffn", "nonlinear", "output")


def workload(model: str = HEAD_MODEL, batch: int = HEAD_BATCH, seq: int = HEAD_SEQ, kv_heads=None):
    from mugi_jax.workloads import Workload, get_model

    return Workload(get_model(model, kv_heads=kv_heads) if kv_heads else get_model(model), batch, seq)


def archs(names):
    from mugi_jax.hw import get_arch

    out = []
    for n in names:
        if n.endswith("-lut"):
            out.append(get_arch(n[:-4], variant="lut"))
        elif "@" in n:
            base, mesh = n.split("@")
            out.append(get_arch(base, nodes=mesh))
        else:
            out.append(get_arch(n))
    return out


def sweep(names, workloads, preset: str):
    """Report with axes [design, workload] as float64 NumPy arrays."""
    from mugi_jax.cost import sweep as _sweep

    return _sweep(archs(names), list(workloads), preset)


def scalar_rows(rep, names, wl_labels, preset: str, extra=None):
    """One row per (design, workload) with the headline metrics."""
    rows = []
    for i, n in enumerate(names):
        for j, lab in enumerate(wl_labels):
            g = lambda f: float(np.asarray(getattr(rep, f))[i, j])  # noqa: E731
            row = {"design": n, **(lab if isinstance(lab, dict) else {"workload": lab}), "preset": preset,
                   "throughput_gflops": g("throughput_gflops"), "energy_efficiency": g("energy_efficiency"),
                   "gflop_per_j": g("power_efficiency_gflops_per_j"), "energy_j": g("energy_j"),
                   "execution_time_s": g("execution_time_s"), "area_mm2": g("area_mm2"),
                   "tokens_per_s": g("tokens_per_s"), "j_per_token": g("j_per_token"),
                   "operational_carbon_g": g("operational_carbon_g"),
                   "embodied_carbon_g": g("embodied_carbon_g")}
            if extra:
                row.update(extra)
            rows.append(row)
    return rows


def paper_and_realistic(row_fn, quick: bool):
    """Rows of the headline workload under both presets: every built-in design under the paper
    preset, every one (quick: the headline designs) under the realistic one.  ``row_fn`` is
    :func:`scalar_rows` or :func:`class_rows`.  Returns ``(rows, names, realistic_names)``."""
    from mugi_jax.hw import ARCH_NAMES

    names = list(ARCH_NAMES)
    real_names = list(HEAD_DESIGNS) if quick else names
    rows = row_fn(sweep(names, [workload()], "paper"), names, [HEAD_MODEL], "paper")
    rows += row_fn(sweep(real_names, [workload()], "realistic"), real_names, [HEAD_MODEL], "realistic")
    return rows, names, real_names


def class_rows(rep, names, wl_labels, preset: str):
    """One row per (design, workload, op class) from the breakdown."""
    b = rep.breakdown
    rows = []
    for i, n in enumerate(names):
        for j, lab in enumerate(wl_labels):
            tot_t = float(np.sum(np.asarray(b.time_s)[i, j]))
            tot_e = float(np.sum(np.asarray(b.dynamic_energy_j)[i, j] + np.asarray(b.leakage_energy_j)[i, j]))
            for c, cls in enumerate(CLASSES):
                t = float(np.asarray(b.time_s)[i, j, c])
                e = float(np.asarray(b.dynamic_energy_j)[i, j, c] + np.asarray(b.leakage_energy_j)[i, j, c])
                rows.append({"design": n, **(lab if isinstance(lab, dict) else {"workload": lab}),
                             "preset": preset, "class": cls,
                             "cycles": float(np.asarray(b.cycles)[i, j, c]), "time_s": t,
                             "time_share": t / tot_t if tot_t else float("nan"),
                             "energy_j": e, "energy_share": e / tot_e if tot_e else float("nan"),
                             "gflop": float(np.asarray(b.flops_g)[i, j, c])})
    return rows


def get(rows, **kw):
    """The single row matching every key=value."""
    sel = [r for r in rows if all(r.get(k) == v for k, v in kw.items())]
    if len(sel) != 1:
        raise KeyError(f"{kw}: {len(sel)} rows match")
    return sel[0]
