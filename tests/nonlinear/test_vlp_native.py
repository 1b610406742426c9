"""The native VLP kernel (``mugi_jax/_native/vlp_activation.cc``) equals the XLA path and the
cycle-level simulator bit for bit: every registered function, both builds, both tails, any
group size (1, not dividing the axis, wider than it), FP32 and BF16 inputs with zeros,
subnormals, infinities, NaN payloads and extreme exponents, BF16 and FP32 results, batched
(vmap), differentiated (zero derivative, as the XLA path) and split over threads."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mugi_jax import formats
from mugi_jax import nonlinear as nl
from mugi_jax.nonlinear import functions
from mugi_jax.nonlinear import vlp as _vlp_function  # noqa: F401  (the module is shadowed)
from mugi_jax.sim import simulate_vlp

from .strategies import BF16, bf16_values, vlp_configs

vlp_module = sys.modules["mugi_jax.nonlinear.vlp"]

pytestmark = pytest.mark.skipif(
    not vlp_module.native_available(),
    reason="native kernels unavailable (MUGI_JAX_NATIVE=0 or no C++ compiler)")

SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SHAPES = [(1,), (7,), (3, 5), (2, 3, 9), (4, 1), (2, 300), ()]
ROOT = Path(__file__).resolve().parents[2]


def both_paths(x, fn: str, cfg: nl.VLPConfig, out_dtype: str = "bfloat16"
               ) -> tuple[np.ndarray, ...]:
    """(native, XLA) results as uint16/uint32 bit patterns (groups along the last axis)."""
    got = [np.asarray(nl.vlp(x, fn, cfg, out_dtype=out_dtype, native=native))
           for native in (True, False)]
    view = np.uint32 if out_dtype == "float32" else np.uint16
    return tuple(g.view(view) for g in got)


def fp32_edges(rng: np.random.Generator, n: int) -> np.ndarray:
    """FP32 values hitting every entry rule: halfway cases (ties to even at the BF16 rounding),
    values that round up to the next exponent or to infinity, FP32 subnormals, zeros, infinities,
    NaNs with payloads in the low 16 bits only (they must stay NaN) and random bit patterns."""
    bits = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    base = rng.integers(0x3000, 0x4200, n).astype(np.uint32) << 16
    special = np.array([0x00000000, 0x80000000, 0x00000001, 0x807FFFFF, 0x00800000, 0x7F800000,
                        0xFF800000, 0x7F800001, 0xFF800001, 0x7FC00000, 0x7F80FFFF, 0xFFFFFFFF,
                        0x7F7FFFFF, 0x7F7F8000, 0xFF7F8000, 0x7F7F7FFF, 0x0080FFFF, 0x007F8000,
                        0x3F808000, 0x3F818000, 0x3FFF8000, 0x407FFFFF], dtype=np.uint32)
    kind = rng.integers(0, 5, n)
    tie = base | 0x8000                      # exactly half way: ties to even
    near = base | rng.integers(0x7FF0, 0x8010, n).astype(np.uint32)
    out = np.choose(kind, [bits, tie, near, rng.choice(special, n), base | rng.integers(
        0, 1 << 16, n).astype(np.uint32)])
    return (out ^ (rng.integers(0, 2, n).astype(np.uint32) << 31)).view(np.float32)


@SETTINGS
@given(cfg=vlp_configs(), fn=st.sampled_from(functions.names()), shape=st.sampled_from(SHAPES),
       seed=st.integers(0, 2**31 - 1), fp32=st.booleans(), wide=st.booleans())
def test_native_equals_xla_and_simulator(cfg, fn, shape, seed, fp32, wide):
    rng = np.random.default_rng(seed)
    xb = bf16_values(rng, shape, cfg)
    if fp32:  # FP32 input: entry rounding in the kernel; specials and halfway cases mixed in
        x = xb.astype(np.float32)
        edges = fp32_edges(rng, x.size).reshape(shape)
        x = np.where(rng.random(shape) < 0.3, edges, x).astype(np.float32)
        xb = np.asarray(formats.round_to_bf16(jnp.asarray(x)))
    else:
        x = formats.from_numpy(xb)
    out_dtype = "float32" if wide else "bfloat16"
    native, xla = both_paths(x, fn, cfg, out_dtype)
    np.testing.assert_array_equal(native, xla)
    ref = simulate_vlp(xb.reshape(shape or (1,)), fn, cfg, axis=-1).outputs.view(np.uint16)
    ref = ref.astype(np.uint32) << 16 if wide else ref
    np.testing.assert_array_equal(native.reshape(ref.shape), ref)


@pytest.mark.parametrize("fn", functions.names())
@pytest.mark.parametrize("group,build,tail", [(1, "min", "linear"), (256, "max", "clamp"),
                                              (5, "min", "clamp"), (3, "max", "linear")])
def test_every_bf16_pattern(fn, group, build, tail):
    """All 65536 BF16 patterns in one row (groups of mixed patterns) and sorted by magnitude
    (groups of neighbours: every window bottom occurs), native vs XLA."""
    cfg = nl.VLPConfig(window_group=group, build=build, tail=tail, e_top=1)
    patterns = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    by_magnitude = patterns[np.argsort(patterns & 0x7FFF, kind="stable")]
    for bits in (patterns, by_magnitude.reshape(256, 256)):
        native, xla = both_paths(formats.from_numpy(bits.view(BF16)), fn, cfg)
        np.testing.assert_array_equal(native, xla)


@pytest.mark.parametrize("build", ["max", "min"])
@pytest.mark.parametrize("group", [7, 16, 40, 256])
def test_group_extreme_skips_specials(build, group):
    """Groups whose normal elements lie in a narrow exponent band inside the stored range, plus
    one special each (+-inf, NaN, zero, subnormal): the special must not move the window (an
    infinity would lift a "max" window to the top, a zero or subnormal drop a "min" one to the
    bottom).  Group sizes on the kernel's vector path, its scalar tail, and both."""
    cfg = nl.VLPConfig(window_group=group, build=build, e_top=3, lut_exponents=12, window=4)
    rng = np.random.default_rng(group)
    rows, n = 64, 3 * group + 5
    lo = rng.integers(cfg.e_bottom + 1, cfg.e_top - 2, (rows, n // group + 1))
    e = np.repeat(lo, group, axis=1)[:, :n] + rng.integers(0, 2, (rows, n))
    bits = (rng.integers(0, 2, (rows, n)) << 15) | ((e + 127) << 7) | rng.integers(0, 128, (rows, n))
    specials = np.array([0x7F80, 0xFF80, 0x7FC0, 0xFFC1, 0x7F81, 0x0000, 0x8000, 0x0001, 0x807F])
    for g in range(-(-n // group)):  # one special at a random place in every group
        col = g * group + rng.integers(0, min(group, n - g * group), rows)
        bits[np.arange(rows), col] = rng.choice(specials, rows)
    x = bits.astype(np.uint16).view(BF16)
    native, xla = both_paths(formats.from_numpy(x), "silu", cfg)
    np.testing.assert_array_equal(native, xla)
    np.testing.assert_array_equal(native, simulate_vlp(x, "silu", cfg).outputs.view(np.uint16))
    fp32 = both_paths(jnp.asarray(x.astype(np.float32)), "silu", cfg)  # NaNs made quiet
    np.testing.assert_array_equal(fp32[0], fp32[1])


@pytest.mark.parametrize("build", ["max", "min"])
def test_fp32_entry_rounding_large_and_threaded(build):
    """An input large enough for the kernel to split its groups over threads (2^18 elements,
    groups of 7 that do not divide the rows), FP32 edge cases everywhere; the FP32 result."""
    rng = np.random.default_rng(7)
    x = fp32_edges(rng, 512 * 509).reshape(512, 509)
    cfg = nl.VLPConfig(window_group=7, build=build, e_top=2)
    for out_dtype in ("bfloat16", "float32"):
        native, xla = both_paths(x, "silu", cfg, out_dtype)
        np.testing.assert_array_equal(native, xla)
    # NaN payloads in the low half of FP32 NaNs do not turn them into infinities
    nan = np.asarray(x).view(np.uint32)
    assert np.all(np.isnan(np.asarray(nl.vlp(jnp.asarray(x), "silu", cfg), np.float32))[
        ((nan & 0x7FFFFFFF) > 0x7F800000)])


def test_vmap_and_grad_match_xla_path():
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 40)) * 3
    cfg = nl.VLPConfig(window_group=7)
    for in_axes in (0, 1, 2):
        got = [jax.vmap(lambda v, n=native: nl.vlp(v, "gelu", cfg, native=n), in_axes=in_axes)(x)
               for native in (True, False)]
        np.testing.assert_array_equal(np.asarray(got[0]).view(np.uint16),
                                      np.asarray(got[1]).view(np.uint16))
    grads = [jax.grad(lambda v, n=native: nl.vlp(v, "gelu", cfg, out_dtype="float32",
                                                  native=n).sum())(x)
             for native in (True, False)]
    np.testing.assert_array_equal(grads[0], grads[1])


def test_policy_activation_uses_native_and_equals_xla():
    """``numerics.Nonlinear`` (what the models call) on an FP32 gate, with and without the
    native kernel (``MUGI_JAX_NATIVE=0`` in a subprocess), FP32 result."""
    from mugi_jax import numerics
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 16, 96), jnp.float32) * 4
    unit = numerics.Nonlinear(dataclasses.replace(nl.VLPConfig(), window_group=40),
                              bf16_input=True)
    ours = np.asarray(jax.jit(lambda v: unit.silu(v))(x))
    assert ours.dtype == np.float32
    hlo = jax.jit(lambda v: unit.silu(v)).lower(x).compile().as_text()
    assert "mugi_vlp_activation" in hlo
    code = ("import jax, jax.numpy as jnp, numpy as np, dataclasses, sys\n"
            "from mugi_jax import numerics, nonlinear as nl\n"
            "x = jax.random.normal(jax.random.PRNGKey(3), (2, 16, 96), jnp.float32) * 4\n"
            "unit = numerics.Nonlinear(dataclasses.replace(nl.VLPConfig(), window_group=40),"
            " bf16_input=True)\n"
            "hlo = jax.jit(lambda v: unit.silu(v)).lower(x).compile().as_text()\n"
            "assert 'mugi_vlp_activation' not in hlo\n"
            "sys.stdout.write(np.asarray(unit.silu(x)).view(np.uint32).tobytes().hex())\n")
    env = {**os.environ, "MUGI_JAX_NATIVE": "0", "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = np.frombuffer(bytes.fromhex(proc.stdout), np.uint32).reshape(x.shape)
    np.testing.assert_array_equal(ours.view(np.uint32), theirs)


SHARDED_WORKER = r"""
import os, sys, json, dataclasses, re
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from mugi_jax import nonlinear as nl
rng = np.random.default_rng(0)
rows = []
for mesh_shape in ((2, 4), (1, 8)):
    mesh = Mesh(np.array(jax.devices()).reshape(mesh_shape), ("data", "model"))
    for n, group, build in ((128, 256, "max"), (96, 8, "min"), (40, 6, "max"), (64, 3, "min"),
                            (32, 1, "min")):
        cfg = nl.VLPConfig(window_group=group, build=build, e_top=1)
        x = (rng.standard_normal((8, 8, n)) * 4).astype(np.float32)
        x[0, 0, :5] = [np.inf, np.nan, 0.0, 1e-40, -3e38]
        ref = np.asarray(nl.vlp(x, "silu", cfg, native=False))
        for spec in (P("data", None, "model"), P(None, "model", None)):
            xs = jax.device_put(jnp.asarray(x), NamedSharding(mesh, spec))
            f = jax.jit(lambda v: nl.vlp(v, "silu", cfg))
            hlo = f.lower(xs).compile().as_text()
            got = f(xs)
            rows.append({"case": [mesh_shape, n, group, build, str(spec)],
                         "identical": bool(np.array_equal(np.asarray(got).view(np.uint16),
                                                          ref.view(np.uint16))),
                         "native": "mugi_vlp_activation" in hlo,
                         "all_gather": "all-gather" in hlo,
                         "sharding": str(got.sharding.spec)})
print(json.dumps(rows))
"""


def test_sharded_native_keeps_sharding_and_bits():
    """On 8 simulated devices (subprocess): the activation sharded over rows and over its last
    axis (shards holding whole window groups, and groups straddling shards) equals the
    single-device XLA path bit for bit, keeps its sharding, and no all-gather appears."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SHARDED_WORKER], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(rows) == 20
    for r in rows:
        assert r["identical"] and not r["all_gather"], r
        assert "model" in r["sharding"], r
    assert any(r["native"] for r in rows)
