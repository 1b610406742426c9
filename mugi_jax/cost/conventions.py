"""What every cost model shares: the :class:`Preset` base (conventions: decode lengths, the
components' missing-attribute rule, DRAM energy, carbon constants) and the carbon constants.

The engines live with their models: :class:`~mugi_jax.cost.presets.PaperModel` in
:mod:`mugi_jax.cost.presets`, :class:`~mugi_jax.cost.realistic.RealisticModel` in
:mod:`mugi_jax.cost.realistic`; this module imports neither, so they import it without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

from mugi_jax.hw.components import MissingAttribute
from mugi_jax.workloads import DecodeConvention

# Carbon constants -------------------------------------------------------------------------
CARBON_INTENSITY_G_PER_KWH = 294.25  # operational grid intensity used by the authors
# Embodied (ACT, Gupta et al., ISCA 2022; github.com/facebookresearch/ACT logic/*.json, 28 nm,
# the closest node ACT tabulates to 32 nm):
ACT_EPA_KWH_PER_CM2 = 0.90  # fab electricity per die area
ACT_GPA_G_PER_CM2 = 175.0  # fab gases per area, 95 % abatement
ACT_MPA_G_PER_CM2 = 500.0  # raw materials per area
ACT_FAB_CI_G_PER_KWH = 583.0  # fab grid intensity (ACT "loc_taiwan")
ACT_FAB_YIELD = 0.875  # ACT default yield
LIFETIME_S = 3 * 365.25 * 24 * 3600.0  # amortisation lifetime: 3 years of continuous use


def embodied_g_per_mm2() -> float:
    """ACT carbon per area: (CI_fab * EPA + GPA + MPA) / yield, converted to g / mm^2."""
    per_cm2 = (ACT_FAB_CI_G_PER_KWH * ACT_EPA_KWH_PER_CM2 + ACT_GPA_G_PER_CM2 + ACT_MPA_G_PER_CM2) / ACT_FAB_YIELD
    return per_cm2 / 100.0


@dataclass(frozen=True)
class Preset:
    """A cost model: its conventions (decode lengths, scaling policy, carbon constants) and its
    engine.  The two implementations are :class:`PaperModel` and :class:`RealisticModel`; both
    implement ``evaluate(design, workload) -> Report``, ``sweep(designs, workloads) -> Report``
    (axes [design, workload]) and ``gemm(design, m, k, n, batch)`` (one GEMM, a dict)."""

    name: str
    missing_attribute: MissingAttribute
    decode: DecodeConvention
    include_dram_energy: bool = False
    carbon_intensity_g_per_kwh: float = CARBON_INTENSITY_G_PER_KWH
    embodied_g_per_mm2: float = embodied_g_per_mm2()
    lifetime_s: float = LIFETIME_S

    def sweep(self, designs, workloads):
        raise NotImplementedError(f"preset {self.name!r} has no engine")

    def evaluate(self, design, workload):
        """Cost of ``workload`` on ``design``: a :class:`~mugi_jax.cost.report.Report`."""
        from mugi_jax.cost import report_at

        return report_at(self.sweep([design], [workload]), 0, 0)

    def gemm(self, design, m: int, k: int, n: int, batch: int = 1, role: str = "proj_q") -> dict:
        raise NotImplementedError(f"preset {self.name!r} has no single-GEMM model")
