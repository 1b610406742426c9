"""mugi-jax: JAX models of the Mugi value-level-parallelism (VLP) LLM accelerator.

Layout (imports point down the list; see docs/architecture.md):
``formats`` -> ``quant`` -> ``nonlinear`` / ``gemm`` -> ``sim`` (oracle, never imported by
kernels) ; ``hw`` / ``workloads`` -> ``cost`` ; ``numerics`` -> ``models`` -> ``tune`` -> ``cli``.
"""

__version__ = "0.1.0"
