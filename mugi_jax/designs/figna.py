"""FIGNA: the FP-INT PE (channel alignment, INT4 -> FP conversion, pre-alignment), as the
``figna`` variant of the systolic and SIMD arrays (archx ``figna`` sub-architecture)."""

from __future__ import annotations

from mugi_jax.hw.arch import Module

UNITS: tuple[str, ...] = ("ch_aloc", "ch_dealoc", "figna_int_to_fp", "prealigner")


def modules(n: int) -> list[Module]:
    """Per-PE FIGNA units of an n x n array."""
    return [
        Module("ch_aloc", "ch_aloc", n * n),
        Module("ch_dealoc", "ch_dealoc", n * n),
        Module("figna_int_to_fp", "int_to_fp", n * n),
        Module("prealigner", "prealigner", n * n),
    ]


def mac_charges(n: float) -> dict[str, float]:
    """archx charges the FIGNA units with instance[-1] (= n) events per k-step, not n^2
    (n per k-step of n*n MACs -> 1/n per MAC)."""
    return {k: 1.0 / n for k in UNITS}
