"""GGUF Q4_1 weights run on the Mugi array exactly as stored: the file's own codes, scales and
minima (``quant.from_q4_1``, decoded from the block layout) go through the offset decomposition
(3-bit array, 9-cycle sweep) and the exact mode equals the cycle-level simulator bit for bit.
Blocks are written by PyPI ``gguf`` (its Q4_1 quantizer) and read from the real SmolLM2 file."""

from __future__ import annotations

import numpy as np
import pytest
from gemm_testlib import activations, first_diff, same_bits

from mugi_jax import gemm, quant, sim

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402
from gguf.quants import quantize as gguf_quantize  # noqa: E402

Q4_1 = gguf.GGMLQuantizationType.Q4_1
DP = gemm.Mugi(rows=8, cols=4, magnitude_bits=3)


def _check_runs_as_stored(raw: np.ndarray, n_in: int, seed: int) -> None:
    qt = quant.from_q4_1(raw, n_in)
    assert qt.scheme == quant.AsymUInt4(group_size=32, axis=0, scale_dtype="float16")
    # the codes are the file's: dequantizing gives gguf's own dequantization exactly
    ref = gguf_dequantize(raw, Q4_1).reshape(raw.shape[0], n_in).T
    np.testing.assert_array_equal(np.asarray(quant.dequantize(qt, np.float32)), ref)
    a = activations(seed, (5, n_in), specials=False)
    out = gemm.matmul(a, qt, DP, mode="exact")
    res = sim.simulate_gemm(a, qt, DP, early_termination=True)
    assert same_bits(out, res.out), first_diff(out, res.out)
    # the offset-decomposed sweep reaches |q - 8| = 8: up to 9 cycles per k-step
    assert int(np.max(np.asarray(gemm.subscription_cycles(qt, DP, early_termination=True)))) <= 9
    from mugi_jax.gemm.cycles import full_sweep

    assert full_sweep(DP, qt.scheme) == 9
    # and it computes a @ W of the stored weights (float64 reference, BF16 product rounding)
    exact = np.asarray(a, np.float64) @ ref.astype(np.float64)
    np.testing.assert_allclose(np.asarray(out), exact, rtol=2e-2, atol=2e-2 * np.abs(exact).max())


def test_synthetic_q4_1_blocks_written_by_gguf():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((12, 96)) * 0.05).astype(np.float32)  # (out, in), as GGUF stores
    w[:, 7] *= 20.0  # an outlier input channel
    w[3, 32:64] = 0.0  # an all-zero block
    raw = gguf_quantize(w, Q4_1)
    assert raw.dtype == np.uint8 and raw.shape == (12, 96 // 32 * 20)
    _check_runs_as_stored(raw, 96, seed=1)


def test_a_slice_of_the_real_smollm2_q4_1_tensor():
    from mugi_jax import data

    try:
        path = data.model_path("smollm2", fetch_missing=False)
    except Exception:  # noqa: BLE001 - not fetched here
        pytest.skip("SmolLM2 GGUF not fetched (mugi-jax data fetch smollm2)")
    reader = gguf.GGUFReader(str(path))
    t = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    assert t.tensor_type == Q4_1
    raw = np.asarray(t.data)[:16, : 2 * 20]  # 16 output channels, their first 64 inputs
    _check_runs_as_stored(raw, 64, seed=2)


def test_bad_q4_1_bytes_name_the_argument():
    with pytest.raises(ValueError, match="n_in"):
        quant.from_q4_1(np.zeros((2, 40), np.uint8), 96)
    with pytest.raises(ValueError, match="raw"):
        quant.from_q4_1(np.zeros((2, 40), np.float32), 64)
