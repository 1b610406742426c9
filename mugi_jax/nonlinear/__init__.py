"""Nonlinear units: VLP table approximation (Mugi), Mugi-L, PWL, Taylor and exact baselines.

Every function is one :class:`Function` record of the registry (:mod:`.functions`; shipped:
exp, silu, gelu (erf), gelu_tanh, sigmoid, tanh); ``nl.register(nl.Function(...))`` adds one,
and every unit, the simulator, the relaxation and the tuner's cost accept it.

Usage::

    from mugi_jax import nonlinear as nl
    cfg = nl.VLPConfig(mantissa_bits=3, window=8, lut_exponents=12, e_top=3)
    p = nl.softmax(scores, approx=cfg)             # BF16, bit-exact model of the unit
    h = nl.silu(x, approx=nl.PWL(segments=22))
    cycles = nl.subscription_cycles(x, "silu", cfg)

See docs/nonlinear.md and docs/numerics.md ("VLP nonlinear unit").
"""

from mugi_jax.nonlinear.baselines import (PWL_RANGES, TAYLOR_DEFAULTS, exact, pwl,
                                          pwl_coefficients, taylor, taylor_coefficients)
from mugi_jax.nonlinear.config import (BUILDS, FUNCTIONS, PWL, TAILS, Exact, MugiL, Taylor,
                                       VLPConfig)
from mugi_jax.nonlinear.cycles import subscription_cycles
from mugi_jax.nonlinear.functions import Function, get, names, register
from mugi_jax.nonlinear.softmax import (activation, gelu, masked_scaled, pairwise_sum, silu,
                                        softmax)
from mugi_jax.nonlinear.tables import reference_f64, vlp_table
from mugi_jax.nonlinear.vlp import as_bf16, round_to_bf16, vlp

__all__ = [
    "VLPConfig", "MugiL", "PWL", "Taylor", "Exact", "FUNCTIONS", "BUILDS", "TAILS",
    "vlp", "softmax", "masked_scaled", "silu", "gelu", "activation", "subscription_cycles",
    "exact", "pwl", "taylor", "pwl_coefficients", "taylor_coefficients", "PWL_RANGES",
    "TAYLOR_DEFAULTS", "pairwise_sum", "vlp_table", "reference_f64", "Function", "register",
    "get", "names",
]
