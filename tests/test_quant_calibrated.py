"""Calibrated quantizers: GPTQ against a literal reference of the paper's equations, error
reductions against round-to-nearest on correlated, outlier-heavy activations, bad input."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from mugi_jax import quant

SCHEMES = {
    "signmag": quant.SignMagnitudeInt4(group_size=16),
    "int4": quant.Int4(group_size=16, calibration="minmax"),
    "asym_min": quant.AsymUInt4(group_size=16),
    "asym_int": quant.AsymUInt4(group_size=16, zero_point="int"),
}


def calibration(seed: int = 0, tokens: int = 256, n_in: int = 64, n_out: int = 24):
    """Correlated (low-rank mixed), heavy-tailed (Student t, 3 dof) activations with a few
    outlier channels 20x larger, and a kernel with a per-output offset."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((tokens, 8)) @ rng.standard_normal((8, n_in))
    x += 0.3 * rng.standard_t(3, (tokens, n_in))
    x[:, rng.choice(n_in, 3, replace=False)] *= 20.0
    w = rng.standard_normal((n_in, n_out)) * 0.05 + rng.standard_normal((1, n_out)) * 0.02
    return x.astype(np.float32), w.astype(np.float32)


# --- an independent reference, written from the GPTQ paper's equations (float64 NumPy) ------


def ref_params(v: np.ndarray, scheme: quant.Scheme):
    """Scale and zero of one group ``v`` (group, out) - the formulas of docs/numerics.md s.2."""
    lo, hi = v.min(0), v.max(0)
    if isinstance(scheme, quant.SignMagnitudeInt4):
        return np.float32(np.maximum(-lo, hi) / np.float32(7)), None
    if isinstance(scheme, quant.Int4):
        return np.float32(np.maximum(np.maximum(hi / np.float32(7), lo / np.float32(-8)), 0)), None
    if scheme.zero_point == "min":
        return np.float32((np.float32(hi) - np.float32(lo)) / np.float32(15)), np.float32(lo)
    lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
    s = np.float32((np.float32(hi) - np.float32(lo)) / np.float32(15))
    return s, np.clip(np.round(-lo / np.where(s > 0, s, 1)), 0, 15)


def ref_quant(wi: np.ndarray, s, z, scheme: quant.Scheme) -> np.ndarray:
    """Round one row to the scheme's levels and return the dequantized row."""
    safe = np.where(s > 0, s, 1)
    if z is None:
        q = np.clip(np.round(wi / safe), scheme.qmin, scheme.qmax)
        return q * s
    if scheme.zero_point == "min":
        q = np.clip(np.round((wi - z) / safe), 0, 15)
        return q * s + z
    q = np.clip(np.round(wi / safe) + z, 0, 15)
    return (q - z) * s


def ref_gptq(w: np.ndarray, x: np.ndarray, scheme: quant.Scheme, damp: float,
             act_order: bool) -> np.ndarray:
    """OBQ-style greedy quantization in a fixed order (Frantar et al., GPTQ section 3):
    ``delta_F = -(w_q - quant(w_q)) / [H_F^-1]_qq (H_F^-1)_{:,q}`` and
    ``H_{-q}^-1 = H^-1 - H^-1_{:,q} H^-1_{q,:} / [H^-1]_qq``; a group's parameters are set from the
    current weights when its first column is reached.  Returns the dequantized kernel."""
    w = w.astype(np.float64).copy()
    h = 2.0 * x.astype(np.float64).T @ x.astype(np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead] = 0.0
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(len(h))
    h += damp * np.mean(np.diag(h)) * np.eye(len(h))
    hinv = np.linalg.inv(h)
    g = scheme.group_size
    params: dict[int, tuple] = {}
    out = np.zeros_like(w)
    for col in order:
        gi = col // g
        if gi not in params:
            params[gi] = ref_params(w[gi * g:(gi + 1) * g].astype(np.float32), scheme)
        s, z = params[gi]
        out[col] = ref_quant(w[col].astype(np.float32), s, z, scheme)
        err = w[col] - out[col]
        w -= np.outer(hinv[:, col] / hinv[col, col], err)
        hinv -= np.outer(hinv[:, col], hinv[col, :]) / hinv[col, col]
    return out


def out_err(x, w, wq):
    return float(np.sum((x.astype(np.float64) @ (w.astype(np.float64) - wq)) ** 2))


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("name", SCHEMES)
def test_gptq_matches_reference_and_beats_rtn(name, act_order):
    scheme = SCHEMES[name]
    x, w = calibration()
    q = quant.gptq(w, x, scheme, damp=0.01, block_size=24, act_order=act_order)  # blocks != groups
    assert isinstance(q, quant.QuantizedTensor) and q.scheme == scheme and q.shape == w.shape
    assert int(q.codes.min()) >= scheme.qmin and int(q.codes.max()) <= scheme.qmax
    ref = ref_gptq(w, x, scheme, 0.01, act_order)
    deq = np.asarray(q.dequantize(), np.float64)
    # float32 (blocked, Cholesky) against float64 (OBQ elimination): a code may flip at a tie
    assert np.mean(np.isclose(deq, ref, rtol=1e-4, atol=1e-6)) > 0.97
    e_gptq, e_ref = out_err(x, w, deq), out_err(x, w, ref)
    assert e_gptq == pytest.approx(e_ref, rel=0.05)
    e_rtn = out_err(x, w, np.asarray(quant.quantize(w, scheme).dequantize(), np.float64))
    assert e_gptq < 0.7 * e_rtn


def test_gptq_block_size_does_not_change_the_result():
    x, w = calibration(1)
    scheme = SCHEMES["asym_min"]
    a = quant.gptq(w, x, scheme, block_size=64)
    b = quant.gptq(w, x, scheme, block_size=7)
    assert np.mean(np.asarray(a.codes) == np.asarray(b.codes)) > 0.99


def test_gptq_dead_channels_are_zero():
    x, w = calibration(2)
    x[:, 5] = 0.0
    q = quant.gptq(w, x, SCHEMES["signmag"])
    assert bool(jnp.all(q.dequantize()[5] == 0))


@pytest.mark.parametrize("name", SCHEMES)
def test_clip_and_awq_reduce_error(name):
    scheme = SCHEMES[name]
    x, w = calibration(3)
    e_rtn = out_err(x, w, np.asarray(quant.quantize(w, scheme).dequantize(), np.float64))
    e_clip = out_err(x, w, np.asarray(quant.clip(w, scheme, x).dequantize(), np.float64))
    plain = quant.clip(w, scheme)  # squared weight error: never worse than RTN per group
    werr = lambda q: float(jnp.sum((q.dequantize() - w) ** 2))  # noqa: E731
    assert werr(plain) <= werr(quant.quantize(w, scheme)) * (1 + 1e-6)
    assert e_clip < e_rtn
    q, s = quant.awq(w, x, scheme)
    assert s.shape == (w.shape[0],) and bool(jnp.all(s > 0))
    e_awq = float(jnp.sum((x @ w - (x / s) @ q.dequantize()) ** 2))
    assert e_awq < e_rtn
    _, errors = quant.awq_scales(w, x, scheme)
    assert float(jnp.min(errors)) <= float(errors[0])  # alpha = 0 is plain RTN


def test_calibrated_bad_input():
    x, w = calibration()
    s = SCHEMES["signmag"]
    with pytest.raises(ValueError, match="x: calibration activations must be"):
        quant.gptq(w, x[:, :10], s)
    with pytest.raises(ValueError, match="x: contains 1 non-finite"):
        quant.gptq(w, np.where(np.arange(x.size).reshape(x.shape) == 3, np.nan, x), s)
    with pytest.raises(ValueError, match="group_size: 48 does not divide"):
        quant.gptq(w, x, quant.SignMagnitudeInt4(group_size=48))
    with pytest.raises(ValueError, match="x: needs at least one calibration token"):
        quant.clip(w, s, x[:0])
    with pytest.raises(ValueError, match="damp"):
        quant.gptq(w, x, s, damp=0.0)
    with pytest.raises(ValueError, match="axis=0"):
        quant.gptq(w, x, quant.SignMagnitudeInt4(group_size=8, axis=1))
    with pytest.raises(ValueError, match="w: contains"):
        quant.awq(np.full_like(w, np.inf), x, s)


def test_streamed_statistics_give_the_same_result():
    """Calibration statistics accumulated window by window == the activations at once."""
    x, w = calibration(4)
    scheme = SCHEMES["int4"]
    stats = quant.Calibration.of(x[:100]).add(x[100:])
    assert int(stats.tokens) == x.shape[0]
    a, b = quant.gptq(w, x, scheme), quant.gptq(w, stats, scheme)
    assert np.mean(np.asarray(a.codes) == np.asarray(b.codes)) > 0.99
    qa, sa = quant.awq(w, x, scheme)
    qb, sb = quant.awq(w, stats, scheme)
    np.testing.assert_allclose(sa, sb, rtol=1e-5)
