"""all-MiniLM-L6-v2: the JAX encoder (exact numerics) against an independent NumPy forward pass,
and its tokenizer against an independent WordPiece tokenizer.

Both references below are written from the formats alone and share no code with
``mugi_jax.models``: the forward pass reads the safetensors file by its Hugging Face tensor
names (float64 LayerNorm, softmax and erf-GELU; float32 GEMMs); the tokenizer implements BERT's
basic tokenizer (clean, lowercase, strip accents, split on whitespace and punctuation) and greedy
longest-match-first WordPiece over the vocabulary of ``tokenizer.json``.

The fast tests build a tiny random BERT directory in Hugging Face layout; the slow ones use the
real checkpoint (``mugi-jax data fetch minilm``) and a slice of the Brown corpus.
"""

from __future__ import annotations

import json
import unicodedata

import numpy as np
import pytest
from scipy.special import erf

# ---------------------------------------------------------------------------------------------
# Independent NumPy BERT encoder (Hugging Face tensor names)


def _ln(x, w, b, eps):
    x = x.astype(np.float64)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return ((x - mu) / np.sqrt(var + eps) * w + b).astype(np.float32)


def reference_embeddings(cfg: dict, w: dict, ids: list[list[int]]) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings, one sentence at a time (no padding)."""
    nh = cfg["num_attention_heads"]
    eps = cfg["layer_norm_eps"]
    out = []
    for seq in ids:
        t = len(seq)
        x = (w["embeddings.word_embeddings.weight"][seq] + w["embeddings.position_embeddings.weight"][:t]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = _ln(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        d = x.shape[1]
        hd = d // nh
        for i in range(cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}."

            def lin(h, name, p=p):
                return h @ w[p + name + ".weight"].T + w[p + name + ".bias"]

            q = lin(x, "attention.self.query").reshape(t, nh, hd)
            k = lin(x, "attention.self.key").reshape(t, nh, hd)
            v = lin(x, "attention.self.value").reshape(t, nh, hd)
            ctx = np.empty((t, nh, hd), np.float32)
            for j in range(nh):
                s = (q[:, j] @ k[:, j].T).astype(np.float64) / np.sqrt(hd)
                e = np.exp(s - s.max(axis=1, keepdims=True))
                ctx[:, j] = (e / e.sum(axis=1, keepdims=True)).astype(np.float32) @ v[:, j]
            x = _ln(x + lin(ctx.reshape(t, d), "attention.output.dense"),
                    w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], eps)
            u = lin(x, "intermediate.dense").astype(np.float64)
            g = (0.5 * u * (1.0 + erf(u / np.sqrt(2.0)))).astype(np.float32)
            x = _ln(x + lin(g, "output.dense"), w[p + "output.LayerNorm.weight"],
                    w[p + "output.LayerNorm.bias"], eps)
        m = x.astype(np.float64).mean(axis=0)
        out.append(m / np.linalg.norm(m))
    return np.asarray(out, np.float32)


# ---------------------------------------------------------------------------------------------
# Independent WordPiece tokenizer (BERT uncased)


def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return any(a <= cp <= b for a, b in ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF),
                                         (0x2A700, 0x2B73F), (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF),
                                         (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))


def _basic_tokens(text: str) -> list[str]:
    chars = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
            continue
        if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
            chars.append(" ")
        elif _is_cjk(cp):
            chars.append(f" {ch} ")
        else:
            chars.append(ch)
    words = []
    for word in "".join(chars).split():
        word = "".join(c for c in unicodedata.normalize("NFD", word.lower())
                       if unicodedata.category(c) != "Mn")
        cur = ""
        for c in word:
            if _is_punct(c):
                if cur:
                    words.append(cur)
                words.append(c)
                cur = ""
            else:
                cur += c
        if cur:
            words.append(cur)
    return words


def reference_wordpiece(text: str, vocab: dict[str, int]) -> list[int]:
    ids = [vocab["[CLS]"]]
    for word in _basic_tokens(text):
        if len(word) > 100:
            ids.append(vocab["[UNK]"])
            continue
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in vocab:
                    break
                end -= 1
            if end == start:
                pieces = [vocab["[UNK]"]]
                break
            pieces.append(vocab[piece])
            start = end
        ids.extend(pieces)
    return ids + [vocab["[SEP]"]]


# ---------------------------------------------------------------------------------------------
# Fast: a tiny random BERT directory in Hugging Face layout

TINY_HF = {"model_type": "bert", "hidden_act": "gelu", "hidden_size": 32, "num_attention_heads": 4,
           "num_hidden_layers": 2, "intermediate_size": 48, "max_position_embeddings": 40,
           "type_vocab_size": 2, "vocab_size": 50, "layer_norm_eps": 1e-12, "pad_token_id": 0,
           "position_embedding_type": "absolute"}


def _tiny_weights(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d, f = cfg["hidden_size"], cfg["intermediate_size"]

    def r(*shape, s=0.3):
        return (rng.standard_normal(shape) * s).astype(np.float32)

    w = {"embeddings.word_embeddings.weight": r(cfg["vocab_size"], d),
         "embeddings.position_embeddings.weight": r(cfg["max_position_embeddings"], d),
         "embeddings.token_type_embeddings.weight": r(2, d),
         "embeddings.LayerNorm.weight": 1 + r(d, s=0.1), "embeddings.LayerNorm.bias": r(d, s=0.1),
         "embeddings.position_ids": np.arange(cfg["max_position_embeddings"], dtype=np.int64)[None],
         "pooler.dense.weight": r(d, d), "pooler.dense.bias": r(d)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name, (o, n) in {"attention.self.query": (d, d), "attention.self.key": (d, d),
                             "attention.self.value": (d, d), "attention.output.dense": (d, d),
                             "intermediate.dense": (f, d), "output.dense": (d, f)}.items():
            w[p + name + ".weight"] = r(o, n, s=n ** -0.5)
            w[p + name + ".bias"] = r(o, s=0.1)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[p + name + ".weight"] = 1 + r(d, s=0.1)
            w[p + name + ".bias"] = r(d, s=0.1)
    return w


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from safetensors.numpy import save_file

    path = tmp_path_factory.mktemp("tiny-bert")
    (path / "config.json").write_text(json.dumps(TINY_HF))
    save_file(_tiny_weights(TINY_HF), str(path / "model.safetensors"))
    return path


def test_tiny_encoder_matches_numpy_reference_with_padding(tiny_dir):
    import jax.numpy as jnp

    from mugi_jax.models import bert
    from mugi_jax.models.hf import load_bert

    model, cfg = load_bert(tiny_dir)
    assert cfg.max_seq_len == 40 and cfg.n_kv_heads == 4 and cfg.causal is False
    seqs = [[1, 5, 9, 2], [1, 7, 7, 30, 31, 12, 44, 2], [1, 2]]
    t = max(map(len, seqs)) + 3  # extra padding on every row
    tokens = np.zeros((len(seqs), t), np.int32)
    valid = np.zeros((len(seqs), t), bool)
    for i, s in enumerate(seqs):
        tokens[i, :len(s)], valid[i, :len(s)] = s, True
    ours = np.asarray(bert.encode(model, jnp.asarray(tokens), jnp.asarray(valid)))
    from safetensors.numpy import load_file

    ref = reference_embeddings(TINY_HF, load_file(str(tiny_dir / "model.safetensors")), seqs)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


def test_tiny_encoder_policy_reaches_every_op(tiny_dir):
    """VLP softmax/GELU (nonlinear-only) and INT4 weights + INT4 K/V on the FP32 datapath (the
    quantization of the mugi preset without its slow-to-compile GEMM kernel) each change the
    embedding, a little."""
    import dataclasses

    import jax.numpy as jnp

    from mugi_jax import numerics, quant
    from mugi_jax.models import bert
    from mugi_jax.models.hf import load_bert

    model, _ = load_bert(tiny_dir)
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(3, 50, (2, 16)), jnp.int32)
    valid = jnp.asarray(np.arange(16)[None] < np.array([[16], [11]]))
    exact = np.asarray(bert.encode(model, tokens, valid, "exact"))
    int4 = quant.SignMagnitudeInt4(group_size=32, axis=0)
    weights = numerics.Policy("int4-weights", numerics.LayerNumerics(
        proj=numerics.Gemm(weight_scheme=int4, bf16_activations=True)))
    kv = numerics.Policy("int4-kv", numerics.LayerNumerics(
        kv=numerics.KVCache(dataclasses.replace(int4, group_size=None, axis=-1))))
    for policy in (numerics.preset("nonlinear-only"), weights, kv):
        got = np.asarray(bert.encode(bert.prepare(model, policy), tokens, valid, policy))
        cos = np.sum(got * exact, axis=1)
        assert np.all(np.isfinite(got)) and np.all(cos > 0.9), (policy.name, cos)
        assert not np.array_equal(got, exact), policy.name


def test_tiny_encoder_grouped_key_cache_ignores_padding(tiny_dir):
    """Under mugi's K/V format (keys quantized per channel in groups of tokens) a text's embedding
    does not depend on how much padding its batch adds (padding keys never enter a group)."""
    import jax.numpy as jnp

    from mugi_jax import numerics
    from mugi_jax.models import bert
    from mugi_jax.models.hf import load_bert

    model, _ = load_bert(tiny_dir)
    policy = numerics.Policy("kv", numerics.LayerNumerics(kv=numerics.preset("mugi").default.kv))
    seq = [1, 5, 9, 17, 23, 4, 8, 30, 12, 2]
    alone = np.zeros((1, 16), np.int32)
    alone[0, :10] = seq
    batch = np.zeros((2, 40), np.int32)
    batch[0, :10], batch[1] = seq, np.arange(40) % 45 + 3
    a = np.asarray(bert.encode(model, jnp.asarray(alone), jnp.asarray(alone > 0), policy))
    b = np.asarray(bert.encode(model, jnp.asarray(batch), jnp.asarray(batch > 0), policy))
    exact = np.asarray(bert.encode(model, jnp.asarray(alone), jnp.asarray(alone > 0)))
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)
    assert not np.allclose(a[0], exact[0], atol=1e-6)  # the format is applied


def test_load_bert_names_the_tensor_with_a_wrong_shape(tiny_dir, tmp_path):
    from safetensors.numpy import save_file

    from mugi_jax.models.hf import load_bert

    w = _tiny_weights(TINY_HF)
    w["encoder.layer.1.intermediate.dense.weight"] = w["encoder.layer.1.intermediate.dense.weight"][:40]
    (tmp_path / "config.json").write_text(json.dumps(TINY_HF))
    save_file(w, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"encoder\.layer\.1\.intermediate\.dense\.weight"):
        load_bert(tmp_path)
    del w["encoder.layer.1.intermediate.dense.weight"]
    save_file(w, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"layers\.1\.mlp\.up_proj\.kernel"):
        load_bert(tmp_path)


def test_models_load_directory_and_embed_are_deterministic_and_batch_independent(tiny_dir):
    from tokenizers import Tokenizer, models as tm, pre_tokenizers, processors

    from mugi_jax import models

    vocab = {w: i for i, w in enumerate(["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
                                         + [f"w{i}" for i in range(46)])}
    tk = Tokenizer(tm.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                      special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    tk.enable_padding(length=16)  # as the MiniLM file ships: the loader turns it off
    tk.save(str(tiny_dir / "tokenizer.json"))
    model, tok, cfg = models.load(path=tiny_dir)
    assert tok.encode("w1 w2") == [1, 5, 6, 2]
    texts = ["w1 w2 w3", "w4", " ".join(f"w{i % 46}" for i in range(60)), "w5 w6"]
    a = models.embed(model, tok, texts, batch_size=2)
    b = models.embed(model, tok, texts, batch_size=2)
    np.testing.assert_array_equal(a, b)
    one = models.embed(model, tok, texts[:1])
    np.testing.assert_allclose(one[0], a[0], atol=1e-6)
    assert a.shape == (4, cfg.dim)
    with pytest.raises(ValueError, match=r"texts\[2\] has 62 tokens"):
        models.embed(model, tok, texts, truncate=False)


# ---------------------------------------------------------------------------------------------
# Slow: the real checkpoint

SENTENCES = ["hello world", "The Fulton County Grand Jury said Friday an investigation of "
             "Atlanta's recent primary election produced no evidence.",
             "A man is playing a guitar.", "Résumé of the naïve café owner: 42 % (approx.)!"]


@pytest.mark.slow
def test_minilm_matches_numpy_reference():
    from safetensors.numpy import load_file

    from mugi_jax import data, models

    model, tok, cfg = models.load("minilm-l6")
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.ffn_dim, cfg.norm_eps) == (384, 6, 12, 1536, 1e-12)
    path = data.model_path("minilm")
    hf = json.loads((path / "config.json").read_text())
    w = load_file(str(path / "model.safetensors"))
    brown = data.corpus_text("brown")[:3000]  # a 256-token passage (truncated)
    texts = SENTENCES + [brown]
    ours = models.embed(model, tok, texts, batch_size=8)
    ids = [tok.encode(t) for t in SENTENCES] + [tok.encode(brown)[:255] + [tok.eos_id]]
    ref = reference_embeddings(hf, w, ids)
    assert np.abs(ours - ref).max() < 1e-3, np.abs(ours - ref).max()
    # sentence-transformers' published embedding of "hello world" starts like this
    np.testing.assert_allclose(ours[0, :3], [-0.0344773, 0.0310232, 0.0067350], atol=1e-5)


@pytest.mark.slow
def test_minilm_tokenizer_matches_reference_wordpiece_on_corpora():
    from mugi_jax import data, models

    _, tok, _ = models.load("minilm-l6")
    vocab = tok.tk.get_vocab()
    for name in ("brown", "sotu"):
        text = data.corpus_text(name)
        lines = [ln for ln in text[:60000].split("\n") if ln.strip()]
        for line in lines:
            assert tok.encode(line) == reference_wordpiece(line, vocab), line
    for s in SENTENCES:
        assert tok.encode(s) == reference_wordpiece(s, vocab), s


def test_tiny_encoder_awq_equals_the_unfolded_scaled_reference(tmp_path):
    """AWQ on a post-LayerNorm encoder (a tiny random BERT with outlier LayerNorm channels): the
    quantized model (q/k/v, up and down scales applied to the activation through
    ``Dense.input_scale``, o_proj's folded into v_proj's output channels and bias) equals the
    independent NumPy encoder run on the unfolded weights - each dequantized kernel with its
    activation scale moved back into it (``(x / s) @ W^``), original biases."""
    import jax.numpy as jnp
    from safetensors.numpy import save_file

    from mugi_jax.models import bert
    from mugi_jax.models import quantize as mq
    from mugi_jax.models.hf import load_bert

    w = _tiny_weights(TINY_HF, seed=4)
    w["embeddings.LayerNorm.weight"][:3] = 8.0  # outlier channels: AWQ scales them
    for i in range(TINY_HF["num_hidden_layers"]):
        w[f"encoder.layer.{i}.attention.output.LayerNorm.weight"][:3] = 8.0
    (tmp_path / "config.json").write_text(json.dumps(TINY_HF))
    save_file(w, str(tmp_path / "model.safetensors"))
    model, _ = load_bert(tmp_path)
    rng = np.random.default_rng(0)
    stats = mq.collect_statistics(model, rng.integers(3, 50, 64).tolist(), 16, mq.ENCODER_INPUTS)
    qw = mq.quantize_encoder(model, stats, mq.QuantSpec("tiny", "awq", "signmag", 32, "sotu", 128))
    qm = mq.apply_encoder_weights(model, qw)
    seqs = [[1, 5, 9, 2, 17, 33, 8], [1, 7, 7, 30, 31, 12, 44, 2]]
    ours = np.asarray(bert.encode(qm, jnp.asarray(seqs[1:]), None, "exact"))
    names = {"attn.q_proj": "attention.self.query", "attn.k_proj": "attention.self.key",
             "attn.v_proj": "attention.self.value", "attn.o_proj": "attention.output.dense",
             "mlp.up_proj": "intermediate.dense", "mlp.down_proj": "output.dense"}

    def unfolded(with_scales):
        out = dict(w)
        for i in range(TINY_HF["num_hidden_layers"]):
            for p, hf_name in names.items():
                k = np.asarray(qw.kernels[f"layers.{i}.{p}"].dequantize(jnp.float32), np.float64)
                if with_scales:
                    k = k / np.asarray(qw.scales[f"layers.{i}.{p}"])[:, None]
                    if p == "attn.v_proj":  # v_proj's output carries 1/s_o (the fold)
                        k = k * np.asarray(qw.scales[f"layers.{i}.attn.o_proj"])[None, :]
                out[f"encoder.layer.{i}.{hf_name}.weight"] = k.T.astype(np.float32)
        return reference_embeddings(TINY_HF, out, seqs[1:])

    for key in ("attn.q_proj", "attn.o_proj", "mlp.up_proj", "mlp.down_proj"):
        assert np.ptp(np.asarray(qw.scales[f"layers.0.{key}"])) > 0.1, key  # AWQ did something
    np.testing.assert_allclose(ours, unfolded(True), atol=2e-5)
    assert np.max(np.abs(ours - unfolded(False))) > 1e-3
    # the mugi preset runs on these weights (datapath GEMMs, KIVI K/V)
    got = np.asarray(bert.encode(bert.prepare(qm, "mugi"), jnp.asarray(seqs[1:]), None, "mugi"))
    assert np.all(np.isfinite(got)) and float(np.sum(got * ours)) > 0.9


def test_encoder_calibration_skips_each_documents_head():
    from mugi_jax.models import quantize as mq

    class Tok:
        bos_id, eos_id = 101, 102

        def encode(self, text, special=True):
            return [int(c) for c in text.split()]

    docs = [" ".join(str(1000 * d + j) for j in range(700)) for d in range(3)]
    ids = mq.encoder_calibration_ids(Tok(), docs, 256, window=128, skip_tokens=512)
    assert len(ids) == 256 and ids[0] == 101 and ids[127] == 102
    body = [t for t in ids if t not in (101, 102)]
    assert all(t % 1000 >= 512 for t in body)  # never a document's first 512 tokens
    assert body[0] == 2512  # the last document first
    with pytest.raises(ValueError, match="calib_tokens"):
        mq.encoder_calibration_ids(Tok(), docs, 4096, window=128, skip_tokens=512)
