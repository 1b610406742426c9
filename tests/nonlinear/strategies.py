"""Shared strategies: VLP configs and BF16 test arrays that hit every element rule."""

from __future__ import annotations

import ml_dtypes
import numpy as np
from hypothesis import strategies as st

from mugi_jax import nonlinear as nl

BF16 = np.dtype(ml_dtypes.bfloat16)


@st.composite
def vlp_configs(draw: st.DrawFn) -> nl.VLPConfig:
    m = draw(st.integers(1, 7))
    w = draw(st.integers(1, 12))
    lut = draw(st.integers(w, w + 6))
    e_top = draw(st.one_of(st.integers(-4, 6), st.integers(-127 + lut, 127)))
    group = draw(st.sampled_from([1, 2, 3, 4, 5, 7, 8, 256]))
    return nl.VLPConfig(mantissa_bits=m, window=w, lut_exponents=lut, e_top=e_top,
                        window_group=group, build=draw(st.sampled_from(["max", "min"])),
                        tail=draw(st.sampled_from(["clamp", "linear"])))


SPECIAL_BITS = np.array([0x0000, 0x8000, 0x0001, 0x807F, 0x0040, 0x7F80, 0xFF80, 0x7FC0, 0xFFC1,
                         0x7F7F, 0xFF7F, 0x0080, 0x8080], dtype=np.uint16)


def bf16_values(rng: np.random.Generator, shape: tuple[int, ...], cfg: nl.VLPConfig,
                p_special: float = 0.15) -> np.ndarray:
    """Mostly values whose exponents lie around the stored range (so every window/clamp rule
    fires), plus random bit patterns (any value) and specials (zeros, subnormals, +-inf, NaN,
    the largest/smallest normals)."""
    n = int(np.prod(shape))
    e = rng.integers(cfg.e_bottom - 3, cfg.e_top + 3, n)
    e = np.clip(e, -126, 127)
    m = rng.integers(0, 128, n)
    s = rng.integers(0, 2, n)
    bits = (s << 15) | ((e + 127) << 7) | m
    kind = rng.random(n)
    random_bits = rng.integers(0, 1 << 16, n)
    special = rng.choice(SPECIAL_BITS, n)
    bits = np.where(kind < p_special, special, np.where(kind < 2 * p_special, random_bits, bits))
    return bits.astype(np.uint16).view(BF16).reshape(shape)


def same_bits_nan_aware(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit equality, except that any NaN equals any NaN (payloads may differ after FP32 maths)."""
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    nan_a, nan_b = np.isnan(a32), np.isnan(b32)
    return (a.shape == b.shape and np.array_equal(nan_a, nan_b)
            and np.array_equal(a.view(np.uint16)[~nan_a], b.view(np.uint16)[~nan_b]))
