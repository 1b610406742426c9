"""Figures of the authors' published evaluation that the paper preset is checked against.

Source: the comprehensive table of the Mugi paper (ASPLOS 2026), as reproduced by a re-run of the
authors' cost model (github.com/UnaryLab/archx, ``zoo/llm``), Llama-2-70B with GQA (8 KV heads),
batch 8, sequence 4096 (prompt 64), single node; and the operational-carbon ratio of the authors'
``op_carbon.csv`` (Llama-2-7B, same batch and sequence).  These are comparison targets only:
nothing in the cost model is fitted to them.
"""

from __future__ import annotations

from typing import NamedTuple


class PublishedRow(NamedTuple):
    """One design of the comprehensive table."""

    energy_j: float  # on-chip dynamic energy + leakage x time
    energy_efficiency: float  # throughput / energy, printed as "GFLOP/s/mJ" (x1e3 of ours)


COMPREHENSIVE_WORKLOAD = ("llama2-70b-gqa", 8, 4096)
COMPREHENSIVE_TABLE: dict[str, PublishedRow] = {
    "mugi-256x8": PublishedRow(4812.8, 41.624388),
    "carat-256x8": PublishedRow(6560.7, 30.381935),
    "sa-16": PublishedRow(7601.1, 12.754163),
    "simd-16": PublishedRow(7253.8, 13.364819),
}

CARBON_WORKLOAD = ("llama2-7b", 8, 4096)
OPERATIONAL_CARBON_SA16_OVER_MUGI = 1.4527  # published as 1.45x
EMBODIED_CARBON_SA16_OVER_MUGI = 1.48  # published; the authors' embodied formula is unpublished
