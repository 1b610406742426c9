r"""Differentiable hardware cost of a VLP unit as smooth functions of (mantissa bits b, window W).

Per unit (one function of one layer) with ``passes`` sign passes (exp in softmax: 1, SiLU/GELU: 2)
and tiles of :math:`H` = ``window_group`` rows:

* **table entries** (the streamed window table): :math:`N_{tab} = \mathrm{signs}\cdot 2^b\cdot W`
  (:math:`\mathrm{signs}` = passes);
* **cycles per tile**: :math:`C = \mathrm{passes}\cdot 2^b` (the full sweep; the data-driven
  early-termination count is :func:`mugi_jax.nonlinear.subscription_cycles` and is reported for the
  chosen configs, not differentiated);
* **energy per element** from the 32 nm component figures of :mod:`mugi_jax.hw.components`
  (:math:`e_{\cdot}` in pJ per event):

  .. math:: E = \mathrm{passes}\cdot 2^b\Big(b\, e_{cmp,1} + \frac{e_{cnt}}{H}
            + \frac{W e_{reg16}}{H}\Big) + e_{reg16} + e_{round}

  every row compares its b-bit code with the counter in every cycle of a sweep (``comparator_eq``
  scaled to b bits), the counter ticks once per cycle per tile, each of the W columns streams one
  16-bit entry (``register``) per cycle shared by the H rows, and every element latches one value
  and rounds its mantissa once.

Gradients: :math:`\partial 2^b/\partial b = \ln 2\cdot 2^b`, everything else is polynomial, so
:math:`\partial N_{tab}/\partial b = \ln 2\, N_{tab}`, :math:`\partial N_{tab}/\partial W = N_{tab}/W`,
:math:`\partial C/\partial b = \ln 2\, C`, and :math:`E` as written.

Model aggregates (:func:`model_cost`) are element-weighted means over the units (weights = elements
each unit processes per token), so a budget reads "per element on average".
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Mapping

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from mugi_jax.nonlinear import functions

__all__ = ["ComponentEnergies", "component_energies", "PASSES", "unit_cost", "model_cost",
           "function_cost", "COST_METRICS"]


class _Passes(Mapping[str, int]):
    """Sign passes per registered function (``len(record.signs)``; ``"softmax"``: exp's, the
    softmax inputs are <= 0): exp one, SiLU/GELU two."""

    def __getitem__(self, fn: str) -> int:
        return len(functions.get("exp" if fn == "softmax" else fn).signs)

    def __iter__(self) -> Iterator[str]:
        return iter(("softmax",) + functions.names())

    def __len__(self) -> int:
        return len(functions.names()) + 1


#: Sign passes per function, read from the function registry.
PASSES: Mapping[str, int] = _Passes()
#: Names of the cost metrics (also the budget keys that constrain them).
COST_METRICS = ("table_entries", "cycles", "energy_pj")


@dataclasses.dataclass(frozen=True)
class ComponentEnergies:
    """Per-event energies [pJ] at 32 nm used by the cost terms."""

    comparator_per_bit: float
    counter: float
    register16: float
    round: float


@functools.lru_cache(maxsize=1)
def component_energies() -> ComponentEnergies:
    """Figures from the component library (``comparator_eq`` per bit, 3-bit ``counter``, 16-bit
    ``register``, 15-bit ``round``)."""
    from mugi_jax.hw.components import component_figures

    return ComponentEnergies(
        comparator_per_bit=component_figures("comparator_eq", {"width": 1}).energy_pj,
        counter=component_figures("counter", {"width": 3}).energy_pj,
        register16=component_figures("register", {"width": 16}).energy_pj,
        round=component_figures("round", {"width": 15}).energy_pj,
    )


def unit_cost(mantissa_bits: Float[ArrayLike, "*u"], window: Float[ArrayLike, "*u"],
              passes: Float[ArrayLike, "*u"], group: int = 256) -> dict[str, Float[Array, "*u"]]:
    """``{"table_entries", "cycles", "energy_pj"}`` of units with (b, W) (module docstring)."""
    if group < 1:
        raise ValueError(f"group: must be >= 1, got {group}")
    ce = component_energies()
    b = jnp.asarray(mantissa_bits, jnp.float32)
    w = jnp.asarray(window, jnp.float32)
    passes = jnp.asarray(passes, jnp.float32)
    sweep = jnp.exp2(b)
    energy = passes * sweep * (b * ce.comparator_per_bit + ce.counter / group
                               + w * ce.register16 / group) + ce.register16 + ce.round
    return {"table_entries": passes * sweep * w, "cycles": passes * sweep, "energy_pj": energy}


def model_cost(mantissa_bits: Float[ArrayLike, "*u"], window: Float[ArrayLike, "*u"],
               passes: Float[ArrayLike, "*u"], elements: Float[ArrayLike, "*u"],
               group: int = 256) -> dict[str, Float[Array, ""]]:
    """Element-weighted means of :func:`unit_cost` over all units (``elements``: per-unit
    element counts, e.g. per token)."""
    per = unit_cost(mantissa_bits, window, passes, group)
    wts = jnp.asarray(elements, jnp.float32)
    wts = jnp.broadcast_to(wts / jnp.sum(wts), per["cycles"].shape)
    return {k: jnp.sum(wts * v) for k, v in per.items()}


def function_cost(fn: str, mantissa_bits: Float[ArrayLike, "*u"], window: Float[ArrayLike, "*u"],
                  group: int = 256) -> dict[str, Float[Array, "*u"]]:
    """:func:`unit_cost` of a unit computing the registered function ``fn`` (or ``"softmax"``)."""
    return unit_cost(mantissa_bits, window, PASSES[fn], group)
