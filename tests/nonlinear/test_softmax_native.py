"""The native VLP softmax kernel (mugi_jax/_native/softmax.cc) against the XLA path and the NumPy
simulator: bit for bit on every shape, axis, tokens layout, window configuration and special input
the public ``softmax`` accepts.

Three implementations: the C++ kernel, the XLA path (``_vlp_softmax``, the fallback and GPU/TPU
path) and ``mugi_jax.sim.simulate_softmax`` (NumPy, written from the unit's description).  All
three must agree on every bit of every non-NaN output and on which outputs are NaN; a NaN's sign
and payload are not specified (which NaN XLA's row maximum propagates depends on its reduction
order), as everywhere in tests/nonlinear.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mugi_jax import _native, formats
from mugi_jax import nonlinear as nl
from mugi_jax.sim import simulate_softmax

from .strategies import BF16, bf16_values, same_bits_nan_aware, vlp_configs

sm = importlib.import_module("mugi_jax.nonlinear.softmax")
ROOT = Path(__file__).resolve().parents[2]

# Where g++ exists the kernel must build: a broken kernel fails these tests, it does not skip them.
if shutil.which("g++") is None:
    pytest.skip("no g++ on PATH: the native kernel is not built here", allow_module_level=True)

SETTINGS = settings(deadline=None, max_examples=20, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

# FP32 entry patterns: NaNs whose payload would carry into the exponent, values rounding to
# -inf (a mask) or to the largest finite BF16, FP32 subnormals, BF16 ties both ways.
_FP32_EDGES = np.array([0x7F800001, 0xFF800001, 0xFF807FFF, 0xFFFFFFFF, 0x7FC00000, 0xFF7FC000,
                        0xFF7F7FFF, 0x7F7F8000, 0x00000001, 0x80400000, 0xBF808000, 0xBF818000,
                        0xC0A08000, 0xFF800000, 0x7F800000, 0x00800000, 0x80000000],
                       dtype=np.uint32).view(np.float32)
# BF16 NaN payloads (one is the masked-NaN marker's), a signalling NaN, +-inf, extremes, zeros.
_BF16_EDGES = np.array([0x7FC1, 0xFFC1, 0x7F81, 0xFFC5, 0xFF80, 0x7F80, 0xFF7F, 0x7F7F, 0x0080,
                        0x0081, 0x8080, 0x0000, 0x8000, 0x0001, 0x807F], dtype=np.uint16)


def _kernel_available() -> bool:
    return _native.register("softmax", [sm._NATIVE_HANDLER])


def test_kernel_registers():
    assert _kernel_available()


def _native_and_xla(x, cfg, axis, tokens):
    x = jnp.asarray(x)
    native = sm._softmax_jit(x, axis % x.ndim, cfg, tokens, True)
    xla = sm._softmax_jit(x, axis % x.ndim, cfg, tokens, False)
    return formats.to_numpy(native), formats.to_numpy(xla)


def _simulated(x, cfg, axis, tokens):
    """The simulator on the token-major view (window groups = one token's heads)."""
    x = np.moveaxis(np.asarray(x, np.float32), axis, -1)
    shape = x.shape
    x3 = x.reshape((1,) * max(0, 3 - x.ndim) + shape)
    t = tokens or 1
    lead, rows, n = x3.shape[:-2], x3.shape[-2], x3.shape[-1]
    tm = np.swapaxes(x3.reshape(*lead, rows // t, t, n), -3, -2)
    out = simulate_softmax(tm, cfg).outputs
    return np.moveaxis(np.swapaxes(out, -3, -2).reshape(shape), -1, axis)


@st.composite
def configs(draw):
    """The hypothesis VLP configs, plus groups wider than 8 rows and windows covering the whole
    stored range (window == lut_exponents: one possible bottom)."""
    cfg = draw(vlp_configs())
    kind = draw(st.sampled_from(["as drawn", "wide group", "full window"]))
    if kind == "wide group":
        cfg = nl.VLPConfig(**{**cfg.__dict__, "window_group": draw(st.sampled_from([9, 12, 33]))})
    elif kind == "full window":
        cfg = nl.VLPConfig(**{**cfg.__dict__, "window": cfg.lut_exponents})
    return cfg


def _scores(rng, cfg, shape, dtype, p_special, p_mask):
    x = bf16_values(rng, shape, cfg, p_special).astype(np.float32)
    if dtype == "float32":  # off the BF16 grid, plus FP32 edge patterns
        x = (x * (1 + rng.standard_normal(shape).astype(np.float32) * 1e-3)).astype(np.float32)
        x = np.where(rng.random(shape) < p_special, rng.choice(_FP32_EDGES, shape), x)
    else:
        x = np.where(rng.random(shape) < p_special,
                     rng.choice(_BF16_EDGES, shape).view(BF16).astype(np.float32), x)
    x = np.where(rng.random(shape) < p_mask, -np.inf, x).astype(np.float32)
    if x.ndim >= 2 and rng.random() < 0.5:
        x[(0,) * (x.ndim - 2) + (int(rng.integers(x.shape[-2])),)] = -np.inf  # fully masked row
    return x if dtype == "float32" else x.astype(BF16)


@SETTINGS
@given(cfg=configs(), lead=st.sampled_from([(), (1,), (2,), (2, 1)]),
       heads=st.sampled_from([1, 2, 3, 5, 10]), tokens=st.sampled_from([None, 1, 2, 3]),
       n=st.sampled_from([1, 2, 3, 5, 8, 17, 64, 100]), dtype=st.sampled_from(["float32", "bfloat16"]),
       p_special=st.sampled_from([0.0, 0.05, 0.3]), p_mask=st.sampled_from([0.0, 0.2, 0.9]),
       axis_pick=st.integers(0, 3), seed=st.integers(0, 2**31 - 1))
def test_native_equals_xla_path_and_simulator(cfg, lead, heads, tokens, n, dtype, p_special,
                                              p_mask, axis_pick, seed):
    """Any config, (batch..., heads x tokens, n) scores (1-d when lead is () and one row), the
    softmax axis anywhere, FP32 or BF16 input with zeros, subnormals, +-inf, NaN payloads,
    -inf masks and fully masked rows: native == XLA path == simulator (NaN-aware bits)."""
    rng = np.random.default_rng(seed)
    t = tokens or 1
    rows = heads * t
    shape = (n,) if (not lead and rows == 1) else (*lead, rows, n)
    x = _scores(rng, cfg, shape, dtype, p_special, p_mask)
    axis = -1
    if x.ndim > 1:  # move the softmax axis elsewhere; rows stay the last other axis
        axis = axis_pick % x.ndim
        x = np.moveaxis(x, -1, axis)
    tok = tokens if x.ndim > 1 else None
    native, xla = _native_and_xla(x, cfg, axis, tok)
    assert same_bits_nan_aware(native, xla)
    assert same_bits_nan_aware(native, _simulated(x, cfg, axis, tok))
    assert np.all(native.astype(np.float32)[np.asarray(x, np.float32) == -np.inf] == 0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("cfg", [nl.VLPConfig(window_group=2), nl.VLPConfig(build="min", e_top=0),
                                 nl.VLPConfig(window_group=16, tail="linear")])
def test_every_edge_sets_a_row_maximum(cfg, dtype):
    """Each edge pattern alone in its own row (so NaN, +-inf and the extremes each set a row's
    maximum: y = NaN, -inf or inf - inf), rows of 3 tokens, -inf masks, a fully masked row."""
    edges = _FP32_EDGES if dtype == "float32" else _BF16_EDGES.view(BF16).astype(np.float32)
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((len(edges) * 3, 9)) * 4).astype(np.float32)
    x[:, 4] = np.repeat(edges, 3)
    x[:, 7] = -np.inf
    x[5] = -np.inf
    x = x if dtype == "float32" else x.astype(BF16)
    native, xla = _native_and_xla(x, cfg, -1, 3)
    assert same_bits_nan_aware(native, xla)
    assert same_bits_nan_aware(native, _simulated(x, cfg, -1, 3))


def test_quotients_below_the_normal_range_are_flushed():
    """e = bf16(exp(-86)) (normal, about 2^-124) over a sum of about 8: the quotient is
    subnormal and flushed to +0 before the BF16 rounding (unflushed it would round to a nonzero
    BF16 subnormal)."""
    cfg = nl.VLPConfig(mantissa_bits=7, e_top=7, window_group=1)
    x = np.array([[0.0] * 8 + [-86.0, -85.0, -80.0]], np.float32)
    native, xla = _native_and_xla(x, cfg, -1, None)
    ref = _simulated(x, cfg, -1, None)
    assert same_bits_nan_aware(native, xla) and same_bits_nan_aware(native, ref)
    assert native.view(np.uint16)[0, 8] == 0 and native.view(np.uint16)[0, 10] != 0


def test_overflowing_difference_does_not_set_the_window():
    """A y of -inf (finite inputs whose difference overflows) is not a negative normal value:
    it does not take part in its group's window, which here stays low for the other rows' small
    y (a window at the top would clamp them)."""
    cfg = nl.VLPConfig(window_group=4)
    x = np.array([[3.0e38, -3.0e38], [0.0, -0.01], [0.0, -0.02], [0.0, -0.015]], np.float32)
    native, xla = _native_and_xla(x, cfg, -1, None)
    assert same_bits_nan_aware(native, xla)
    assert same_bits_nan_aware(native, _simulated(x, cfg, -1, None))


@pytest.mark.parametrize("build", ["max", "min"])
def test_window_below_the_top(build):
    """Groups whose window is not at the top of the stored range (build "min": a small |y| in
    the group; "max": every |y| small), so that the bottom's table row matters: a window at the
    top would clamp y = -0.02."""
    cfg = nl.VLPConfig(window_group=4, build=build)
    x = np.array([[0.0, -0.02], [0.0, -1.5 if build == "min" else -0.03], [0.0, -0.025],
                  [0.0, -0.5 if build == "min" else -0.04]], np.float32)
    native, xla = _native_and_xla(x, cfg, -1, None)
    assert same_bits_nan_aware(native, xla)
    assert same_bits_nan_aware(native, _simulated(x, cfg, -1, None))
    top = _simulated(x, nl.VLPConfig(window_group=1, build=build, lut_exponents=8), -1, None)
    assert native.view(np.uint16)[0, 1] != top.view(np.uint16)[0, 1]  # the window matters here


def _plain(x, cfg, tokens, ftz_daz, form="permute"):
    """The kernel's ``softmax_vlp_plain`` entry on ``x`` (rows, n), on this thread, with the
    MXCSR FTZ/DAZ bits set or cleared, reading the tables in ``form``: "full" (the full tables
    only), "compact" (gathers from the compact rows) or "permute" (the permute form where the
    configuration has one, else as "compact")."""
    import ctypes

    lib = _native._libraries["softmax"]
    fn = lib.softmax_vlp_plain
    fn.restype = None
    fn.argtypes = ([ctypes.c_void_p, ctypes.c_int] + [ctypes.c_void_p] * 6
                   + [ctypes.c_int64] * 13 + [ctypes.c_int, ctypes.c_int])
    rows, n = x.shape
    heads = rows // tokens
    group = min(cfg.window_group, heads)
    windowed = group > 1 and cfg.lut_exponents != cfg.window
    table = np.ascontiguousarray(sm._softmax_exp_table(cfg, group == 1))
    table_rows = table.size >> 16
    bottom = np.ascontiguousarray(sm._bottom_rows(cfg)) if windowed else None
    compact = rows_of_keys = perm = None
    ranges = (0x80, 0x80, 0, 0, -1, 0, 0)
    if form != "full":
        compact, rows_of_keys, ranges = sm._compact_tables(cfg, group == 1, windowed)
        a_lo, a_hi = ranges[:2]
        if form == "permute" and ranges[4] >= 0:
            perm = compact[table_rows * (a_hi - a_lo + 2) + 1:]
    xs = np.ascontiguousarray(x if x.dtype == np.float32 else x.view(np.uint16))
    out = np.empty(x.shape, np.uint16)

    def ptr(a):
        return None if a is None else a.ctypes.data

    fn(xs.ctypes.data, int(x.dtype == np.float32), out.ctypes.data, ptr(table), ptr(bottom),
       ptr(compact), ptr(rows_of_keys) if windowed else None, ptr(perm), table_rows, *ranges, 1,
       heads, tokens, n, group, int(cfg.build == "max"), int(ftz_daz))
    return out.view(BF16)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_results_do_not_depend_on_the_flush_to_zero_mode(dtype):
    """The kernel with MXCSR FTZ/DAZ off and on gives the XLA path's bits on rows made of
    subnormal corner cases: subnormal inputs (also as a row's maximum), differences r - max that
    are subnormal, and quotients below the normal range (flushed explicitly)."""
    assert _kernel_available()
    tiny = np.float32(2.0 ** -126)
    rows = np.array([
        [0.0] * 8 + [-86.0, -85.0, -80.0, -70.0],                     # subnormal quotients
        [tiny * 1.5, tiny, -tiny, -tiny * 1.25, 0.0, -1.0] + [-2.0] * 6,   # subnormal r - max
        [1e-39, -1e-39, 5e-40, -3.0, -1e-45, 0.0] + [-0.5] * 6,       # subnormal inputs
        [1e-39, -1e-39, -2e-39, -3e-39, -1e-45, -0.0] + [-4e-39] * 6,  # subnormal maximum
    ], np.float32)
    rows = np.tile(rows, (1, 3))  # 36 columns: the kernel's 16- and 32-lane blocks too
    x = rows if dtype == "float32" else rows.astype(BF16)
    for cfg in (nl.VLPConfig(mantissa_bits=7, e_top=7, window_group=1),
                nl.VLPConfig(mantissa_bits=7, e_top=7, window_group=2),
                nl.VLPConfig(window_group=4, build="min", e_top=-100)):
        _, xla = _native_and_xla(x, cfg, -1, 1)
        for mode in (0, 1):
            for form in ("permute", "compact", "full"):
                got = _plain(x, cfg, 1, mode, form)
                np.testing.assert_array_equal(got.view(np.uint16), xla.view(np.uint16),
                                              err_msg=f"{cfg} ftz_daz={mode} {form}")


def test_other_float_dtypes_round_at_entry():
    """float16 / float64 inputs: rounded to BF16 once, as the XLA path does."""
    cfg = nl.VLPConfig(window_group=3)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 13)) * 8
    x[1, 2] = -np.inf
    for dtype in (np.float16, np.float64):
        native, xla = _native_and_xla(x.astype(dtype), cfg, -1, 2)
        np.testing.assert_array_equal(native.view(np.uint16), xla.view(np.uint16))


def test_prefill_shape_and_threads():
    """A prefill-sized input (split over the CPU thread pool; each output computed by one
    work unit): equal to the XLA path, and to itself on repeated calls."""
    cfg = nl.VLPConfig()
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((2, 3 * 96, 96)) * 4).astype(np.float32)
    x = np.where(np.arange(96)[None, :] <= np.tile(np.arange(96), 3)[:, None], x, -np.inf)
    native, xla = _native_and_xla(x.astype(np.float32), cfg, -1, 96)
    np.testing.assert_array_equal(native.view(np.uint16), xla.view(np.uint16))
    again, _ = _native_and_xla(x.astype(np.float32), cfg, -1, 96)
    np.testing.assert_array_equal(native.view(np.uint16), again.view(np.uint16))


def test_vmap_and_public_api():
    """``vmap`` over the public softmax (the kernel's batch axes) and the public entry point
    (which takes the native path here) equal the XLA path."""
    cfg = nl.VLPConfig(window_group=2)
    rng = np.random.default_rng(9)
    x = jnp.asarray((rng.standard_normal((3, 4, 2 * 5, 7)) * 3).astype(np.float32))
    want = formats.to_numpy(sm._softmax_jit(x, 3, cfg, 5, False)).view(np.uint16)
    got = jax.vmap(lambda v: nl.softmax(v, approx=cfg, tokens=5))(x)
    np.testing.assert_array_equal(formats.to_numpy(got).view(np.uint16), want)
    # each call sees one row (1-d): its own window, as with groups of one row
    rows = x.reshape(-1, 7)
    got = jax.vmap(lambda v: nl.softmax(v, approx=cfg))(rows)
    single = nl.VLPConfig(window_group=1)
    want = formats.to_numpy(sm._softmax_jit(rows, 1, single, None, False)).view(np.uint16)
    np.testing.assert_array_equal(formats.to_numpy(got).view(np.uint16), want)


def test_disabled_native_uses_the_xla_path(monkeypatch):
    """``MUGI_JAX_NATIVE=0``: the public softmax traces the XLA path (no custom call)."""
    cfg = nl.VLPConfig(window_group=2)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32))
    hlo_native = jax.jit(lambda v: nl.softmax(v, approx=cfg)).lower(x).as_text()
    monkeypatch.setenv("MUGI_JAX_NATIVE", "0")
    hlo_xla = jax.jit(lambda v: nl.softmax(v, approx=cfg)).lower(x).as_text()
    assert "mugi_softmax_vlp" in hlo_native
    assert "mugi_softmax_vlp" not in hlo_xla


_SHARDED = r"""
import importlib, json, re, sys
import numpy as np, jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from mugi_jax import nonlinear as nl
sm = importlib.import_module("mugi_jax.nonlinear.softmax")
mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
cfg = nl.VLPConfig(window_group=4)
x = (np.random.default_rng(0).standard_normal((8, 4, 6 * 16, 40)) * 4).astype(np.float32)
x[..., 30:] = -np.inf
out = {}
for name, spec in (("data", P("data")), ("data-model", P("data", "model")), ("rows", P(None, None, "data"))):
    xs = jax.device_put(x, NamedSharding(mesh, spec))
    res = {}
    for native in (True, False):
        f = jax.jit(lambda v: sm._softmax_jit(v, 3, cfg, 16, native))
        hlo = f.lower(xs).compile().as_text()
        res[native] = np.asarray(f(xs)).view(np.uint16)
        if native:
            out[name] = {"collectives": len(re.findall(r"= \S+ (all-gather|all-to-all|collective-permute|all-reduce)\(", hlo)),
                         "custom_call": "mugi_softmax_vlp" in hlo}
    out[name]["same"] = bool(np.array_equal(res[True], res[False]))
json.dump(out, open(sys.argv[1], "w"))
"""


def test_sharded_batch_keeps_its_sharding(tmp_path):
    """On 8 simulated devices: a batch sharded over data (and model) runs the kernel per shard
    with no collective; rows sharded are gathered once; bits equal the XLA path's."""
    script = tmp_path / "sharded.py"
    script.write_text(_SHARDED)
    out = tmp_path / "out.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())
    for name in ("data", "data-model"):
        assert res[name] == {"collectives": 0, "custom_call": True, "same": True}, (name, res)
    assert res["rows"]["same"] and res["rows"]["custom_call"]
    assert res["rows"]["collectives"] == 1  # the one all-gather of the rows
