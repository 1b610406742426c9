"""API behaviour: configs, bad input, entry rounding, NaN, masks, jit/vmap, baselines, pieces."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from mugi_jax import formats
from mugi_jax import nonlinear as nl
from mugi_jax.nonlinear.softmax import exact_divide, pairwise_sum
from mugi_jax.nonlinear.vlp import bit_fields

from .strategies import BF16

ALL_BF16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(BF16)


@pytest.mark.parametrize("kwargs, field", [
    (dict(mantissa_bits=0), "mantissa_bits"), (dict(mantissa_bits=8), "mantissa_bits"),
    (dict(window=0), "window"), (dict(window=9, lut_exponents=8), "lut_exponents"),
    (dict(build="mid"), "build"), (dict(tail="cubic"), "tail"), (dict(window_group=0), "window_group"),
    (dict(e_top=128), "e_top"), (dict(e_top=-120, lut_exponents=12), "e_top"),
    (dict(mantissa_bits=2.0), "mantissa_bits"),
])
def test_invalid_config_names_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        nl.VLPConfig(**kwargs)


def test_other_bad_input():
    with pytest.raises(ValueError, match="fn"):
        nl.vlp(jnp.zeros(3), "relu")
    with pytest.raises(ValueError, match="fn"):
        nl.subscription_cycles(jnp.zeros(3), "relu")
    with pytest.raises(TypeError):
        nl.vlp(jnp.arange(3), "exp")
    with pytest.raises(TypeError):
        nl.softmax(jnp.arange(3))
    with pytest.raises(TypeError):
        nl.silu(np.arange(3, dtype=np.int32), approx=nl.PWL())
    with pytest.raises(ValueError, match="segments"):
        nl.PWL(segments=0)
    with pytest.raises(ValueError, match="degree"):
        nl.Taylor(degree=10)
    with pytest.raises(ValueError, match="approx"):
        nl.softmax(jnp.zeros(3), approx="vlp")
    with pytest.raises(ValueError, match="axis"):
        nl.softmax(jnp.zeros((2, 3)), axis=2)


def test_configs_are_hashable_static_args():
    cfg = nl.VLPConfig()
    assert hash(cfg) == hash(nl.VLPConfig()) and cfg == nl.VLPConfig()
    f = jax.jit(lambda x, c: nl.vlp(x, "silu", c), static_argnums=1)
    np.testing.assert_array_equal(np.asarray(f(jnp.ones(4), cfg)), np.asarray(nl.silu(jnp.ones(4))))


def test_float32_rounded_once_at_entry():
    # 1 + 2^-8 + 2^-20 rounds (once) up to 1 + 2^-7 in BF16
    x32 = np.array([1 + 2**-8 + 2**-20, 1 + 2**-8, -3.3], dtype=np.float32)
    xb = x32.astype(BF16)  # ml_dtypes float32 -> bf16 is a single RNE rounding
    for fn in ("exp", "silu", "gelu"):
        np.testing.assert_array_equal(np.asarray(nl.vlp(x32, fn)).view(np.uint16),
                                      np.asarray(nl.vlp(formats.from_numpy(xb), fn)).view(np.uint16))
    # inside a user's jit too (no excess precision)
    f = jax.jit(lambda x: nl.softmax(x[None], approx=nl.VLPConfig()))
    g = jax.jit(lambda x: nl.softmax(x.astype(jnp.bfloat16)[None], approx=nl.VLPConfig()))
    np.testing.assert_array_equal(np.asarray(f(jnp.asarray(x32))).view(np.uint16),
                                  np.asarray(g(jnp.asarray(x32))).view(np.uint16))


def test_nan_propagates_and_specials():
    x = jnp.array([jnp.nan, 0.0, -0.0, jnp.inf, -jnp.inf, 1e-40, 1e6, -1e6], jnp.float32)
    e = np.asarray(nl.vlp(x, "exp")).astype(np.float32)
    assert np.isnan(e[0]) and e[1] == 1 and e[2] == 1 and e[3] == np.inf and e[4] == 0
    assert e[5] == 1 and e[6] == np.inf and e[7] == 0
    s = np.asarray(nl.silu(x)).astype(np.float32)
    assert np.isnan(s[0]) and s[1] == 0 and s[3] == np.inf and s[4] == 0 and s[5] == 0
    assert s[6] == np.float32(np.asarray(x[6].astype(jnp.bfloat16)).astype(np.float32)) and s[7] == 0
    for approx in (nl.PWL(), nl.Taylor(), nl.Exact()):
        assert np.isnan(np.asarray(nl.silu(x, approx=approx)).astype(np.float32)[0])


def test_softmax_masks_and_rows():
    x = jnp.array([[1.0, -jnp.inf, 2.0, 0.5], [-jnp.inf] * 4, [jnp.nan, 1.0, -jnp.inf, 0.0]])
    p = np.asarray(nl.softmax(x)).astype(np.float32)
    assert p[0, 1] == 0 and np.all(p[1] == 0) and p[2, 2] == 0
    assert np.all(np.isnan(p[2, [0, 1, 3]]))
    assert abs(p[0].sum() - 1) < 0.05
    exact = np.asarray(nl.softmax(x, approx=nl.Exact()))
    assert exact.dtype == np.float32


def test_jit_vmap_and_leading_shapes():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 6, 5))
    cfg = nl.VLPConfig(window_group=2)
    direct = np.asarray(nl.softmax(x, approx=cfg)).view(np.uint16)
    vm = jax.vmap(lambda a: nl.softmax(a, approx=cfg))(x)
    np.testing.assert_array_equal(np.asarray(vm).view(np.uint16), direct)
    jt = jax.jit(lambda a: nl.silu(a, approx=cfg))(x)
    np.testing.assert_array_equal(np.asarray(jt).view(np.uint16),
                                  np.asarray(nl.silu(x, approx=cfg)).view(np.uint16))
    cyc = jax.vmap(lambda a: nl.subscription_cycles(a, "silu", cfg))(x)
    np.testing.assert_array_equal(np.asarray(cyc), np.asarray(nl.subscription_cycles(x, "silu", cfg)))
    assert cyc.shape == (3, 4, 6, 3)
    assert nl.subscription_cycles(x, "softmax", cfg).shape == (3, 4, 3, 5)
    # softmax over another axis equals moving that axis last
    a1 = np.asarray(nl.softmax(x, axis=1, approx=cfg))
    a2 = np.moveaxis(np.asarray(nl.softmax(jnp.moveaxis(x, 1, -1), approx=cfg)), -1, 1)
    np.testing.assert_array_equal(a1.view(np.uint16), a2.view(np.uint16))


def test_cycles_formula():
    cfg = nl.VLPConfig(mantissa_bits=3, window_group=4)
    x = jnp.array([-1.0, -1.25, -1.5, -0.0, 1.0, -1.875, 2.0, 0.0])  # codes 0, 2, 4, -, 0, 7, 0
    np.testing.assert_array_equal(nl.subscription_cycles(x, "exp", cfg), [5, 8 + 1])
    np.testing.assert_array_equal(nl.subscription_cycles(x, "silu", cfg), [5, 1 + 8])
    np.testing.assert_array_equal(nl.subscription_cycles(x, "silu", cfg, early_termination=False),
                                  [16, 16])
    np.testing.assert_array_equal(nl.subscription_cycles(x, "exp", cfg, early_termination=False),
                                  [8, 16])


def test_rounding_equals_formats_round_mantissa():
    xb = formats.from_numpy(ALL_BF16)
    normal = np.asarray(formats.classify(xb)) == formats.Kind.NORMAL
    for m in range(1, 8):
        exp_ref, code_ref = (np.asarray(a) for a in formats.round_mantissa(xb, m, "rne"))
        rounded = np.asarray(bit_fields(xb, m).rounded)
        np.testing.assert_array_equal((rounded >> m)[normal] - 127, exp_ref[normal])
        np.testing.assert_array_equal((rounded & ((1 << m) - 1))[normal], code_ref[normal])


@pytest.mark.parametrize("fn", ["exp", "silu", "gelu", "gelu_tanh"])
def test_table_entries_are_single_rounded_float64(fn):
    table = nl.vlp_table(fn, 3, 12, 3)
    ref = {"exp": math.exp, "silu": lambda v: v / (1 + math.exp(-v)),
           "gelu": lambda v: 0.5 * v * math.erfc(-v / math.sqrt(2)),  # no cancellation for v < 0
           "gelu_tanh": lambda v: v / (1 + math.exp(-2 * math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))}[fn]
    for s, sign in enumerate((1.0, -1.0)):
        for k, e in enumerate(range(3 - 12 + 1, 4)):
            for j in range(8):
                v = sign * (1 + j / 8) * 2.0**e
                want = formats.round_float64(np.array([ref(v)]), formats.BF16)[0]
                got = table[s, k, j]
                assert got.view(np.uint16) == want.view(np.uint16), (s, e, j)


def test_pairwise_sum_order_and_exact_division():
    v = np.array([[1e8, 1.0, -1e8, 1.0, 3.0]], np.float32)
    # tree: pad to 8 -> [1e8+3, 1+0, -1e8+0, 1+0] -> [1e8+3-1e8, 1+1] -> 4 + 2 (FP32 steps)
    a = np.float32(np.float32(1e8) + np.float32(3.0))
    want = np.float32(np.float32(a + np.float32(-1e8)) + np.float32(2.0))
    assert np.asarray(pairwise_sum(jnp.asarray(v)))[0, 0] == want
    num = jax.random.uniform(jax.random.PRNGKey(1), (64, 256))
    den = jax.random.uniform(jax.random.PRNGKey(2), (64, 1), minval=1, maxval=300)
    got = np.asarray(jax.jit(exact_divide)(num, den))
    np.testing.assert_array_equal(got, np.asarray(num) / np.asarray(den))


def test_window_rules_by_hand():
    # M=3, W=2, L=4, e_top=1: stored exponents -2..1; a tile's window is 2 exponents.
    cfg = nl.VLPConfig(mantissa_bits=3, window=2, lut_exponents=4, e_top=1, window_group=8)
    x = jnp.array([-3.0, -1.0, -0.3, -0.2, -0.05, -5.0], jnp.float32)  # e: 1, 0, -2, -3, -5, 2
    y = np.asarray(nl.vlp(x, "exp", cfg)).astype(np.float32)
    t = nl.vlp_table("exp", 3, 4, 1).astype(np.float32)  # [sign, e + 2, j]
    # window: top = min(max e = 2, 1) = 1, bottom = 0
    assert y[0] == t[1, 3, 4]            # -1.5 * 2^1 -> j = 4
    assert y[1] == t[1, 2, 0]            # -1.0 * 2^0
    assert y[2] == t[1, 2, 0]            # e=-2 inside the stored range, below the window -> (0, 0)
    assert y[3] == t[1, 2, 0]            # e=-3 below the stored range -> (bottom, 0)
    assert y[5] == 0                     # e=2 > e_top -> 0
    s = np.asarray(nl.vlp(x, "silu", cfg)).astype(np.float32)
    assert s[3] == 0 and s[4] == 0       # below the stored range -> 0
    lin = np.asarray(nl.vlp(x, "silu", nl.VLPConfig(mantissa_bits=3, window=2, lut_exponents=4,
                                                    e_top=1, tail="linear"))).astype(np.float32)
    assert lin[4] == np.float32(np.asarray(jnp.bfloat16(-0.05))) / 2


def test_baselines():
    b = np.asarray(nl.pwl_coefficients("exp", 20, -20.0, 0.0)[0])  # integer (BF16-exact) knots
    got = np.asarray(nl.pwl(jnp.asarray(b), "exp", nl.PWL(segments=20))).astype(np.float32)
    np.testing.assert_allclose(got, np.exp(b.astype(np.float64)), rtol=2**-7)
    x = jnp.linspace(-25, 0, 501)
    y = np.asarray(nl.softmax(x[None], approx=nl.PWL())).astype(np.float32)
    assert abs(y.sum() - 1) < 0.05 and np.asarray(nl.pwl(jnp.array([-21.0]), "exp"))[0] == 0
    a = nl.taylor_coefficients("silu", 9, 0.0)
    np.testing.assert_allclose(a[:4], [0.0, 0.5, 0.25, 0.0], atol=1e-15)
    g = nl.taylor_coefficients("gelu", 9, 0.5)
    v = np.polyval(g[::-1], 0.1)
    assert abs(v - 0.6 * 0.5 * (1 + math.erf(0.6 / math.sqrt(2)))) < 1e-9
    t = nl.taylor_coefficients("gelu_tanh", 9, 0.0)
    assert abs(np.polyval(t[::-1], 0.3) - 0.3 * 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (0.3 + 0.044715 * 0.027)))) < 1e-9
    xs = jnp.array([-10.0, -1.0, 0.0, 1.0, 10.0])
    for fn in ("silu", "gelu"):
        for approx in (nl.PWL(), nl.Taylor()):
            out = np.asarray(nl.activation(xs, fn, approx)).astype(np.float32)
            assert out[0] == 0 and out[-1] == 10 and out[2] == 0
            assert abs(out[3] - float(nl.exact(1.0, fn))) < 0.02
    assert np.asarray(nl.taylor(jnp.array([-9.0]), "exp"))[0] == 0


def test_round_to_bf16_matches_ml_dtypes():
    from mugi_jax.nonlinear.vlp import round_to_bf16
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2**32, 400_000, dtype=np.uint64).astype(np.uint32)
    special = np.array([0, 0x80000000, 1, 0x807FFFFF, 0x007FFFFF, 0x00800000, 0x7F7FFFFF,
                        0x7F7F8000, 0x7F7F7FFF, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001,
                        0xFFBFFFFF, 0x3F808000, 0x3F818000, 0x3F80FFFF], dtype=np.uint32)
    x = np.concatenate([special, bits]).view(np.float32)
    with np.errstate(invalid="ignore"):
        want = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    got = np.asarray(jax.jit(round_to_bf16)(jnp.asarray(x))).view(np.uint16)
    np.testing.assert_array_equal(got, want)
    x16 = rng.standard_normal(1000).astype(np.float16)
    np.testing.assert_array_equal(np.asarray(round_to_bf16(jnp.asarray(x16))).view(np.uint16),
                                  x16.astype(np.float32).astype(ml_dtypes.bfloat16).view(np.uint16))
