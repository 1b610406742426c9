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
    """Conventions of one cost-model preset."""

    name: str
    missing_attribute: MissingAttribute
    decode: DecodeConvention
    include_dram_energy: bool = False
    carbon_intensity_g_per_kwh: float = CARBON_INTENSITY_G_PER_KWH
    embodied_g_per_mm2: float = embodied_g_per_mm2()
    lifetime_s: float = LIFETIME_S


PAPER = Preset(
    name="paper",
    missing_attribute="one",
    decode=DecodeConvention(linear_decode_steps=4096, lm_head_decode_steps=1),
)

# Corrected conventions (issue 6): every op runs seq_len - prefill_len decode steps, the LM head
# every step, DRAM energy included, components' missing attributes at their reference value.
# Its row model is mugi_jax.cost.realistic (RealisticConfig holds the remaining knobs).
REALISTIC = Preset(
    name="realistic",
    missing_attribute="reference",
    decode=DecodeConvention(linear_decode_steps=None, lm_head_decode_steps=None),
    include_dram_energy=True,
)

PRESETS: dict[str, Preset] = {"paper": PAPER, "realistic": REALISTIC}


def get_preset(name: str | Preset) -> Preset:
    if isinstance(name, Preset):
        return name
    if name not in PRESETS:
        raise ValueError(f"preset={name!r}: valid presets are {', '.join(PRESETS)}")
    return PRESETS[name]
