"""The softmax op with the attention scale and mask handed over (``softmax(x, tokens=,
scale=, mask=)``, as models/llama.py calls it): the softmax of ``where(mask, x * f32(scale),
-inf)`` bit for bit on every path.

The native kernel applies the scale and the mask as it reads ``x`` and computes only each row's
live span (the 16-element blocks holding the keys the mask keeps); it is checked against the XLA
path (which applies them with ``jnp`` before its pipeline) and against the NumPy simulator run
on the masked, scaled scores that XLA computes (``nl.masked_scaled``): its multiply, with
subnormals flushed as XLA:CPU does, is the reference for the product.  The exact path must keep
the bits the decoder had when it applied the scale and mask itself.
"""

from __future__ import annotations

import importlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mugi_jax import formats, numerics
from mugi_jax import nonlinear as nl
from mugi_jax.sim import simulate_softmax

from .strategies import BF16, bf16_values, same_bits_nan_aware, vlp_configs

sm = importlib.import_module("mugi_jax.nonlinear.softmax")

SETTINGS = settings(deadline=None, max_examples=18, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

# scales: SmolLM2's 1/8, negative (a mask applied after the scale would turn into +inf), large
# (subnormal inputs become normal unless flushed first), tiny (products flushed to zero)
SCALES = [0.125, -0.5, 2.0 ** 100, 2.0 ** -120, 1.0]


def _simulated(x, cfg, tokens):
    """The simulator on the token-major view (x: (batch..., heads x tokens, n), axis last)."""
    x = np.asarray(x, np.float32)
    t = tokens or 1
    lead, rows, n = x.shape[:-2], x.shape[-2], x.shape[-1]
    tm = np.swapaxes(x.reshape(*lead, rows // t, t, n), -3, -2)
    out = simulate_softmax(tm, cfg).outputs
    return np.swapaxes(out, -3, -2).reshape(x.shape)


def _mask(rng, shape, kind, tokens):
    """A boolean mask broadcastable to ``shape`` (batch, rows, n): causal per token (a live
    prefix), left padding (a live suffix), random holes, one flag per row, or one row for all."""
    b, rows, n = shape
    t = tokens or 1
    if kind == "causal":  # row h * t + i keeps keys <= i + (n - t)
        q = np.tile(np.arange(t), rows // t) + (n - t)
        return np.arange(n)[None, None, :] <= q[None, :, None] + rng.integers(-3, 1, (b, 1, 1))
    if kind == "padding":
        return np.arange(n)[None, None, :] >= rng.integers(0, n + 1, (b, 1, 1))
    if kind == "holes":
        return rng.random((b, 1, n)) < 0.6
    if kind == "per row":
        return rng.random((b, rows, 1)) < 0.7
    return rng.random(n) < 0.8  # "one row": (n,)


@SETTINGS
@given(cfg=vlp_configs(), batch=st.sampled_from([1, 2]), heads=st.sampled_from([1, 2, 3]),
       tokens=st.sampled_from([None, 1, 3]), n=st.sampled_from([5, 40, 67, 130]),
       dtype=st.sampled_from(["float32", "bfloat16"]), scale=st.sampled_from(SCALES + [None]),
       kind=st.sampled_from(["causal", "padding", "holes", "per row", "one row", None]),
       p_special=st.sampled_from([0.0, 0.02, 0.2]), seed=st.integers(0, 2**31 - 1))
def test_scale_and_mask_on_every_path(cfg, batch, heads, tokens, n, dtype, scale, kind,
                                      p_special, seed):
    """native(x, scale, mask) == XLA path(x, scale, mask) == simulator(masked_scaled(x, scale,
    mask)) == native(masked_scaled(...)), with zeros, subnormals, +-inf and NaN among the scores
    (also inside and outside the masks' live spans), FP32 and BF16 scores."""
    rng = np.random.default_rng(seed)
    t = tokens or 1
    shape = (batch, heads * t, n)
    x = bf16_values(rng, shape, cfg, p_special).astype(np.float32)
    x = x * np.float32(1.0 if scale in (None, 1.0) else 1.0 / scale)
    if dtype == "float32":  # off the BF16 grid
        x = (x * (1 + rng.standard_normal(shape).astype(np.float32) * 1e-3)).astype(np.float32)
    x = jnp.asarray(x.astype(np.float32) if dtype == "float32" else x.astype(BF16))
    mask = None if kind is None else jnp.asarray(_mask(rng, shape, kind, tokens))
    s = None if scale is None else jnp.float32(scale)
    native = formats.to_numpy(sm._softmax_jit(x, 2, cfg, tokens, True, s, mask))
    xla = formats.to_numpy(sm._softmax_jit(x, 2, cfg, tokens, False, s, mask))
    applied = jax.jit(nl.masked_scaled)(x, s, mask)
    unfused = formats.to_numpy(sm._softmax_jit(applied, 2, cfg, tokens, True))
    sim = _simulated(formats.to_numpy(applied).astype(np.float32), cfg, tokens)
    assert same_bits_nan_aware(native, xla)
    assert same_bits_nan_aware(native, unfused)
    assert same_bits_nan_aware(native, sim)
    if mask is not None:
        assert np.all(native.astype(np.float32)[~np.broadcast_to(np.asarray(mask), shape)] == 0)
    as_f32 = np.asarray(sm._softmax_jit(x, 2, cfg, tokens, True, s, mask, "float32"))
    nan = np.isnan(as_f32)
    assert np.array_equal(nan, np.isnan(native.astype(np.float32)))
    assert np.array_equal(as_f32[~nan], native.astype(np.float32)[~nan])


def test_live_span_edges():
    """Rows whose live span needs the whole-row path: NaN or -inf scores inside the span (the
    maximum is NaN / -inf, so y outside is NaN), +inf inside (y outside is still -inf), fully
    masked rows, and spans ending mid-block."""
    cfg = nl.VLPConfig(window_group=3)
    n = 70
    x = (np.random.default_rng(3).standard_normal((1, 9, n)) * 4).astype(np.float32)
    mask = np.zeros((1, 9, n), bool)
    for r, (lo, hi) in enumerate([(0, 5), (17, 40), (0, n), (33, 34), (0, 0), (60, 70),
                                  (1, 2), (16, 32), (5, 69)]):
        mask[0, r, lo:hi] = True
    x[0, 0, 2] = np.nan       # NaN inside the span
    x[0, 1, 20:40] = -np.inf  # every live score -inf
    x[0, 3, 33] = np.inf      # +inf maximum
    x[0, 5, 10] = np.nan      # NaN outside the span (masked: -inf)
    x[0, 8, 3] = 1e-39        # a subnormal score
    mask[0, 8, 10:60:3] = False  # holes inside a span (with a negative scale: -inf stays -inf)
    for scale in (None, jnp.float32(0.125), jnp.float32(-0.5)):
        native = formats.to_numpy(sm._softmax_jit(jnp.asarray(x), 2, cfg, 3, True, scale, mask))
        xla = formats.to_numpy(sm._softmax_jit(jnp.asarray(x), 2, cfg, 3, False, scale, mask))
        assert same_bits_nan_aware(native, xla)
        assert np.isnan(native[0, 0, :5].astype(np.float32)).all()
        assert np.all(native[0, 4].astype(np.float32) == 0)  # fully masked row
        assert np.all(native[0, 5, :60].astype(np.float32) == 0)


def test_scale_flushes_subnormals_like_xla():
    """A product of normal numbers below 2^-126 is flushed (as XLA:CPU's multiply does), and a
    subnormal score is zero before it is scaled: a row where that decides the result."""
    cfg = nl.VLPConfig(mantissa_bits=7, e_top=-100, lut_exponents=12, window=12, window_group=1)
    x = np.array([[[1e-39, 2.0 ** -100, 2.0 ** -100 * 1.5, 0.0, -2.0 ** -101]]], np.float32)
    for scale in (2.0 ** 30, 2.0 ** -30, 2.0 ** -26):
        s = jnp.float32(scale)
        native = formats.to_numpy(sm._softmax_jit(jnp.asarray(x), 2, cfg, None, True, s))
        xla = formats.to_numpy(sm._softmax_jit(jnp.asarray(x), 2, cfg, None, False, s))
        np.testing.assert_array_equal(native.view(np.uint16), xla.view(np.uint16), err_msg=scale)


def test_exact_preset_keeps_its_bits():
    """``Nonlinear()`` (the exact preset) and a BF16-input PWL unit given the scale and mask equal
    the op applied to ``where(mask, x * scale, -inf)`` by the caller, as the decoder did."""
    rng = np.random.default_rng(0)
    x = jnp.asarray((rng.standard_normal((2, 3, 12, 33)) * 20).astype(np.float32))
    mask = jnp.asarray(rng.random((2, 1, 12, 33)) < 0.7)
    s = jnp.float32(0.125)
    for op in (numerics.Nonlinear(), numerics.Nonlinear(nl.PWL(), bf16_input=True),
               numerics.Nonlinear(nl.VLPConfig(window_group=3), bf16_input=True)):
        fused = jax.jit(lambda v, m: op.softmax(v, -1, tokens=4, scale=s, mask=m))(x, mask)
        before = jax.jit(lambda v, m: op.softmax(jnp.where(m, v * s, -jnp.inf), -1, tokens=4))(
            x, mask)
        assert fused.dtype == before.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(fused).view(np.uint32),
                                      np.asarray(before).view(np.uint32), err_msg=op.label)


def test_vmap_with_batched_scale_and_mask():
    """``vmap`` over scores, a per-example scale and a per-example mask (native path)."""
    cfg = nl.VLPConfig(window_group=2)
    rng = np.random.default_rng(4)
    x = jnp.asarray((rng.standard_normal((3, 4, 40)) * 5).astype(np.float32))
    mask = jnp.asarray(rng.random((3, 4, 40)) < 0.6)
    scales = jnp.asarray([0.125, -2.0, 1.0], jnp.float32)
    f = jax.vmap(lambda v, s, m: nl.softmax(v, approx=cfg, tokens=2, scale=s, mask=m))
    got = formats.to_numpy(f(x, scales, mask)).view(np.uint16)
    want = formats.to_numpy(sm._softmax_jit(x * scales[:, None, None], 2, cfg, 2, False, None,
                                            mask)).view(np.uint16)
    np.testing.assert_array_equal(got, want)
    shared = jax.vmap(lambda v: nl.softmax(v, approx=cfg, tokens=2, scale=0.5, mask=mask[0]))(x)
    want = formats.to_numpy(sm._softmax_jit(x, 2, cfg, 2, False, jnp.float32(0.5), mask[0]))
    np.testing.assert_array_equal(formats.to_numpy(shared).view(np.uint16), want.view(np.uint16))


@pytest.mark.parametrize("kw, msg", [
    ({"mask": np.ones((3, 5), bool)}, "mask: must be a boolean array broadcastable"),
    ({"mask": np.ones((4,), np.int32)}, "mask: must be a boolean array broadcastable"),
    ({"scale": np.ones(2, np.float32)}, "scale: must be a real scalar"),
    ({"out_dtype": "float16"}, "out_dtype: must be 'bfloat16' or 'float32'"),
])
def test_bad_scale_mask_out_dtype(kw, msg):
    with pytest.raises(ValueError, match=msg):
        nl.softmax(jnp.zeros((2, 4)), **kw)


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++: the native kernel is not built")
def test_the_kernel_is_in_use():
    assert sm.native_available()
