"""The :class:`Report` pytree and the metric definitions.

With T = execution time [s], E_dyn = dynamic energy [J], P_leak = leakage power [W],
FLOP = 2 x MACs + 3 x nonlinear elements:

    E                 = E_dyn + P_leak * T                       (on-chip; DRAM excluded in "paper")
    throughput        = FLOP / T / 1e9                           [GFLOP/s]
    energy_efficiency = throughput / E                           [(GFLOP/s) / J]  the paper's metric,
                                                                   an inverse energy-delay product
    power_efficiency  = FLOP / 1e9 / E                           [GFLOP/J]  energy per operation
    tokens_per_s      = tokens / T,  j_per_token = E / tokens
    operational CO2   = CI [g/kWh] * E / 3.6e6                   [g]
    embodied CO2      = CPA [g/mm^2] * area * T / lifetime       [g]  (ACT-style, amortised)

``tokens`` = batch x the decode steps the preset charges the projections for (4096 in ``paper``).

Reports returned by :func:`mugi_jax.cost.evaluate` / :func:`mugi_jax.cost.sweep` hold NumPy
float64 arrays (the per-row work runs in jitted JAX; sums are finished on the host); they are
pytrees all the same (``jax.tree_util.tree_map`` works on them).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float

from mugi_jax.workloads import CLASS_NAMES


class Breakdown(NamedTuple):
    """Per op class (axis -1 indexes CLASS_NAMES: projection, attention, ffn, nonlinear, output)."""

    cycles: Float[Array, "... 5"]
    time_s: Float[Array, "... 5"]
    dynamic_energy_j: Float[Array, "... 5"]
    leakage_energy_j: Float[Array, "... 5"]
    flops_g: Float[Array, "... 5"]


class Report(NamedTuple):
    """Totals of one (or, with leading axes, many) evaluations.  A pytree of arrays."""

    cycles: Float[Array, "..."]
    gemm_cycles: Float[Array, "..."]
    nonlinear_cycles: Float[Array, "..."]
    execution_time_s: Float[Array, "..."]
    gemm_time_s: Float[Array, "..."]
    nonlinear_time_s: Float[Array, "..."]
    flops_g: Float[Array, "..."]
    dynamic_energy_j: Float[Array, "..."]
    leakage_w: Float[Array, "..."]
    leakage_energy_j: Float[Array, "..."]
    energy_j: Float[Array, "..."]
    area_mm2: Float[Array, "..."]
    throughput_gflops: Float[Array, "..."]
    energy_efficiency: Float[Array, "..."]
    power_efficiency_gflops_per_j: Float[Array, "..."]
    tokens: Float[Array, "..."]
    tokens_per_s: Float[Array, "..."]
    j_per_token: Float[Array, "..."]
    operational_carbon_g: Float[Array, "..."]
    embodied_carbon_g: Float[Array, "..."]
    breakdown: Breakdown
    extras: Any = None  # a cost model's further metrics (realistic: RealisticExtras), or None

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python view of a single (unbatched) report, with the breakdown by class name
        (and the realistic model's extras under ``"realistic"``)."""
        out: dict[str, Any] = {}
        for name, value in zip(self._fields, self):
            if name in ("breakdown", "extras"):
                continue
            out[name] = float(value)
        out["breakdown"] = {
            cls: {f: float(getattr(self.breakdown, f)[..., i]) for f in self.breakdown._fields}
            for i, cls in enumerate(CLASS_NAMES)
        }
        if self.extras is not None:
            out["realistic"] = {k: (bool(v) if isinstance(v, bool) else float(v))
                                for k, v in self.extras._asdict().items()}
        return out


def derive_report(
    totals: dict[str, Float[Array, "..."]],
    *,
    leakage_w: Float[Array, "..."],
    area_mm2: Float[Array, "..."],
    frequency_hz: Float[Array, "..."],
    tokens: Float[Array, "..."],
    carbon_intensity_g_per_kwh: float,
    embodied_g_per_mm2: float,
    lifetime_s: float,
    xp: Any = jnp,
) -> Report:
    """Metrics from per-class sums (see the module docstring); broadcasts over leading axes.

    ``xp`` is the array namespace (``jax.numpy`` or ``numpy``); :func:`mugi_jax.cost.sweep`
    finishes in NumPy float64.
    """
    class_cycles = totals["class_cycles"]
    f = frequency_hz[..., None]
    class_time = class_cycles / f
    class_dyn = totals["class_energy_pj"] * 1e-12
    class_leak = class_time * leakage_w[..., None]
    class_flops_g = totals["class_flops"] / 1e9
    cycles = xp.sum(class_cycles, -1)
    t = cycles / frequency_hz
    e_dyn = xp.sum(class_dyn, -1)
    e_leak = leakage_w * t
    e = e_dyn + e_leak
    flops_g = xp.sum(class_flops_g, -1)
    thr = flops_g / t
    return Report(
        cycles=cycles,
        gemm_cycles=totals["gemm_cycles"],
        nonlinear_cycles=totals["nonlinear_cycles"],
        execution_time_s=t,
        gemm_time_s=totals["gemm_cycles"] / frequency_hz,
        nonlinear_time_s=totals["nonlinear_cycles"] / frequency_hz,
        flops_g=flops_g,
        dynamic_energy_j=e_dyn,
        leakage_w=xp.broadcast_to(leakage_w, t.shape),
        leakage_energy_j=e_leak,
        energy_j=e,
        area_mm2=xp.broadcast_to(area_mm2, t.shape),
        throughput_gflops=thr,
        energy_efficiency=thr / e,
        power_efficiency_gflops_per_j=flops_g / e,
        tokens=xp.broadcast_to(tokens, t.shape),
        tokens_per_s=tokens / t,
        j_per_token=e / tokens,
        operational_carbon_g=carbon_intensity_g_per_kwh * e / 3.6e6,
        embodied_carbon_g=embodied_g_per_mm2 * area_mm2 * t / lifetime_s,
        breakdown=Breakdown(class_cycles, class_time, class_dyn, class_leak, class_flops_g),
    )
