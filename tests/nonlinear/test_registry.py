"""The nonlinear function registry: a function defined only here (Mish) goes through the VLP
kernel, the cycle-level simulator, PWL, Taylor, the exact path, the relaxation and the tuner's cost
with one ``register`` call, and the shipped records agree with independent references."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mugi_jax import formats
from mugi_jax import nonlinear as nl
from mugi_jax.nonlinear import functions
from mugi_jax.sim import nonlinear as sim
from mugi_jax.tune import cost as tcost
from mugi_jax.tune import relax


def _mish(v: np.ndarray) -> np.ndarray:  # x tanh(softplus(x)); accepts complex (Taylor)
    return v * np.tanh(np.log1p(np.exp(v)))


@pytest.fixture
def mish():
    rec = nl.register(nl.Function(
        name="mish_test", reference=_mish, above=lambda x: np.where(x > 0, x, 0.0),
        below=lambda x: x * math.tanh(math.log(2.0)), signs=(1, -1), pwl_range=(-6.0, 6.0),
        taylor=(0.0, -3.0, 3.0)))
    yield rec
    del functions.REGISTRY["mish_test"]


def _inputs() -> np.ndarray:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 48)) * np.exp2(rng.integers(-12, 5, (4, 48)))).astype(np.float32)
    x[0, :5] = [0.0, -0.0, np.inf, -np.inf, 1e-40]
    x[1, 0] = np.nan
    return x


def test_registered_function_through_every_unit(mish):
    x = _inputs()
    xb = np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32), np.float64)
    ref = mish.f64(xb)
    finite = np.isfinite(xb)
    for cfg in (nl.VLPConfig(window_group=16), nl.VLPConfig(window_group=8, tail="linear"),
                nl.MugiL(nl.VLPConfig(mantissa_bits=5, window=10, lut_exponents=14, e_top=4))):
        out = nl.vlp(x, "mish_test", cfg)
        cycles = nl.subscription_cycles(x, "mish_test", cfg)
        # the simulator implements the rules on its own from the record: bit-identical
        s = sim.simulate_vlp(x, "mish_test", cfg)
        np.testing.assert_array_equal(np.asarray(out).view(np.uint16), s.outputs.view(np.uint16))
        np.testing.assert_array_equal(np.asarray(cycles), s.cycles)
    # special values: f(0), above(+-inf), below for tiny inputs, NaN passes through
    out = np.asarray(nl.vlp(x, "mish_test", nl.VLPConfig(window_group=16)), np.float32)
    assert out[0, 0] == 0.0 and out[0, 2] == np.inf and out[0, 3] == 0.0 and np.isnan(out[1, 0])
    # one element per window, inside the stored range: the entry bf16(f(x rounded to 3 bits))
    own = np.asarray(nl.vlp(x, "mish_test", nl.VLPConfig(window_group=1)), np.float32)
    m = finite & (np.abs(xb) > 2.0 ** -8) & (np.abs(xb) < 8)
    r = formats.round_mantissa(jnp.asarray(xb, jnp.float32), 3, "rne")
    xq = np.sign(xb) * np.ldexp(1.0 + np.asarray(r.code) / 8.0, np.asarray(r.exponent))
    want = np.asarray(formats.round_float64(mish.f64(xq), formats.BF16), np.float32)
    np.testing.assert_array_equal(own[m], want[m])
    # PWL: the chords through f at the 22 knots of [-6, 6] (float64 np.interp), BF16 out
    knots = np.linspace(-6.0, 6.0, 23)
    chords = np.interp(xb, knots, mish.f64(knots))
    y = np.asarray(nl.pwl(x, "mish_test"), np.float64)
    inside = finite & (np.abs(xb) < 6)
    assert np.all(np.abs(y[inside] - chords[inside]) <= 2.0 ** -8 * np.abs(chords[inside]) + 1e-6)
    # Taylor (degree 9 at 0; the series converges for |x| < 2.39): close to f near the centre
    t = np.asarray(nl.taylor(x, "mish_test"), np.float64)
    near = finite & (np.abs(xb) < 1)
    assert np.max(np.abs(t[near] - ref[near])) < 0.01
    for y in (y, t):  # outside the ranges: the record's above(x)
        assert np.all(y[finite & (xb < -10)] == 0) and np.all(y[finite & (xb > 10)] == xb[finite & (xb > 10)])
    ex = np.asarray(nl.exact(x, "mish_test"))  # no jax_fn: the reference through a callback
    want = mish.f64(x.astype(np.float64)).astype(np.float32)  # FP32 in: x itself, not bf16(x)
    np.testing.assert_allclose(ex[finite], want[finite], rtol=1e-6, atol=1e-30)
    # Taylor coefficients from the Cauchy integral: mish(x) = 0.6 x + 0.16 x^2 + ... at 0
    a = nl.taylor_coefficients("mish_test", 4, 0.0)
    assert abs(a[0]) < 1e-12 and abs(a[1] - math.tanh(math.log(2.0))) < 1e-10
    # softmax of the test function is not a thing; the activation entry point is
    np.testing.assert_array_equal(np.asarray(nl.activation(x, "mish_test", nl.PWL())).view(np.uint16),
                                  np.asarray(nl.pwl(x, "mish_test")).view(np.uint16))


def test_registered_function_relaxation_and_cost(mish):
    x = jnp.asarray(_inputs()[:, :32])
    base = nl.VLPConfig(window_group=16)
    p = relax.params_from_config(base)
    hard = np.asarray(nl.vlp(x, "mish_test", base), np.float32)
    soft = np.asarray(relax.relaxed_vlp(x, "mish_test", p, base))
    np.testing.assert_array_equal(soft.view(np.uint32), hard.view(np.uint32))

    xf = jnp.where(jnp.isfinite(x), x, 0.0)

    def loss(q):
        y = relax.relaxed_vlp(xf, "mish_test", q, base, temperature=0.5)
        return jnp.sum(jnp.where(jnp.isfinite(y), y, 0.0))

    g = jax.grad(loss)(p)
    assert all(np.isfinite(float(v)) for v in g)
    assert tcost.PASSES["mish_test"] == 2 and tcost.PASSES["softmax"] == tcost.PASSES["exp"] == 1
    c = tcost.function_cost("mish_test", 3.0, 8.0)
    assert float(c["cycles"]) == 2 * 8 and float(c["table_entries"]) == 2 * 8 * 8


def test_register_rejects_bad_records_and_duplicates():
    with pytest.raises(ValueError, match="signs"):
        nl.Function(name="f", reference=np.tanh, signs=(2,))
    with pytest.raises(ValueError, match="name"):
        nl.Function(name="softmax", reference=np.exp)
    with pytest.raises(ValueError, match="already registered"):
        nl.register(nl.Function(name="tanh", reference=np.tanh))
    with pytest.raises(ValueError, match="must be one of"):
        nl.vlp(jnp.ones(3), "erf")
    assert set(nl.names()) >= {"exp", "silu", "gelu", "gelu_tanh", "sigmoid", "tanh"}


@pytest.mark.parametrize("fn", ["exp", "silu", "gelu", "gelu_tanh"])
def test_shipped_references_match_the_math_module(fn):
    v = np.linspace(-12, 6, 301)
    got = formats.round_float64(nl.reference_f64(fn, v), formats.BF16)
    want = formats.round_float64(np.array([sim.sim_f64(fn, t) for t in v]), formats.BF16)
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))


@pytest.mark.parametrize("fn,f", [("sigmoid", lambda t: 1 / (1 + math.exp(-t))),
                                  ("tanh", math.tanh)])
def test_new_shipped_functions(fn, f):
    x = np.linspace(-6, 6, 96, dtype=np.float32)
    want = np.array([f(float(t)) for t in np.asarray(jnp.asarray(x).astype(jnp.bfloat16), np.float64)])
    for approx, tol in ((nl.VLPConfig(window_group=8), 0.07), (nl.PWL(), 0.015), (nl.Taylor(), 0.02)):
        y = np.asarray(nl.activation(x, fn, approx), np.float64)
        inner = np.abs(x) < (1.0 if isinstance(approx, nl.Taylor) else 1.5)
        assert np.max(np.abs(y[inner] - want[inner])) < tol, (fn, approx)
    s = sim.simulate_vlp(x.reshape(4, -1)[:, :24], fn, nl.VLPConfig(window_group=8))
    np.testing.assert_array_equal(
        np.asarray(nl.vlp(x.reshape(4, -1)[:, :24], fn, nl.VLPConfig(window_group=8))).view(np.uint16),
        s.outputs.view(np.uint16))
    # the records' exact series against the Cauchy integral of a complex-capable reference
    analytic = {"sigmoid": lambda z: 1 / (1 + np.exp(-z)), "tanh": np.tanh}[fn]
    a = nl.taylor_coefficients(fn, 5, 0.3)
    b = functions.Function(name="cauchy", reference=analytic).taylor_coefficients(0.3, 5)
    np.testing.assert_allclose(a, b, atol=1e-9)
    with pytest.raises(ValueError, match="analytic"):  # _expit uses |v|: refused, not wrong
        functions.Function(name="c", reference=functions.get("sigmoid").reference
                           ).taylor_coefficients(0.3, 5)
