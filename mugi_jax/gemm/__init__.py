"""VLP GEMM: BF16 x INT4 matmul on the Mugi array and its baselines, GQA attention on INT4 KV
caches, and the array's data-driven cycle counts.  Numerics: docs/numerics.md sections 4-8;
reference simulator: :mod:`mugi_jax.sim.gemm`; guide: docs/gemm.md."""

from mugi_jax.gemm.attention import attention, cache_context, cache_scores, exact_softmax
from mugi_jax.gemm.cycles import subscription_cycles, total_cycles
from mugi_jax.gemm.datapaths import (DATAPATHS, FIGNA, AlignedGroups, Carat, CodeProducts, Datapath,
                                     DequantizedWeights, MixPE, Mugi, SystolicMAC)
from mugi_jax.gemm.decode import bf16_weight_matmul
from mugi_jax.gemm.kernels import MODES, PreparedWeight, matmul, prepare_weight

__all__ = ["Mugi", "Carat", "MixPE", "SystolicMAC", "FIGNA", "Datapath", "DATAPATHS", "MODES",
           "CodeProducts", "DequantizedWeights", "AlignedGroups", "matmul", "prepare_weight", "PreparedWeight", "attention", "cache_scores", "cache_context", "exact_softmax", "subscription_cycles", "total_cycles",
           "bf16_weight_matmul"]
