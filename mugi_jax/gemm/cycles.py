"""Data-driven cycle counts of the Mugi array in GEMM mode (docs/numerics.md section 4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Int

from mugi_jax import quant
from mugi_jax.gemm.datapaths import Mugi
from mugi_jax.gemm.kernels import check_scheme, offset_decomposed

__all__ = ["subscription_cycles", "total_cycles", "full_sweep"]


def _magnitudes(w: quant.QuantizedTensor, datapath: Mugi) -> Array:
    """What the counter must reach: ``|q|`` (symmetric), ``|q - 8|`` (asymmetric by offset
    decomposition) or the unsigned code (asymmetric on a 4-bit-magnitude array)."""
    codes = w.codes.astype(jnp.int32)
    if offset_decomposed(datapath, w.scheme):
        return jnp.abs(codes - 8)
    return jnp.abs(codes) if w.scheme.symmetric else codes


def full_sweep(datapath: Mugi, scheme: quant.Scheme) -> int:
    """Counter values of a k-step without early termination: ``2^magnitude_bits``, or 9 for
    asymmetric weights by offset decomposition on a 3-bit array (``q - 8`` reaches magnitude 8)."""
    return 9 if offset_decomposed(datapath, scheme) else datapath.sweep


def subscription_cycles(w: quant.QuantizedTensor, datapath: Mugi,
                        early_termination: bool = True) -> Int[Array, "k row_tiles"]:
    """Cycles of every (k-step, row tile) of ``w`` (``(k, n)``) on a Mugi array.

    Rows are tiled ``datapath.rows`` output channels at a time (the last tile may be partial).

    .. math::

        c_{k,r} = \\max\\Big(\\min\\big(2^{b},\\ [\\mathrm{ET}]\\,(\\max_{n \\in r} |q_{kn}| + 1)
                  + [\\neg\\mathrm{ET}]\\,2^{b}\\big),\\ \\lceil \\mathrm{cols} /
                  \\mathrm{adders\\_per\\_row} \\rceil\\Big)

    i.e. the sweep is ``2^magnitude_bits`` counter values (9 for asymmetric weights by offset
    decomposition, whose swept magnitudes are ``|q - 8|``, see :func:`full_sweep`), or with early
    termination the largest code magnitude in the tile plus one (value 0 is a counter step too), but a k-step never takes
    fewer cycles than the row adder(s) need for the ``cols`` products.  The total for an
    ``(m, k) x (k, n)`` GEMM is ``ceil(m / cols) * sum(c)`` (:func:`total_cycles`).
    """
    if not isinstance(datapath, Mugi):
        raise TypeError(f"datapath: subscription_cycles models the Mugi array only (gemm.Mugi), "
                        f"got {type(datapath).__name__}")
    if not isinstance(w, quant.QuantizedTensor) or w.codes.ndim != 2:
        raise TypeError("w: expected a 2-D (k, n) mugi_jax.quant.QuantizedTensor")
    check_scheme(datapath, w.scheme)
    mag = _magnitudes(w, datapath)
    sweep_all = full_sweep(datapath, w.scheme)
    k, n = mag.shape
    pad = -n % datapath.rows
    mag = jnp.pad(mag, ((0, 0), (0, pad)))  # padded rows hold code 0: never extend a sweep
    tiles = mag.reshape(k, -1, datapath.rows)

    def per_tile(row_codes: Array) -> Array:  # (rows,) -> cycles of one (k-step, tile)
        sweep = jnp.max(row_codes) + 1 if early_termination else jnp.int32(sweep_all)
        return jnp.maximum(sweep, datapath.adder_bound).astype(jnp.int32)

    return jax.vmap(jax.vmap(per_tile))(tiles)


def total_cycles(m: int, w: quant.QuantizedTensor, datapath: Mugi,
                 early_termination: bool = True) -> Array:
    """Array cycles of ``(m, k) @ w``: every column tile of ``cols`` activations repeats the
    weight-driven schedule, ``ceil(m / cols) * sum(subscription_cycles)``."""
    c = subscription_cycles(w, datapath, early_termination)
    return -(-m // datapath.cols) * jnp.sum(c)
