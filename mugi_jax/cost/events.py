"""Event charges of the ``paper`` preset: how many times each module fires per unit of work.

Units of work ("bases") and what is charged per unit:

- ``mac``: one useful multiply-accumulate.  The authors' model charges each full-tile k-step's
  events scaled by the tile's utilisation, so array energy is (per full k-step energy) x (useful
  MACs / MACs per full k-step); we write the charges per MAC directly.
- ``output``: one GEMM output element per off-chip k-tile ("vector scaling": the per-output
  scale multiply, which archx evaluates once per off-chip tile of the op, see
  :mod:`mugi_jax.cost.model`).
- ``output_ktile``: one output element per on-chip k-tile (partial-sum drain of SA/SD/tensor).
- ``weight_load``: one weight-load event of a weight-stationary array (archx ``weight_gemm``):
  a whole array of weight registers is written, counted ``b * ceil(m/W) * k * ceil(n/tn_off)``
  times per GEMM (tn_off the off-chip n tile).
- ``output_group``: one output element per 32-wide k quantization group (MixPE dequantization).
- ``op``: one op (the GEMM <-> nonlinear mode switch ``instruction`` of Mugi).
- ``softmax_elem`` / ``silu_elem``: one element of a softmax / SiLU (GELU is charged as SiLU).
- ``softmax_col`` / ``silu_col``: one column tile of the nonlinear unit (H elements on Mugi).

Each charge table maps module name -> events per unit; the module must exist in the
architecture (checked), so the charge and the inventory cannot drift apart.  The tables live with
each design family (``charges`` in :mod:`mugi_jax.designs.mugi` etc.); per-k-step counts for
Mugi follow the notes' table (section 1.2) and reproduce its per-k-step energy breakdown
(row adders 763 pJ, pe_fifo 592 pJ, ofifo 296 pJ, ... per 256x8 k-step).
"""

from __future__ import annotations

from mugi_jax.designs import charges as _design_charges
from mugi_jax.designs._base import BASES, VECTOR_COLUMN_CYCLES, Charges, vector_charges  # noqa: F401
from mugi_jax.hw.arch import Arch


def paper_charges(arch: Arch) -> Charges:
    """Events per unit of work for ``arch`` under the paper preset: its design family's charges
    (``charges`` of the family module in :mod:`mugi_jax.designs`), checked against its inventory."""
    return _design_charges(arch)
