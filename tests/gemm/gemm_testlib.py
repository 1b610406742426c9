"""Shared generators for the gemm tests (imported by path-independent name)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from mugi_jax import quant

SCHEMES = {
    "sm": lambda g: quant.SignMagnitudeInt4(group_size=g),
    "int4": lambda g: quant.Int4(group_size=g, calibration="minmax"),
    "asym_min": lambda g: quant.AsymUInt4(group_size=g),
    "asym_int": lambda g: quant.AsymUInt4(group_size=g, zero_point="int"),
}


def activations(seed: int, shape: tuple[int, ...], specials: bool, spread: int = 6) -> jnp.ndarray:
    """BF16 activations: random normals with exponents spread over ``+-spread`` binades, with
    (optionally) zeros of both signs, subnormals, near-overflow values, infinities and NaN."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * np.exp2(rng.integers(-spread, spread + 1, shape))
    if specials:
        u = rng.random(shape)
        pool = np.array([0.0, -0.0, 3e-39, -5e-40, 1e-45, np.inf, -np.inf, np.nan, 2.5e38,
                         -3.3e38, 1.2e-38])
        pick = pool[rng.integers(0, len(pool), shape)]
        x = np.where(u < 0.15, pick, x)
    x = x.astype(np.float32).astype(ml_dtypes.bfloat16)
    return jnp.asarray(x)


def weights(seed: int, k: int, n: int, scheme: quant.Scheme, zero_group: bool = False):
    rng = np.random.default_rng(seed + 1000)
    w = rng.standard_normal((k, n)).astype(np.float32) * 0.1 + rng.standard_normal((1, n)) * 0.02
    if zero_group:
        g = k if scheme.group_size is None else scheme.group_size
        w[:g, 0] = 0.0
    return quant.quantize(jnp.asarray(w, jnp.float32), scheme)


def same_bits(x, y) -> bool:
    """Bit equality, any NaN equal to any NaN."""
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.float32)
    if x.shape != y.shape:
        return False
    nan = np.isnan(x) & np.isnan(y)
    return bool(np.all((x.view(np.uint32) == y.view(np.uint32)) | nan))


def first_diff(x, y):
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.float32)
    bad = ~((x.view(np.uint32) == y.view(np.uint32)) | (np.isnan(x) & np.isnan(y)))
    idx = np.argwhere(bad)[:3]
    return [(tuple(i), float(x[tuple(i)]), float(y[tuple(i)])) for i in idx]


def transpose_qt(t: quant.QuantizedTensor) -> quant.QuantizedTensor:
    """A 2-D QuantizedTensor transposed (groups follow their axis)."""
    import dataclasses
    scheme = dataclasses.replace(t.scheme, axis=1 - t.axis)
    return quant.QuantizedTensor(codes=t.codes.T, scales=t.scales.T,
                                 zeros=None if t.zeros is None else t.zeros.T, scheme=scheme)


_ = jax
