"""Gemma 3 270M: the JAX model (exact numerics) against an independent NumPy forward pass.

The reference reads the GGUF with PyPI ``gguf`` directly and implements Gemma 3 from the format
and the architecture's published facts alone (it shares no code with ``mugi_jax.models``):
embedding x sqrt(640); per layer RMSNorm (the GGUF norm weights already hold Gemma's ``1 + w``)
-> Q/K/V -> RMSNorm on each query/key head -> RoPE on the halves ``(x[i], x[i+128])`` (base 1e4 in
sliding layers, 1e6 in every sixth, global, layer) -> scores x 256^-1/2 with a causal mask that,
in sliding layers, also hides keys 512 or more positions back -> softmax -> O -> RMSNorm ->
residual; RMSNorm -> GeGLU with the tanh GELU -> RMSNorm -> residual; final RMSNorm; tied head.
Float32 GEMMs, float64 norms, RoPE, softmax, GELU and log-softmax.

The text is longer than the 512-token window, so the sliding-window mask is exercised; the
tokenizer is checked against a from-scratch SentencePiece-BPE encoder (llama.cpp's algorithm).
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import pytest

pytestmark = pytest.mark.slow

TOKENS = 600  # > the 512-token sliding window


@pytest.fixture(scope="module")
def gemma():
    from mugi_jax import models

    return models.load("gemma3-270m")


@pytest.fixture(scope="module")
def reference():
    import gguf

    from mugi_jax import data

    r = gguf.GGUFReader(str(data.model_path("gemma3")))
    meta = {k: f.contents() for k, f in r.fields.items()
            if k.startswith("gemma3.") or k in ("tokenizer.ggml.add_space_prefix",)}
    tok = {k: r.fields[k].contents() for k in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                                                "tokenizer.ggml.token_type")}
    w = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32) for t in r.tensors}
    return meta, tok, w


def test_file_facts(reference):
    meta, tok, w = reference
    assert meta["gemma3.block_count"] == 18 and meta["gemma3.embedding_length"] == 640
    assert meta["gemma3.feed_forward_length"] == 2048
    assert meta["gemma3.attention.head_count"] == 4 and meta["gemma3.attention.head_count_kv"] == 1
    assert meta["gemma3.attention.key_length"] == 256 == meta["gemma3.attention.value_length"]
    assert meta["gemma3.attention.sliding_window"] == 512
    assert meta["gemma3.rope.freq_base"] == 1e6
    assert abs(meta["gemma3.attention.layer_norm_rms_epsilon"] - 1e-6) < 1e-12
    assert len(tok["tokenizer.ggml.tokens"]) == 262144
    assert "output.weight" not in w  # tied embeddings
    assert {"blk.0.attn_q_norm.weight", "blk.0.post_attention_norm.weight",
            "blk.0.post_ffw_norm.weight"} <= set(w)
    # the norm weights hold 1 + w: the input norms' multipliers are well above zero
    assert w["blk.0.attn_norm.weight"].min() > 1.0


def _rms(x, g, eps):
    x = x.astype(np.float64)
    return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g).astype(np.float32)


def _rope_halves(x, theta):
    t, _, d = x.shape
    freq = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = np.arange(t, dtype=np.float64)[:, None] * freq[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., : d // 2].astype(np.float64), x[..., d // 2:].astype(np.float64)
    return np.concatenate([a * c - b * s, a * s + b * c], axis=-1).astype(np.float32)


def _gelu_tanh(x):
    x = x.astype(np.float64)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _reference_logits(meta, w, ids):
    n_layers, nh, hd = 18, 4, 256
    eps = float(meta["gemma3.attention.layer_norm_rms_epsilon"])
    window = int(meta["gemma3.attention.sliding_window"])
    emb = w["token_embd.weight"]
    x = emb[ids] * np.float32(math.sqrt(640))
    t = len(ids)
    pos = np.arange(t)
    causal = pos[None, :] <= pos[:, None]
    local = causal & (pos[:, None] - pos[None, :] < window)
    for i in range(n_layers):
        p = f"blk.{i}."
        is_global = (i + 1) % 6 == 0
        theta = 1e6 if is_global else 1e4
        mask = causal if is_global else local
        h = _rms(x, w[p + "attn_norm.weight"], eps)
        q = (h @ w[p + "attn_q.weight"].T).reshape(t, nh, hd)
        k = (h @ w[p + "attn_k.weight"].T).reshape(t, 1, hd)
        v = (h @ w[p + "attn_v.weight"].T).reshape(t, 1, hd)
        q = _rope_halves(_rms(q, w[p + "attn_q_norm.weight"], eps), theta)
        k = _rope_halves(_rms(k, w[p + "attn_k_norm.weight"], eps), theta)
        heads = []
        for j in range(nh):
            s = (q[:, j, :] @ k[:, 0, :].T).astype(np.float64) / 16.0
            s = np.where(mask, s, -np.inf)
            s = np.exp(s - s.max(axis=1, keepdims=True))
            heads.append((s / s.sum(axis=1, keepdims=True)).astype(np.float32) @ v[:, 0, :])
        o = np.concatenate(heads, axis=1) @ w[p + "attn_output.weight"].T
        x = x + _rms(o, w[p + "post_attention_norm.weight"], eps)
        h = _rms(x, w[p + "ffn_norm.weight"], eps)
        g = _gelu_tanh(h @ w[p + "ffn_gate.weight"].T).astype(np.float32)
        f = (g * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
        x = x + _rms(f, w[p + "post_ffw_norm.weight"], eps)
    x = _rms(x, w["output_norm.weight"], eps)
    return x @ emb.T


def _spm_encode(text, tok):
    """SentencePiece BPE as llama.cpp runs it: user-defined pieces matched whole (longest
    first), spaces -> U+2581, then repeatedly merge the adjacent pair whose concatenation is the
    highest-scoring piece (leftmost on ties); unknown characters -> <0xNN> byte pieces."""
    pieces, scores, types = (tok["tokenizer.ggml.tokens"], tok["tokenizer.ggml.scores"],
                             tok["tokenizer.ggml.token_type"])
    vocab = {p: i for i, p in enumerate(pieces)}
    user = sorted((p for p, ty in zip(pieces, types) if ty == 4), key=len, reverse=True)
    out = []

    def bpe(fragment):
        sym = list(fragment.replace(" ", "\u2581"))
        while True:
            best = None
            for a in range(len(sym) - 1):
                m = sym[a] + sym[a + 1]
                i = vocab.get(m)
                if i is not None and types[i] == 1 and (best is None or scores[i] > best[0]):
                    best = (scores[i], a)
            if best is None:
                break
            a = best[1]
            sym[a:a + 2] = [sym[a] + sym[a + 1]]
        for s in sym:
            if s in vocab:
                out.append(vocab[s])
            else:
                out.extend(vocab[f"<0x{b:02X}>"] for b in s.encode("utf-8"))

    start = i = 0
    while i < len(text):
        hit = next((u for u in user if text.startswith(u, i)), None)
        if hit is None:
            i += 1
            continue
        if i > start:
            bpe(text[start:i])
        out.append(vocab[hit])
        i += len(hit)
        start = i
    if start < len(text):
        bpe(text[start:])
    return out


def test_tokenizer_matches_reference_sentencepiece(gemma, reference):
    from mugi_jax import data

    _, tok, _ = gemma
    _, spm, _ = reference
    samples = [data.corpus_text(c)[:1500] for c in ("sotu", "brown", "austen")]
    samples += ["naïve café 日本語 🙂  two  spaces\n\n\ttab", "<start_of_turn>x"]
    for text in samples[:-1]:
        ids = tok.encode(text)
        assert ids == _spm_encode(text, spm), text[:60]
        assert tok.decode(ids) == text
    assert tok.encode("x", bos=True)[0] == 2


def test_exact_logits_and_perplexity_match_numpy_reference(gemma, reference):
    import jax.numpy as jnp

    from mugi_jax import data, eval as ev, models

    model, tok, cfg = gemma
    meta, _, w = reference
    ids = ev.corpus_tokens(tok, data.corpus_text("sotu"), TOKENS)
    ref_logits = _reference_logits(meta, w, np.asarray(ids))
    jax_logits, _ = models.forward(model, jnp.asarray([ids], jnp.int32), "exact")
    diff = np.abs(np.asarray(jax_logits[0]) - ref_logits).max()
    assert diff < 1e-3, f"max |logit difference| {diff}"
    del jax_logits
    nll = []
    for row, target in zip(ref_logits[:-1], ids[1:]):  # row by row: a float64 copy is 2 GB
        lg = row.astype(np.float64)
        m = lg.max()
        nll.append(m + math.log(np.exp(lg - m).sum()) - lg[target])
    ref_ppl = math.exp(np.mean(nll))
    ours = ev.perplexity(model, ids, "exact", context=TOKENS, max_tokens=TOKENS)
    assert ours["predicted_tokens"] == TOKENS - 1
    assert abs(ours["ppl"] / ref_ppl - 1) < 1e-3, (ours["ppl"], ref_ppl)


SMALL_WINDOW = 8  # the real 512 would need > 512-token sequences at every uncached step


def test_greedy_cached_equals_uncached_across_the_window(gemma):
    """Greedy generation on the real Gemma 3 weights is the same on the cached and the uncached
    path across the sliding window (exact numerics).  The window is overridden from 512 to 8 on
    the real weights (sliding layers only; the global layers stay global) so that prompt + output
    cross it many times in a fast test.

    Not under ``mugi``: there the two paths part after a few tokens (default and calibrated VLP
    windows alike, once the softmax's window groups became per query token) because fast-mode
    GEMMs order their FP32 sums by row count - a decode step (1-2 rows) and a re-forward (166
    rows) differ in the last bits, and BF16 / 3-bit VLP / INT4 KIVI rounding amplifies that to
    different tokens (docs/models.md, "Cached and uncached paths").  The window-group cause is
    tested on tiny models (test_softmax_window_groups.py), the KIVI cache's cached == uncached
    on a tiny model (test_kivi.py)."""
    import dataclasses

    from flax import nnx

    from mugi_jax import data, models

    model, tok, cfg = gemma
    small_cfg = dataclasses.replace(cfg, sliding_window=SMALL_WINDOW)
    gd, _ = nnx.split(nnx.eval_shape(lambda: models.Llama(small_cfg)))
    small = nnx.merge(gd, nnx.state(model))  # the real weights, no copy
    ids = tok.encode(data.corpus_text("sotu")[:600])
    prompts = [[cfg.bos_id] + ids[:72], [cfg.bos_id] + ids[10:50]]  # left-padded batch
    s = models.Sampler(small, tok, "exact")
    a = s(prompts, max_new_tokens=10)
    b = s(prompts, max_new_tokens=10, use_cache=False)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert len(set(a.tokens[0].tolist())) > 2  # not a degenerate repetition
    # the small window changes the model (it is really applied)
    x = np.asarray(prompts[0])[None]
    wide = np.asarray(models.forward(model, x, "exact")[0][0, -1])
    narrow = np.asarray(models.forward(small, x, "exact")[0][0, -1])
    assert np.max(np.abs(wide - narrow)) > 1.0


#: exact-preset logits of a cached decode step and of the uncached forward agree to this much
#: (measured 2026-11-30: 3e-5 - 7e-5 per decode step; docs/models.md, "Cached and uncached paths")
CACHED_LOGIT_TOL = 1e-4


def test_cached_logits_equal_uncached_within_tolerance(gemma):
    """Teacher-forced: the logits of a cached prefill + one-token decode steps equal those of one
    uncached forward pass over the same tokens within :data:`CACHED_LOGIT_TOL` (exact numerics,
    the real weights, the sliding window overridden to 8 as above).  Not bit for bit: XLA:CPU's
    dots round differently at different row counts (a decode step has one row)."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from mugi_jax import data, models

    model, tok, cfg = gemma
    small_cfg = dataclasses.replace(cfg, sliding_window=SMALL_WINDOW)
    gd, _ = nnx.split(nnx.eval_shape(lambda: models.Llama(small_cfg)))
    state = nnx.state(model)
    ids = tok.encode(data.corpus_text("sotu")[:400])
    prompt, forced = 24, 8
    seq = jnp.asarray([[cfg.bos_id] + ids[:prompt + forced - 1]], jnp.int32)
    run = jax.jit(lambda st, t, c: nnx.merge(gd, st)(t, cache=c))
    full = np.asarray(jax.jit(lambda st, t: nnx.merge(gd, st)(t)[0])(state, seq))[0]
    logits, cache = run(state, seq[:, :prompt], models.Cache.init(small_cfg, 1, 40))
    steps = [np.asarray(logits)[0, -1]]
    for i in range(prompt, seq.shape[1]):
        lg, cache = run(state, seq[:, i:i + 1], cache)
        steps.append(np.asarray(lg)[0, -1])
    diff = np.max(np.abs(np.stack(steps) - full[prompt - 1:]))
    assert diff < CACHED_LOGIT_TOL, diff
    assert np.max(np.abs(full)) > 10.0  # real logits, not a degenerate all-zero comparison

