"""Cycle-level reference simulators in NumPy: the oracles for the jitted kernels.

They import only :mod:`mugi_jax.formats` / :mod:`mugi_jax.quant` and are never imported by the
kernels they check.
"""

from mugi_jax.sim.gemm import GemmSimResult, reference_matmul, simulate_gemm
from mugi_jax.sim.nonlinear import SimResult, simulate_softmax, simulate_vlp

__all__ = ["SimResult", "simulate_vlp", "simulate_softmax", "GemmSimResult", "simulate_gemm",
           "reference_matmul"]
