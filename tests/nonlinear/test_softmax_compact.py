"""The native softmax kernel's compact tables (``_compact_tables``): the short per-row tables it
reads instead of the 65536-entry exp table, and their permute form (in-register word permutes).

The compact forms are derived from the full tables; here they are read back with the index
rules written out again (not the module's code) and compared with the full tables on every
code the kernel reads them for, and the kernel is run on the forms each configuration gets
(permute form with one and two permute pairs, gathers when the rows are not functions of the
M-bit rounded magnitude, the full tables when there is no compact form) against the XLA path
and the NumPy simulator.
"""

from __future__ import annotations

import importlib
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from mugi_jax import _native, formats
from mugi_jax import nonlinear as nl
from mugi_jax.sim import simulate_softmax

from .strategies import BF16, same_bits_nan_aware

sm = importlib.import_module("mugi_jax.nonlinear.softmax")

if shutil.which("g++") is None:
    pytest.skip("no g++ on PATH: the native kernel is not built here", allow_module_level=True)

# (config, permute form expected): M = 3 with the clamp tail (the presets' units: 94 - 96
# slots, two permute pairs), M = 1 (25 slots, one pair), the linear tail and M = 7 (rows vary
# with every mantissa bit: gathers from the compact table)
CONFIGS = [
    (nl.VLPConfig(), True),
    (nl.VLPConfig(e_top=4, build="min"), True),
    (nl.VLPConfig(mantissa_bits=1, window_group=3), True),
    (nl.VLPConfig(tail="linear"), False),
    (nl.VLPConfig(mantissa_bits=7, e_top=7), False),
]


def _regular_codes() -> np.ndarray:
    return np.concatenate([[0], np.arange(0x8000, 0xFF81)])


@pytest.mark.parametrize("cfg,permute", CONFIGS)
@pytest.mark.parametrize("single", [True, False])
def test_compact_forms_read_back_the_full_tables(cfg, permute, single):
    """Every regular code (+0 and 0x8000 | a, a <= 0x7F80) reads its full-table entry through
    the compact rows and, where present, the permute slots; every window key the kernel meets
    (negative normal codes, the empty group's fill) maps to its bottom row."""
    windowed = not single and cfg.lut_exponents != cfg.window
    compact, rows_of_keys, (a_lo, a_hi, k_lo, k_hi, shift, ra_lo, ra_hi) = sm._compact_tables(
        cfg, single, windowed)
    full = np.asarray(sm._softmax_exp_table(cfg, single)).reshape(-1, 1 << 16)
    nrows = full.shape[0]
    z = _regular_codes()
    a = z & 0x7FFF
    width = a_hi - a_lo + 2
    assert width < 2100  # about 1500 entries a row for these units, against 65536
    index = np.where(a < 0x80, 0, np.minimum(np.maximum(a, a_lo), a_hi) - a_lo + 1)
    for r in range(nrows):
        np.testing.assert_array_equal(compact[r * width + index], full[r, z])
    assert (shift >= 0) == permute
    if permute:
        slots = compact[nrows * width + 1:].reshape(nrows, 128)
        half = (1 << (shift - 1)) - 1 if shift else 0
        ra = (a + half + ((a >> shift) & 1)) >> shift
        slot = np.where(a < 0x80, 0, np.minimum(np.maximum(ra, ra_lo), ra_hi) - ra_lo + 1)
        assert slot.max() < 128
        for r in range(nrows):
            np.testing.assert_array_equal(slots[r, slot], full[r, z])
    if windowed:
        bottom = sm._bottom_rows(cfg)
        keys = np.append(np.arange(0x8080, 0xFF80), 0 if cfg.build == "max" else 0xFFFF)
        got = rows_of_keys[np.minimum(np.maximum(keys, k_lo), k_hi) - k_lo]
        np.testing.assert_array_equal(got, bottom[keys])


def _simulated(x, cfg, tokens):
    t = tokens
    lead, rows, n = x.shape[:-2], x.shape[-2], x.shape[-1]
    tm = np.swapaxes(np.asarray(x, np.float32).reshape(*lead, rows // t, t, n), -3, -2)
    out = simulate_softmax(tm, cfg).outputs
    return np.swapaxes(out, -3, -2).reshape(x.shape)


def _scores(seed, shape, dtype):
    """Rows long enough for whole 32-lane blocks, with the codes that leave the compact path
    inside them: NaN (y NaN), -inf (masked), +inf (inf - inf), subnormals, y = -0."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 6).astype(np.float32)
    specials = np.array([np.nan, -np.inf, np.inf, 1e-40, -0.0, -3e38], np.float32)
    pick = rng.random(shape) < 0.04
    x[pick] = rng.choice(specials, int(pick.sum()))
    x[..., 1, :] = np.where(rng.random(shape[-1]) < 0.5, -np.inf, x[..., 1, :])
    x[..., 2, :] = -np.inf  # fully masked
    return x if dtype == "float32" else x.astype(BF16)


@pytest.mark.parametrize("case", range(len(CONFIGS)))
def test_kernel_on_each_form_equals_xla_path_and_simulator(case):
    """The kernel on the form each configuration gets, FP32 and BF16 inputs, single-row tables
    (9 tokens: one head a group) and windowed groups of 3 heads: XLA path and simulator bits."""
    assert _native.register("softmax", [sm._NATIVE_HANDLER])
    cfg = CONFIGS[case][0]
    dtype = ("float32", "bfloat16")[case % 2]
    tokens = (3, 9)[case // 2 % 2]
    x = _scores(7 + case, (1, 9, 100), dtype)
    xj = jnp.asarray(x)
    native = formats.to_numpy(sm._softmax_jit(xj, 2, cfg, tokens, True))
    xla = formats.to_numpy(sm._softmax_jit(xj, 2, cfg, tokens, False))
    assert same_bits_nan_aware(native, xla)
    assert same_bits_nan_aware(native, _simulated(x, cfg, tokens))


def test_full_tables_when_there_is_no_compact_form(monkeypatch):
    """Without a compact form (``_compact_tables`` None: a table that does not compress) the
    kernel reads the full tables, with the same bits."""
    assert _native.register("softmax", [sm._NATIVE_HANDLER])
    cfg = nl.VLPConfig(window_group=3)
    x = jnp.asarray(_scores(3, (2, 9, 70), "float32"))
    want = formats.to_numpy(sm._softmax_jit(x, 2, cfg, 3, False))
    monkeypatch.setattr(sm, "_compact_tables", lambda *args: None)
    sm._native_fn.cache_clear()
    got = formats.to_numpy(sm._softmax_jit.__wrapped__(x, 2, cfg, 3, True))
    sm._native_fn.cache_clear()
    assert same_bits_nan_aware(got, want)


def test_masked_scaled_rows_on_the_permute_form():
    """Scaled, masked decode-like rows (left padding, 4096 keys, FP32 out) as the decoder hands
    them over: the XLA path's bits."""
    cfg = nl.VLPConfig(e_top=4)
    rng = np.random.default_rng(4)
    x = jnp.asarray((rng.standard_normal((2, 3, 3, 4096)) * 24).astype(np.float32))
    mask = jnp.asarray(np.arange(4096)[None, None, None, :] >= np.array([0, 700])[:, None, None,
                                                                          None])
    args = dict(axis=-1, approx=cfg, tokens=1, scale=0.125, mask=mask, out_dtype="float32")
    native = formats.to_numpy(nl.softmax(x, **args))
    xla = formats.to_numpy(sm._softmax_jit(x, 3, cfg, 1, False, jnp.float32(0.125), mask,
                                           "float32"))
    np.testing.assert_array_equal(native.view(np.uint32), xla.view(np.uint32))


@pytest.mark.parametrize("cfg", [nl.VLPConfig(), nl.VLPConfig(lut_exponents=9, window_group=3)])
@pytest.mark.parametrize("out_dtype", ["bfloat16", "float32"])
def test_long_rows_divide_by_quotient_tables(cfg, out_dtype):
    """Rows of 600 keys with one or two table rows (a single-row table; windows of 2 rows): the
    kernel divides by per-row quotient tables of the permute slots (special lanes by their own
    division), with and without a live span (left padding): XLA path and simulator bits."""
    assert _native.register("softmax", [sm._NATIVE_HANDLER])
    x = _scores(5, (2, 3, 600), "float32")
    x[0, 0, :77] = -np.inf  # a live span starting inside a block
    xj = jnp.asarray(x)
    native = formats.to_numpy(sm._softmax_jit(xj, 2, cfg, 1, True, out_dtype=out_dtype))
    xla = formats.to_numpy(sm._softmax_jit(xj, 2, cfg, 1, False, out_dtype=out_dtype))
    native, xla = native.astype(BF16), xla.astype(BF16)  # FP32 out holds BF16 values: exact
    assert same_bits_nan_aware(native, xla)
    assert same_bits_nan_aware(native, _simulated(x, cfg, 1))
