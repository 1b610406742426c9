"""SmolLM2-135M on SOTU: the JAX model (exact numerics) against an independent NumPy forward pass.

The reference below reads the GGUF with PyPI ``gguf`` directly and implements the Llama forward
pass from scratch (it shares no code with ``mugi_jax.models``): float32 GEMMs, float64 norms,
RoPE, softmax and log-softmax.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytestmark = pytest.mark.slow

CONTEXT = 512
# two whole windows: the windowing and every position of a 512-token context are covered, at a
# quarter of the forward passes (JAX and NumPy) of the earlier 4096 tokens (suite time)
MAX_TOKENS = 1024


def _reference_weights(path):
    import gguf

    r = gguf.GGUFReader(str(path))
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.")}
    w = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32) for t in r.tensors}
    return meta, w


def _rms(x, g, eps):
    x = x.astype(np.float64)
    return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g).astype(np.float32)


def _rope(x, theta):
    # x: (T, H, D); llama.cpp layout: rotate adjacent pairs (x[2i], x[2i+1])
    t, _, d = x.shape
    freq = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = np.arange(t, dtype=np.float64)[:, None] * freq[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., 0::2].astype(np.float64), x[..., 1::2].astype(np.float64)
    out = np.empty(x.shape, np.float64)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out.astype(np.float32)


def _reference_logits(meta, w, ids):
    nl = int(meta["llama.block_count"])
    nh = int(meta["llama.attention.head_count"])
    nkv = int(meta["llama.attention.head_count_kv"])
    eps = float(meta["llama.attention.layer_norm_rms_epsilon"])
    theta = float(meta["llama.rope.freq_base"])
    emb = w["token_embd.weight"]
    x = emb[ids]
    t, d = x.shape
    hd = d // nh
    causal = np.tril(np.ones((t, t), bool))
    for i in range(nl):
        p = f"blk.{i}."
        h = _rms(x, w[p + "attn_norm.weight"], eps)
        q = _rope((h @ w[p + "attn_q.weight"].T).reshape(t, nh, hd), theta)
        k = _rope((h @ w[p + "attn_k.weight"].T).reshape(t, nkv, hd), theta)
        v = (h @ w[p + "attn_v.weight"].T).reshape(t, nkv, hd)
        heads = []
        for j in range(nh):
            kv = j // (nh // nkv)
            s = (q[:, j, :] @ k[:, kv, :].T).astype(np.float64) / math.sqrt(hd)
            s = np.where(causal, s, -np.inf)
            s = np.exp(s - s.max(axis=1, keepdims=True))
            pr = (s / s.sum(axis=1, keepdims=True)).astype(np.float32)
            heads.append(pr @ v[:, kv, :])
        x = x + np.concatenate(heads, axis=1) @ w[p + "attn_output.weight"].T
        h = _rms(x, w[p + "ffn_norm.weight"], eps)
        g = (h @ w[p + "ffn_gate.weight"].T).astype(np.float64)
        u = h @ w[p + "ffn_up.weight"].T
        act = (g / (1.0 + np.exp(-g))).astype(np.float32) * u
        x = x + act @ w[p + "ffn_down.weight"].T
    x = _rms(x, w["output_norm.weight"], eps)
    head = w.get("output.weight", emb)
    return x @ head.T


def _nll(logits, ids):
    lg = logits[:-1].astype(np.float64)
    m = lg.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(lg - m).sum(axis=1, keepdims=True)))[:, 0]
    return lse - lg[np.arange(len(ids) - 1), ids[1:]]


@pytest.fixture(scope="module")
def smollm2():
    from mugi_jax import models

    return models.load("smollm2-135m")


def test_exact_perplexity_matches_numpy_reference(smollm2):
    import jax.numpy as jnp

    from mugi_jax import data, eval as ev, models

    model, tok, cfg = smollm2
    ids = ev.corpus_tokens(tok, data.corpus_text("sotu"), MAX_TOKENS)
    assert len(ids) == MAX_TOKENS
    ours = ev.perplexity(model, ids, "exact", context=CONTEXT, max_tokens=MAX_TOKENS)
    assert ours["predicted_tokens"] == (MAX_TOKENS // CONTEXT) * (CONTEXT - 1)

    meta, w = _reference_weights(data.model_path("smollm2"))
    windows = np.asarray(ids, np.int64).reshape(-1, CONTEXT)
    nll = []
    for n, win in enumerate(windows):
        ref_logits = _reference_logits(meta, w, win)
        if n == 0:  # logits of the first window, all positions and the whole vocabulary
            jax_logits, _ = models.forward(model, jnp.asarray(win[None], jnp.int32), "exact")
            diff = np.abs(np.asarray(jax_logits[0]) - ref_logits).max()
            assert diff < 1e-3, f"max |logit difference| {diff}"
        nll.append(_nll(ref_logits, win))
    ref_ppl = math.exp(np.concatenate(nll).mean())
    assert abs(ours["ppl"] / ref_ppl - 1) < 1e-3, (ours["ppl"], ref_ppl)
    assert 15 < ref_ppl < 40  # a plausible range for a 135M model on SOTU at context 512 (27.9)


def test_greedy_generation_cached_equals_uncached_real_model(smollm2):
    from mugi_jax import models

    model, tok, _ = smollm2
    sampler = models.Sampler(model, tok, "exact")
    prompts = ["The capital of France is", "Mr. Speaker, the state of our union"]
    a = sampler(prompts, max_new_tokens=8)
    b = sampler(prompts, max_new_tokens=8, use_cache=False)
    c = sampler(prompts, max_new_tokens=8)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.tokens, c.tokens)
    assert all(isinstance(t, str) and t for t in a.text)
    # a single prompt gives the same continuation as inside the (left-padded) batch
    single = sampler(prompts[:1], max_new_tokens=8)
    np.testing.assert_array_equal(single.tokens[0], a.tokens[0])
