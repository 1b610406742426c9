"""Weight residency (``prepare(model, policy, residency)``, ``--weight-residency``): ``int4`` and
``bf16`` under ``mugi`` give the prepared model's logits bit for bit (``int4`` with fewer resident bytes);
``bf16`` under ``exact`` is the model with every projection weight rounded to BF16."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mugi_jax import gemm, numerics, quant
from mugi_jax.gemm import decode
from mugi_jax.models import forward, prepare
from mugi_jax.models.llama import resident_bytes


def _tokens(vocab):
    return jax.random.randint(jax.random.key(4), (1, 6), 0, vocab)


def test_mugi_residencies_are_bit_identical_and_smaller(tiny_model):
    policy = numerics.preset("mugi")
    toks = _tokens(tiny_model.config.vocab_size)
    ready = prepare(tiny_model, policy)
    want, _ = forward(ready, toks, policy)
    for residency in ("int4", "bf16"):
        held = prepare(tiny_model, policy, residency)
        got, _ = forward(held, toks, policy)
        np.testing.assert_array_equal(got, want)
    # the BF16 head is held in BF16 by every residency; int4 also drops the derived GEMM terms
    assert resident_bytes(prepare(tiny_model, policy, "bf16")) == resident_bytes(ready)
    int4 = prepare(tiny_model, policy, "int4")
    assert resident_bytes(int4) < resident_bytes(ready)
    assert isinstance(int4.layers[0].mlp.up_proj.kernel.get_value(), quant.QuantizedTensor)
    assert ready.lm_head.kernel.get_value().dtype == jnp.bfloat16


def _rounded_reference(tiny_model):
    """The ``exact`` model with every projection and LM-head weight rounded to BF16 beforehand
    (FP32-held), prepared as usual."""
    rounded = nnx.clone(tiny_model)
    for block in rounded.layers:
        for lin in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj, block.attn.o_proj,
                    block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj):
            lin.kernel = nnx.Param(lin.kernel[...].astype(jnp.bfloat16).astype(jnp.float32))
    ref = prepare(rounded, "exact")
    ref.lm_head.kernel = nnx.Param(ref.lm_head.kernel[...].astype(jnp.bfloat16).astype(jnp.float32))
    return ref


def test_exact_bf16_residency_rounds_the_weights_once(tiny_model, monkeypatch):
    """On the XLA path (``MUGI_JAX_NATIVE=0``) ``bf16`` is the model with its weights rounded to
    BF16 beforehand, bit for bit; the native decode path (few rows) differs from it only in the
    FP32 accumulation order (the kernel's bound is tested below)."""
    toks = _tokens(tiny_model.config.vocab_size)
    held = prepare(tiny_model, "exact", "bf16")
    want, _ = forward(_rounded_reference(tiny_model), toks, "exact")
    monkeypatch.setenv("MUGI_JAX_NATIVE", "0")
    jax.clear_caches()
    got, _ = forward(held, toks, "exact")
    np.testing.assert_array_equal(got, want)
    monkeypatch.delenv("MUGI_JAX_NATIVE")
    jax.clear_caches()
    native, _ = forward(held, toks, "exact")
    np.testing.assert_allclose(native, want, rtol=1e-4, atol=1e-4)
    fp32, _ = forward(prepare(tiny_model, "exact"), toks, "exact")
    assert not np.array_equal(got, fp32)  # an opt-in change of numerics
    assert resident_bytes(held) < resident_bytes(prepare(tiny_model, "exact"))


# --- the native decode kernel (mugi_jax/_native/decode_gemv.cc via gemm.bf16_weight_matmul) ---

needs_native = pytest.mark.skipif(not decode.native_available(),
                                  reason="native decode kernel unavailable (no g++ or disabled)")


def _operands(m, k, n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = jnp.asarray(rng.standard_normal((k, n)), jnp.bfloat16)
    return x, w, np.asarray(w.astype(jnp.float32), np.float64)


def _bound(x, w64):
    """gamma_K * sum_k |x w|: the error bound of a K-term FP32 dot product accumulated in any
    order with at most K roundings (the products are exact in an FMA, or rounded once and then
    added: still K roundings in the K-term recurrence) - Higham, Accuracy and Stability of
    Numerical Algorithms, (3.5)."""
    k = x.shape[-1]
    u = 2.0 ** -24
    flushed = k * 2.0 ** -126  # each step may flush a subnormal, as XLA:CPU's arithmetic does
    return (k * u / (1 - k * u)) * (np.abs(x.astype(np.float64)) @ np.abs(w64)) + flushed


def _fma_recurrence(x, w64):
    """The kernel's documented numerics written independently in NumPy: per output, acc = fma(x_k,
    w_k, acc) for k in increasing order, rounded to FP32 at each step (the product of an FP32 and
    a BF16 is exact in FP64, and so is its sum with the FP32 accumulator for these operands;
    no subnormals occur)."""
    acc = np.zeros((x.shape[0], w64.shape[1]), np.float32)
    for k in range(x.shape[1]):
        acc = (acc.astype(np.float64) + x[:, k:k + 1].astype(np.float64) * w64[k]).astype(np.float32)
    return acc


SHAPES = [(1, 576, 192), (1, 5, 1), (3, 37, 19), (8, 300, 77), (2, 1, 130), (1, 33, 1000)]


@needs_native
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_native_decode_gemv_within_the_fp32_bound(m, k, n):
    x, w, w64 = _operands(m, k, n)
    got = np.asarray(jax.jit(decode._native_call)(x, w))
    exact = x.astype(np.float64) @ w64
    bound = _bound(x, w64)
    assert np.all(np.abs(got - exact) <= bound)
    np.testing.assert_array_equal(got, _fma_recurrence(x, w64))
    xla = np.asarray(jax.jit(decode._xla)(x, w))
    assert np.all(np.abs(got - xla) <= 2 * bound)  # the two paths differ in the order only


@needs_native
def test_native_decode_gemv_deterministic_across_calls_and_threads():
    x, w, _ = _operands(3, 200, 5000, seed=1)  # large enough for the pool (>= 2^21 products)
    ref = np.asarray(jax.jit(decode._native_call, static_argnums=2)(x, w, 1))
    for threads in (0, 2, 3, 7):
        f = jax.jit(decode._native_call, static_argnums=2)
        for _ in range(2):
            np.testing.assert_array_equal(np.asarray(f(x, w, threads)), ref)


@needs_native
def test_native_decode_gemv_special_values():
    x, w, w64 = _operands(2, 40, 21, seed=2)
    x[0, 3] = np.inf  # +-inf in the columns where w[3] != 0, NaN where it is 0
    x[1, 5] = np.nan
    w = w.at[3, 4].set(0.0).at[7, 9].set(jnp.inf)
    got = np.asarray(jax.jit(decode._native_call)(x, w))
    xla = np.asarray(jax.jit(decode._xla)(x, w))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(xla))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(xla))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(xla))
    assert np.isnan(got[1]).all() and np.isnan(got[0, 4])
    # subnormals flushed to zero as XLA:CPU flushes them: results (2^-70 * 2^-70 = 2^-140) and
    # inputs (2^-130); 2^-60 * 2^-60 * 3 = 3 * 2^-120 stays
    for xv, wv, want in ((2.0 ** -70, 2.0 ** -70, 0.0), (2.0 ** -130, 1.0, 0.0),
                         (2.0 ** -60, 2.0 ** -60, 3 * 2.0 ** -120)):
        xs, ws = np.full((1, 3), xv, np.float32), jnp.full((3, 2), wv, jnp.bfloat16)
        for f in (decode._native_call, decode._xla):
            np.testing.assert_array_equal(np.asarray(jax.jit(f)(xs, ws)), np.full((1, 2), want, np.float32))
    zero_k = np.asarray(jax.jit(decode._native_call)(np.zeros((1, 0), np.float32),
                                                     jnp.zeros((0, 3), jnp.bfloat16)))
    np.testing.assert_array_equal(zero_k, np.zeros((1, 3), np.float32))


@needs_native
def test_bf16_weight_matmul_picks_the_native_path_for_decode_steps(monkeypatch):
    w = jnp.zeros((16, 24), jnp.bfloat16)

    def lowered(rows):
        x = jnp.zeros((rows, 16))
        jax.clear_caches()  # the choice is made at trace time
        return jax.jit(gemm.bf16_weight_matmul).lower(x, w).as_text()

    assert "mugi_decode_gemv" in lowered(1) and "mugi_decode_gemv" in lowered(decode.NATIVE_MAX_ROWS)
    assert "mugi_decode_gemv" not in lowered(decode.NATIVE_MAX_ROWS + 1)  # prefill: XLA's dot
    monkeypatch.setenv("MUGI_JAX_NATIVE", "0")
    assert "mugi_decode_gemv" not in lowered(1)


def test_bf16_weight_gemm_holds_bf16_and_rounds_an_unprepared_kernel_alike(monkeypatch):
    """A BF16-weight GEMM (the ``mugi`` LM head) holds its prepared kernel in BF16, so a call
    does not round the kernel again; an unprepared FP32 kernel is rounded in the call and gives
    the same bits, on the native decode path (few rows) and on the XLA path (many rows)."""
    head = numerics.Gemm(bf16_activations=True, bf16_weights=True)
    w = jax.random.normal(jax.random.key(7), (64, 96), jnp.float32)
    held = head.prepare_weight(w)
    assert held.dtype == jnp.bfloat16
    np.testing.assert_array_equal(held.astype(jnp.float32), w.astype(jnp.bfloat16).astype(jnp.float32))
    seen = []
    real = decode.bf16_weight_matmul
    monkeypatch.setattr(gemm, "bf16_weight_matmul", lambda x, v: seen.append(v.dtype) or real(x, v))
    for rows in (1, 3, 40):
        x = jax.random.normal(jax.random.key(rows), (rows, 64), jnp.float32)
        got = head.matmul(x, held)
        np.testing.assert_array_equal(got, head.matmul(x, w))
        xb = x.astype(jnp.bfloat16).astype(jnp.float32)
        np.testing.assert_array_equal(got, real(xb, held))
    assert seen == [jnp.bfloat16] * 6


def test_bad_residency(tiny_model):
    with pytest.raises(ValueError, match="keeps no INT4"):
        prepare(tiny_model, "exact", "int4")
    with pytest.raises(ValueError, match="must be one of prepared, bf16, int4"):
        prepare(tiny_model, "exact", "fp8")


def test_cli_int4_residency_needs_an_int4_preset():
    from typer.testing import CliRunner

    from mugi_jax.cli import app
    from mugi_jax.cli._common import CliError

    r = CliRunner().invoke(app, ["generate", "--prompt", "x", "--weight-residency", "int4"])
    assert isinstance(r.exception, CliError)  # exit code 2 at the command line
    assert "--weight-residency int4: numerics 'exact' keeps no INT4" in str(r.exception)


_SHARDED_SCRIPT = r'''
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from mugi_jax import gemm, mesh as meshlib
from mugi_jax.gemm import decode
from mugi_jax.models import Llama, forward, prepare, sharding
from mugi_jax.models.config import LlamaConfig
from mugi_jax.models.llama import _forward

assert decode.native_available()
mesh = meshlib.make_mesh("data=2,model=4")
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 1, 96)).astype(np.float32)
w = jnp.asarray(rng.standard_normal((96, 160)), jnp.bfloat16)
w64 = np.asarray(w.astype(jnp.float32), np.float64)
one = np.asarray(jax.jit(decode._native_call)(x, w))
bound = 96 * 2.0 ** -24 / (1 - 96 * 2.0 ** -24) * (np.abs(x.astype(np.float64)) @ np.abs(w64))
exact = x.astype(np.float64) @ w64
for name, xs, ws in (("col", P("data"), P(None, "model")), ("row", P("data", None, "model"),
                     P("model", None)), ("rep", P(), P())):
    f = jax.jit(gemm.bf16_weight_matmul)
    args = (jax.device_put(x, NamedSharding(mesh, xs)), jax.device_put(w, NamedSharding(mesh, ws)))
    hlo = f.lower(*args).compile().as_text()
    y = np.asarray(f(*args))
    assert "mugi_decode_gemv" in hlo and "all-gather" not in hlo, name
    if name == "row":  # four partial sums added by a psum
        assert "all-reduce" in hlo and np.all(np.abs(y - exact) <= bound)
    else:
        np.testing.assert_array_equal(y, one)

cfg = LlamaConfig(vocab_size=128, dim=32, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=8,
                  ffn_dim=64, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=True,
                  max_seq_len=64, bos_id=1, eos_id=2)
model = Llama(cfg, rngs=nnx.Rngs(0))
toks = jnp.asarray([[5], [9]], jnp.int32)
want, _ = forward(prepare(model, "exact", "bf16"), toks, "exact")
held = sharding.shard_prepared(model, "exact", mesh, residency="bf16")
got, _ = forward(held, toks, "exact")
np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
graphdef, state = nnx.split(held)
from mugi_jax import numerics
hlo = _forward.lower(graphdef, state, toks, numerics.preset("exact", "llama"), None,
                     None).compile().as_text()
assert "mugi_decode_gemv" in hlo
gathers = [ln for ln in hlo.splitlines() if "all-gather" in ln and "bf16[" in ln]
assert not gathers, gathers[:3]
print("ok")
'''


@needs_native
def test_native_decode_gemv_keeps_weights_sharded(tmp_path):
    """On 8 simulated devices (data=2, model=4): weights split along n (column-parallel) give the
    single-device bits with no collective, along k (row-parallel) a psum of partial sums within
    the FP32 bound, and no BF16 weight is ever all-gathered - also in a sharded model's step."""
    import os
    import subprocess
    import sys

    script = tmp_path / "sharded.py"
    script.write_text(_SHARDED_SCRIPT)
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
