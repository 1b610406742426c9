"""Gradient tuning of the VLP approximation parameters under a hardware budget.

See docs/tuning.md.
"""
from mugi_jax.tune.relax import (RELAXED_FUNCTIONS, ROUNDINGS, VLPParams, bf16_function_table,
                                 params_from_config, relaxed_softmax, relaxed_vlp, round_mantissa,
                                 soft_step, table_function)

__all__ = ["VLPParams", "ROUNDINGS", "RELAXED_FUNCTIONS", "relaxed_vlp", "relaxed_softmax",
           "round_mantissa", "soft_step", "table_function", "bf16_function_table",
           "params_from_config"]

from mugi_jax.tune.cost import model_cost, unit_cost  # noqa: E402
from mugi_jax.tune.model import (FUNCS, Calibration, UnitParams, capture, exact_policy,  # noqa: E402
                                 relaxed_policy, window_nll)
from mugi_jax.tune.tuner import (Budget, SearchResult, TuneResult, greedy_search,  # noqa: E402
                                 grid_search, parse_budget, tune, unit_errors)

__all__ += ["tune", "grid_search", "greedy_search", "Budget", "parse_budget", "TuneResult",
            "SearchResult", "unit_errors", "capture", "Calibration", "UnitParams", "FUNCS",
            "relaxed_policy", "exact_policy", "window_nll", "unit_cost", "model_cost"]
