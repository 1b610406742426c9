"""Cost-model presets: the conventions a result is computed under.

``paper`` replicates the authors' published cost model (docs/cost_model.md): full termination
(8 cycles per k-step), 4096 decode steps for projections/FFN/activation whatever the sequence
length, attention and softmax over contexts P+1..S, the LM head decoded once, perfect overlap of
all streams within an op, no DRAM/NoC bound, DRAM energy excluded, BF16 row adders, the baseline
vector-unit cycle counts, and the component tables' "missing attribute = 1" rule.

``realistic`` (:mod:`mugi_jax.cost.realistic`) corrects the known weaknesses: consistent decode
lengths, causal prefill attention, vector-unit ops, dequantization and KV quantization, DRAM
roofline and energy, data-driven early termination bounded by the row adder, fill/drain skew and
tile-level overlap.

Each model object lives with its engine (:class:`PaperModel` here, :class:`RealisticModel` in
:mod:`mugi_jax.cost.realistic`); both derive from :class:`~mugi_jax.cost.conventions.Preset`.
This module collects them in :data:`PRESETS` (imports point down: presets -> realistic ->
conventions, no cycle).
"""

from __future__ import annotations

from dataclasses import dataclass

from mugi_jax.cost.conventions import (  # noqa: F401 - re-exported (the constants' old home)
    ACT_EPA_KWH_PER_CM2, ACT_FAB_CI_G_PER_KWH, ACT_FAB_YIELD, ACT_GPA_G_PER_CM2, ACT_MPA_G_PER_CM2,
    CARBON_INTENSITY_G_PER_KWH, LIFETIME_S, Preset, embodied_g_per_mm2,
)
from mugi_jax.cost.realistic import REALISTIC, RealisticModel
from mugi_jax.hw.components import MissingAttribute
from mugi_jax.workloads import DecodeConvention


@dataclass(frozen=True)
class PaperModel(Preset):
    """The published model (module docstring): vmapped sweeps of the paper row model."""

    name: str = "paper"
    missing_attribute: MissingAttribute = "one"
    decode: DecodeConvention = DecodeConvention(linear_decode_steps=4096, lm_head_decode_steps=1)

    def sweep(self, designs, workloads):
        from mugi_jax.cost import _sweep_paper

        return _sweep_paper(list(designs), list(workloads), self)

    def gemm(self, design, m: int, k: int, n: int, batch: int = 1, role: str = "proj_q") -> dict:
        """One GEMM ``batch x (m x k) @ (k x n)`` under the paper row model (``role`` unused:
        the paper's count has no data-driven cycles): cycles, time, energies [J], FLOPs."""
        import jax.numpy as jnp

        from mugi_jax.cost.model import arch_params, gemm_row_costs

        p = arch_params(design, self.missing_attribute)
        t = {"b": batch, "m": m, "k": k, "n": n}
        cyc, e_pj, flops = gemm_row_costs(p, {key: jnp.float32(v) for key, v in t.items()})
        cyc, e_pj, flops = float(cyc), float(e_pj), float(flops)
        f = float(p.frequency_hz)
        leak = float(p.leakage_w) * cyc / f
        return {"cycles": cyc, "time_s": cyc / f, "dynamic_energy_j": e_pj * 1e-12,
                "leakage_energy_j": leak, "energy_j": e_pj * 1e-12 + leak, "flops": flops}


PAPER = PaperModel()

#: Preset name -> cost model instance.
PRESETS: dict[str, Preset] = {"paper": PAPER, "realistic": REALISTIC}


def get_preset(name: str | Preset) -> Preset:
    if isinstance(name, Preset):
        return name
    if name not in PRESETS:
        raise ValueError(f"preset={name!r}: valid presets are {', '.join(PRESETS)}")
    return PRESETS[name]
