"""Gradient tuning of the VLP approximation parameters under a hardware budget.

See docs/tuning.md.
"""
from mugi_jax.tune.relax import (RELAXED_FUNCTIONS, ROUNDINGS, VLPParams, bf16_function_table,
                                 params_from_config, relaxed_softmax, relaxed_vlp, round_mantissa,
                                 soft_step, table_function)

__all__ = ["VLPParams", "ROUNDINGS", "RELAXED_FUNCTIONS", "relaxed_vlp", "relaxed_softmax",
           "round_mantissa", "soft_step", "table_function", "bf16_function_table",
           "params_from_config"]
