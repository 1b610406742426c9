"""Relaxations: equality with the exact VLP kernels in the hard limit, finite-difference gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mugi_jax import nonlinear as nl
from mugi_jax.tune import relax as R

CONFIGS = [
    nl.VLPConfig(),
    nl.VLPConfig(mantissa_bits=1, window=4, e_top=0, window_group=64),
    nl.VLPConfig(mantissa_bits=7, window=12, e_top=-2, window_group=5),
    nl.VLPConfig(mantissa_bits=2, window=5, lut_exponents=9, e_top=4, window_group=1000),
]


def _inputs(seed: int = 0, shape: tuple[int, int] = (4, 700)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * np.exp2(rng.integers(-9, 7, shape))
    x = x.astype(np.float32)
    x[0, :5] = [0.0, -0.0, np.inf, -np.inf, np.nan]
    x[1, :4] = [1e-40, 3e38, -3e38, 2.0 ** -126]
    return x


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))


@pytest.mark.parametrize("fn", ["exp", "silu", "gelu", "gelu_tanh"])
def test_hard_limit_equals_exact_vlp(fn: str) -> None:
    """Traced parameters under jit (fused ops must not move elements across boundaries): one
    compilation of the relaxed unit serves every config."""
    x = _inputs()
    jitted = jax.jit(lambda v, p, cfg: R.relaxed_vlp(v, fn, p, cfg, temperature=0.0, axis=-1),
                     static_argnums=2)
    jitted0 = jax.jit(lambda v, p, cfg: R.relaxed_vlp(v, fn, p, cfg, temperature=0.0, axis=0),
                      static_argnums=2)
    for cfg in CONFIGS if fn != "gelu_tanh" else CONFIGS[:1]:
        p = R.params_from_config(cfg)
        assert _same(nl.vlp(x, fn, cfg).astype(jnp.float32), jitted(x, p, _key(cfg))), (fn, cfg)
        assert _same(nl.vlp(x, fn, cfg, axis=0).astype(jnp.float32), jitted0(x, p, _key(cfg)))


def _key(cfg: nl.VLPConfig) -> nl.VLPConfig:
    """The static part of a config for the relaxed unit (lut_exponents, window_group)."""
    return nl.VLPConfig(lut_exponents=cfg.lut_exponents, window_group=cfg.window_group,
                        window=1, e_top=max(cfg.e_top, -126 + cfg.lut_exponents - 1))


def test_hard_limit_eager() -> None:
    x = _inputs(5, (2, 300))
    cfg = CONFIGS[1]
    exact = nl.vlp(x, "silu", cfg).astype(jnp.float32)
    assert _same(exact, R.relaxed_vlp(x, "silu", R.params_from_config(cfg), cfg))


@pytest.mark.parametrize("cfg", CONFIGS)
def test_hard_limit_equals_exact_softmax(cfg: nl.VLPConfig) -> None:
    rng = np.random.default_rng(1)
    s = (rng.standard_normal((2, 3, 40, 33)) * 6).astype(np.float32)
    mask = np.tril(np.ones((40, 33), bool))
    s = np.where(mask, s, -np.inf)
    s[0, 0, 0, :] = -np.inf  # a fully masked row
    for axis in (-1, 2):
        exact = nl.softmax(s, axis=axis, approx=cfg).astype(jnp.float32)
        relaxed = R.relaxed_softmax(s, R.params_from_config(cfg), cfg, temperature=0.0, axis=axis)
        assert _same(exact, relaxed), (cfg, axis)
    jitted = jax.jit(lambda v, p: R.relaxed_softmax(v, p, cfg, temperature=0.0))
    assert _same(nl.softmax(s, approx=cfg).astype(jnp.float32), jitted(s, R.params_from_config(cfg)))


def test_hard_limit_equals_exact_softmax_per_token_groups() -> None:
    """``tokens=T`` (window groups of one query token's head rows, as the decoders call it) equals
    ``nl.softmax(..., tokens=T)`` bit for bit, and differs from the cross-token grouping."""
    cfg = nl.VLPConfig(mantissa_bits=2, window=3, e_top=3, window_group=4)
    heads, t = 3, 8
    rng = np.random.default_rng(4)
    s = (rng.standard_normal((2, heads * t, 33)) * np.exp2(rng.integers(-4, 4, (2, heads * t, 1))))
    s = np.where(np.tile(np.tril(np.ones((t, 33), bool), 25), (heads, 1)), s, -np.inf)
    s = s.astype(np.float32)
    p = R.params_from_config(cfg)
    relaxed = jax.jit(lambda v, q: R.relaxed_softmax(v, q, cfg, tokens=t))(s, p)
    assert _same(nl.softmax(s, approx=cfg, tokens=t).astype(jnp.float32), relaxed)
    assert not _same(R.relaxed_softmax(s, p, cfg), relaxed)


@pytest.mark.parametrize("tokens", [0, 5, 2.0, True])
def test_softmax_bad_tokens(tokens: object) -> None:
    with pytest.raises(ValueError, match="tokens: must be a positive integer dividing the 24 rows"):
        R.relaxed_softmax(jnp.zeros((2, 24, 9)), R.params_from_config(nl.VLPConfig()),
                          tokens=tokens)


def test_temperature_to_zero_converges_to_hard() -> None:
    cfg = nl.VLPConfig(mantissa_bits=3, window=6, e_top=2, window_group=32)
    x = _inputs(2, (8, 256))
    x = np.where(np.isfinite(x), x, 1.0)
    hard = np.asarray(R.relaxed_vlp(x, "silu", R.params_from_config(cfg), cfg, temperature=0.0))
    errs = [float(np.max(np.abs(np.asarray(R.relaxed_vlp(
        x, "silu", R.params_from_config(cfg), cfg, temperature=t)) - hard) / (1 + np.abs(hard))))
        for t in (0.3, 0.03, 1e-5)]
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 1e-6


def test_table_function_matches_vlp_table_and_gradient() -> None:
    t = nl.vlp_table("silu", 3, 12, 3)
    codes = 8
    e = np.arange(3 - 12 + 1, 4)
    mags = np.ldexp(1 + np.arange(codes)[None] / codes, e[:, None]).astype(np.float32)
    got = np.asarray(R.table_function("silu", jnp.asarray(-mags)))
    assert np.array_equal(got, np.asarray(t[1], np.float32))
    v = jnp.linspace(-3.0, 3.0, 11)
    g = jax.vmap(jax.grad(lambda u: R.table_function("silu", u)))(v)
    assert np.allclose(g, jax.vmap(jax.grad(jax.nn.silu))(v), rtol=1e-6)


def test_round_mantissa_ste_gradients() -> None:
    m = jnp.asarray([0.0, 0.1, 0.3, 0.49, 0.9375, 0.99], jnp.float32)
    b = jnp.float32(2.0)
    q = R.round_mantissa(m, b)
    assert np.allclose(q, np.round(np.asarray(m) * 4) / 4)
    dq_dm = jax.vmap(jax.grad(lambda mm: R.round_mantissa(mm, b)))(m)
    assert np.allclose(dq_dm, 1.0)
    dq_db = jax.grad(lambda bb: jnp.sum(R.round_mantissa(m, bb)))(b)
    delta = 0.25
    s = np.asarray(m) / delta
    expect = np.sum(-np.log(2) * delta * (np.round(s) - s))
    assert np.isclose(dq_db, expect, rtol=1e-5)


def test_round_mantissa_noise_scale() -> None:
    m = jnp.full((20000,), 0.4, jnp.float32)
    q = R.round_mantissa(m, jnp.float32(3.0), "noise", jax.random.PRNGKey(0))
    d = np.asarray(q - m)
    assert np.all(np.abs(d) <= 2.0 ** -4 + 1e-7)
    assert abs(np.std(d) - 2.0 ** -3 / np.sqrt(12)) < 1e-3


def _fd_check(f, theta: jnp.ndarray, h: float = 1e-2, rtol: float = 0.05) -> None:
    # compiled once (loss and gradient), not dispatched op by op for each of the 7 evaluations
    f = jax.jit(f)
    g = jax.jit(jax.grad(f))(theta)
    fd = np.array([(f(theta + h * ei) - f(theta - h * ei)) / (2 * h)
                   for ei in np.eye(theta.shape[0], dtype=np.float32)])
    scale = np.max(np.abs(fd)) + 1e-6
    assert np.allclose(np.asarray(g), fd, rtol=rtol, atol=rtol * scale), (g, fd)
    assert np.max(np.abs(fd)) > 0


@pytest.mark.parametrize("fn", ["exp", "silu", "gelu"])
def test_gradients_match_finite_differences(fn: str) -> None:
    """Smooth surrogate (float32 f, noise rounding with a fixed key, tau > 0): all three
    parameter gradients equal central finite differences."""
    jax.config.update("jax_enable_x64", False)
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((16, 64)) * 3).astype(np.float32)
    if fn == "exp":
        x = -np.abs(x)
    w = jnp.asarray(rng.standard_normal(x.shape).astype(np.float32))
    base = nl.VLPConfig(window_group=16)
    key = jax.random.PRNGKey(7)

    def loss(theta: jnp.ndarray) -> jnp.ndarray:
        p = R.VLPParams(theta[0], theta[1], theta[2])
        y = R.relaxed_vlp(x, fn, p, base, temperature=0.5, rounding="noise", key=key,
                          exact_values=False, axis=0)
        return jnp.sum(w * y)

    # non-integer points away from the clip kinks
    _fd_check(loss, jnp.asarray([1.3, 6.4, 2.6], jnp.float32))


def test_softmax_gradients_match_finite_differences() -> None:
    rng = np.random.default_rng(4)
    s = (rng.standard_normal((40, 24)) * 4).astype(np.float32)
    w = jnp.asarray(rng.standard_normal(s.shape).astype(np.float32))
    base = nl.VLPConfig(window_group=8)
    key = jax.random.PRNGKey(1)

    def loss(theta: jnp.ndarray) -> jnp.ndarray:
        p = R.VLPParams(theta[0], theta[1], theta[2])
        out = R.relaxed_softmax(s, p, base, temperature=0.4, rounding="noise", key=key,
                                exact_values=False)
        return jnp.sum(w * out) * 100

    # the output rounding to BF16 is straight-through, so compare at float32 scale loosely
    g = jax.jit(jax.grad(loss))(jnp.asarray([1.4, 5.3, 2.4], jnp.float32))
    assert np.all(np.isfinite(np.asarray(g)))
    assert np.any(np.asarray(g) != 0)


def test_gradient_wrt_input_is_finite_with_masks() -> None:
    s = jnp.asarray(np.where(np.tril(np.ones((6, 6), bool)), 1.5, -np.inf), jnp.float32)
    g = jax.jit(jax.grad(lambda z: jnp.sum(R.relaxed_softmax(
        z, R.params_from_config(nl.VLPConfig()), temperature=0.3)[:, 0])))(s)
    assert np.all(np.isfinite(np.asarray(g)))


def test_bad_input() -> None:
    p = R.params_from_config(nl.VLPConfig())
    with pytest.raises(ValueError, match="fn"):
        R.relaxed_vlp(jnp.ones(3), "relu", p)
    with pytest.raises(ValueError, match="rounding"):
        R.relaxed_vlp(jnp.ones(3), "silu", p, rounding="floor")
    with pytest.raises(ValueError, match="temperature"):
        R.relaxed_vlp(jnp.ones(3), "silu", p, temperature=-1.0)
    with pytest.raises(ValueError, match="build"):
        R.relaxed_vlp(jnp.ones(3), "silu", p, nl.VLPConfig(build="min"))
