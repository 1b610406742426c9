"""Cost-model presets: the conventions a result is computed under.

``paper`` replicates the published model (MUGI.md section 4, reference notes): full termination
(8 cycles per k-step), 4096 decode steps for projections/FFN/activation whatever the sequence
length, attention and softmax over contexts P+1..S, the LM head decoded once, perfect overlap of
all streams within an op, no DRAM/NoC bound, DRAM energy excluded, BF16 row adders, the baseline
vector-unit cycle counts, and the component tables' "missing attribute = 1" rule.

``realistic`` (:mod:`mugi_jax.cost.realistic`) corrects the known weaknesses: consistent decode
lengths, causal prefill attention, vector-unit ops, dequantization and KV quantization, DRAM
roofline and energy, data-driven early termination bounded by the row adder, fill/drain skew and
tile-level overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

from mugi_jax.cost.memory import MEMORY_SYSTEMS, MemorySystem
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


@dataclass(frozen=True)
class RealisticModel(Preset):
    """The corrected model (:mod:`mugi_jax.cost.realistic`) with its knobs: off-chip ``memory``,
    Mugi ``adders_per_row`` (None: the design's), data-driven ``early_termination``, systolic
    ``dataflow``, quantization ``group_size``, ``causal`` prefill attention, and whether the
    report's energy (and every paper metric) ``include_dram_energy``."""

    name: str = "realistic"
    missing_attribute: MissingAttribute = "reference"
    decode: DecodeConvention = DecodeConvention(linear_decode_steps=None, lm_head_decode_steps=None)
    include_dram_energy: bool = True
    memory: MemorySystem = MEMORY_SYSTEMS["ddr4"]
    adders_per_row: int | None = None
    early_termination: bool = True
    dataflow: str = "os"
    group_size: int = 128
    causal: bool = True

    @property
    def config(self):
        """The :class:`~mugi_jax.cost.realistic.RealisticConfig` of these knobs."""
        from mugi_jax.cost.realistic import RealisticConfig

        return RealisticConfig(memory=self.memory, early_termination=self.early_termination,
                               adders_per_row=self.adders_per_row, dataflow=self.dataflow,
                               group_size=self.group_size, causal=self.causal,
                               include_dram_energy=self.include_dram_energy)

    def evaluate(self, design, workload):
        """The :class:`~mugi_jax.cost.report.Report` with ``extras`` (TTFT, TPOT, DRAM, ...)."""
        from mugi_jax.cost.realistic import evaluate_realistic

        return evaluate_realistic(design, workload, self.config, self)[0]

    def sweep(self, designs, workloads):
        from mugi_jax.cost import stack_reports
        from mugi_jax.cost.realistic import evaluate_realistic

        cfg = self.config
        reps = [evaluate_realistic(a, w, cfg, self)[0] for a in designs for w in workloads]
        return stack_reports(reps, (len(designs), len(workloads)))

    def gemm(self, design, m: int, k: int, n: int, batch: int = 1, role: str = "proj_q") -> dict:
        """One GEMM under the realistic model (:func:`mugi_jax.cost.realistic.gemm_cost`)."""
        from mugi_jax.cost.realistic import gemm_cost

        return gemm_cost(design, m, k, n, self.dataflow, batch, role, self.config)


PAPER = PaperModel()
# Corrected conventions (issue 6): every op runs seq_len - prefill_len decode steps, the LM head
# every step, DRAM energy included, components' missing attributes at their reference value.
REALISTIC = RealisticModel()

#: Preset name -> cost model instance.
PRESETS: dict[str, Preset] = {"paper": PAPER, "realistic": REALISTIC}


def get_preset(name: str | Preset) -> Preset:
    if isinstance(name, Preset):
        return name
    if name not in PRESETS:
        raise ValueError(f"preset={name!r}: valid presets are {', '.join(PRESETS)}")
    return PRESETS[name]
