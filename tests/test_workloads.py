"""Workload shapes and op tables."""

from __future__ import annotations

import numpy as np
import pytest

from mugi_jax.workloads import (
    ATTENTION, GEMM, MODEL_NAMES, OP_NAMES, SOFTMAX, DecodeConvention, Workload, get_model,
    op_table, op_table_family, table_rows,
)

PAPER = DecodeConvention(linear_decode_steps=4096, lm_head_decode_steps=1)


def rows_of(table, op, phase=None):
    sel = table.op == OP_NAMES.index(op)
    if phase is not None:
        sel &= table.phase == phase
    return np.flatnonzero(sel)


def test_models():
    s = get_model("smollm2-135m")
    assert (s.layers, s.dim, s.ffn_hidden, s.heads, s.kv_heads, s.dh, s.vocab) == (30, 576, 1536, 9, 3, 64, 49152)
    assert get_model("llama2-70b-gqa").kv_heads == 8
    assert get_model("llama2-70b-gqa", kv_heads=16).kv_heads == 16
    assert set(MODEL_NAMES) >= {"llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b", "llama3-70b"}
    with pytest.raises(ValueError, match="llama2-7b"):
        get_model("gpt-5")
    with pytest.raises(ValueError, match="divide"):
        get_model("llama2-7b", kv_heads=5)


def test_paper_shapes_llama2_7b():
    w = Workload(get_model("llama2-7b"), batch=8, seq_len=4096)
    t = op_table(w, PAPER)
    assert t.rows == table_rows(w) == 21 + 3 * 4032
    (q,) = rows_of(t, "proj_q", phase=1)
    assert (t.batch[q], t.m[q], t.k[q], t.n[q], t.repeat[q]) == (1, 8, 4096, 4096, 32 * 4096)
    (qp,) = rows_of(t, "proj_q", phase=0)
    assert t.m[qp] == 8 * 64 and t.repeat[qp] == 32
    (head,) = rows_of(t, "lm_head", phase=1)
    assert t.repeat[head] == 1 and t.n[head] == 32000
    qkt = rows_of(t, "qkt", phase=1)
    assert len(qkt) == 4032
    assert t.batch[qkt[0]] == 8 * 32 and t.m[qkt[0]] == 1 and t.k[qkt[0]] == 128
    assert t.n[qkt].min() == 65 and t.n[qkt].max() == 4096
    sm = rows_of(t, "softmax", phase=1)
    assert t.kind[sm[0]] == SOFTMAX and t.m[sm[0]] == 8 * 32


def test_gqa_attention_stacks_query_heads_on_m():
    t = op_table(Workload(get_model("llama2-70b-gqa"), 8, 4096), PAPER)
    pv = rows_of(t, "pv", phase=1)
    assert t.batch[pv[0]] == 8 * 8 and t.m[pv[0]] == 64 // 8 and t.n[pv[0]] == 128
    assert t.k[pv].max() == 4096 and (t.op_class[pv] == ATTENTION).all() and (t.kind[pv] == GEMM).all()
    (k,) = rows_of(t, "proj_k", phase=1)
    assert t.n[k] == 8 * 128


def test_flops_of_70b_gqa_match_the_published_total():
    t = op_table(Workload(get_model("llama2-70b-gqa"), 8, 4096), PAPER)
    gemm = t.kind == GEMM
    flops = np.sum(np.where(gemm, 2.0 * t.batch * t.m * t.k * t.n, 3.0 * t.m * t.n) * t.repeat)
    assert flops / 1e9 == pytest.approx(4.733e6, rel=1e-3)
    nl = np.sum(np.where(gemm, 0.0, 3.0 * t.m * t.n) * t.repeat)
    assert nl / 1e9 == pytest.approx(1260, rel=0.01)


def test_family_repeats_reproduce_each_table():
    model, seqs = get_model("llama2-13b"), [128, 512, 1024]
    union, reps = op_table_family(model, 4, seqs, 64, PAPER)
    key = lambda t, i: (t.op[i], t.phase[i], t.batch[i], t.m[i], t.k[i], t.n[i], t.repeat[i])  # noqa: E731
    for i, s in enumerate(seqs):
        t = op_table(Workload(model, 4, s), PAPER)
        want = sorted(key(t, r) for r in range(t.rows))
        sel = np.flatnonzero(reps[i] > 0)
        got = sorted((union.op[r], union.phase[r], union.batch[r], union.m[r], union.k[r], union.n[r],
                      reps[i, r]) for r in sel)
        assert got == want


def test_physical_decode_convention_and_validation():
    w = Workload(get_model("llama2-7b"), 2, 1024)
    t = op_table(w)  # default: every op decodes seq_len - prefill steps
    (q,) = rows_of(t, "proj_q", phase=1)
    (head,) = rows_of(t, "lm_head", phase=1)
    assert t.repeat[q] == 32 * 960 and t.repeat[head] == 960
    with pytest.raises(ValueError, match="batch"):
        Workload(get_model("llama2-7b"), 0, 1024)
    with pytest.raises(ValueError, match="seq_len"):
        Workload(get_model("llama2-7b"), 1, 64)


# ---- one configuration for the model and the cost model (issue 16, item 4) --------------------

def _reports_equal(a, b) -> bool:
    import jax

    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_llama2_configs_cost_bit_identically_to_the_old_shapes():
    """The named Llama-2 configs (LlamaConfig records) give exactly the op tables and costs of the
    hand-written ModelShapes they replace (paper and realistic presets)."""
    from mugi_jax.cost import evaluate
    from mugi_jax.hw import get_arch
    from mugi_jax.workloads import ModelShape

    old = {"llama2-7b": ModelShape("llama2-7b", 32, 4096, 32, 32, 11008, 32000),
           "llama2-13b": ModelShape("llama2-13b", 40, 5120, 40, 40, 13824, 32000),
           "llama2-70b": ModelShape("llama2-70b", 80, 8192, 64, 64, 28672, 32000),
           "llama2-70b-gqa": ModelShape("llama2-70b-gqa", 80, 8192, 64, 8, 28672, 32000)}
    for name, shape in old.items():
        new = get_model(name)
        for f in ("layers", "dim", "heads", "kv_heads", "ffn_hidden", "vocab", "dh", "activation",
                  "gated_ffn", "windows", "encoder"):
            assert getattr(new, f) == getattr(shape, f), (name, f)
        w_old, w_new = Workload(shape, 8, 4096), Workload(new, 8, 4096)
        for a, b in zip(op_table(w_old, PAPER), op_table(w_new, PAPER)):
            assert np.array_equal(a, b)
    arch = get_arch("mugi-256x8")
    for preset in ("paper", "realistic"):
        w_old, w_new = Workload(old["llama2-7b"], 4, 160), Workload(get_model("llama2-7b"), 4, 160)
        assert _reports_equal(evaluate(arch, w_old, preset), evaluate(arch, w_new, preset)), preset


def test_gemma3_sliding_windows_and_two_pass_gelu():
    md = get_model("gemma3-270m")
    assert (md.layers, md.dim, md.heads, md.kv_heads, md.dh, md.ffn_hidden) == (18, 640, 4, 1, 256, 2048)
    assert md.attention_groups() == ((512, 15), (None, 3))
    w = Workload(md, 2, 1024)
    t = op_table(w)
    assert t.rows == table_rows(w)
    act = rows_of(t, "act")
    assert (t.kind[act] == 3).all()  # GELU-tanh: kind GELU, costed as the two-pass GELU (like SiLU)
    sm = rows_of(t, "softmax", phase=1)
    sliding, full = sm[t.repeat[sm] == 15], sm[t.repeat[sm] == 3]
    assert t.n[sliding].max() == 512 and t.n[full].max() == 1024 and len(sliding) == len(full) == 960
    # a sliding layer's decode QK^T / PV see min(c, 512) keys
    qkt = rows_of(t, "qkt", phase=1)
    assert t.n[qkt[t.repeat[qkt] == 15]].tolist() == np.minimum(np.arange(65, 1025), 512).tolist()
    # two-pass GELU costs what SiLU costs (same rows with kind SiLU)
    from mugi_jax.cost import evaluate
    from mugi_jax.hw import get_arch
    from dataclasses import replace

    silu = replace(md, activation="silu")
    for arch in ("mugi-256x8", "sa-16"):
        a, b = evaluate(get_arch(arch), w), evaluate(get_arch(arch), Workload(silu, 2, 1024))
        assert float(a.energy_j) == float(b.energy_j) and float(a.cycles) == float(b.cycles)
    # the window saves attention work against an all-global Gemma
    glob = evaluate(get_arch("mugi-256x8"), Workload(replace(md, windows=()), 2, 4096))
    slid = evaluate(get_arch("mugi-256x8"), Workload(md, 2, 4096))
    assert float(slid.breakdown.cycles[1]) < 0.5 * float(glob.breakdown.cycles[1])


def test_minilm_is_an_encoder_without_decode():
    md = get_model("minilm-l6")
    assert md.encoder and not md.gated_ffn and md.activation == "gelu"
    w = Workload(md, 4, 128)
    t = op_table(w)
    assert t.rows == table_rows(w) == 6 + 1 + 3 and (t.phase == 0).all()  # 6 GEMMs, GELU, attention
    assert len(rows_of(t, "lm_head")) == 0 and len(rows_of(t, "gate")) == 0
    (q,) = rows_of(t, "proj_q")
    assert (t.m[q], t.k[q], t.n[q], t.repeat[q]) == (4 * 128, 384, 384, 6)
    (qkt,) = rows_of(t, "qkt")  # bidirectional attention over the whole input
    assert (t.batch[qkt], t.m[qkt], t.k[qkt], t.n[qkt]) == (4 * 12, 128, 32, 128)
    from mugi_jax.cost import evaluate
    from mugi_jax.cost.realistic import evaluate_realistic
    from mugi_jax.hw import get_arch

    r = evaluate(get_arch("mugi-256x8"), w)
    assert float(r.tokens) == 4 * 128
    rr, x = evaluate_realistic(get_arch("sa-16"), w)
    assert x.tpot_s == 0.0 and x.ttft_s == pytest.approx(float(rr.execution_time_s))


def test_hf_config_json_costs_like_the_named_config(tmp_path):
    from mugi_jax.cost import evaluate
    from mugi_jax.hw import get_arch
    import json

    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 32,
        "num_hidden_layers": 32, "intermediate_size": 11008, "vocab_size": 32000, "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5, "max_position_embeddings": 4096, "tie_word_embeddings": False}))
    arch, named = get_arch("sa-16"), get_model("llama2-7b")
    for path in (tmp_path / "config.json", tmp_path):
        md = get_model(str(path))
        assert _reports_equal(evaluate(arch, Workload(md, 8, 256)), evaluate(arch, Workload(named, 8, 256)))
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json"):
        get_model(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="no such file"):
        get_model(str(tmp_path / "missing.json"))


def test_mixed_families_in_one_sweep():
    """A sweep over decoders with one or two attention groups and an encoder equals evaluating
    each on its own (decode blocks are padded with exact zeros)."""
    from mugi_jax.cost import evaluate, report_at, sweep
    from mugi_jax.hw import get_arch

    arch = get_arch("mugi-128x8")
    work = [Workload(get_model(m), 2, 512) for m in ("smollm2-135m", "gemma3-270m", "minilm-l6")]
    rep = sweep([arch], work)
    for j, w in enumerate(work):
        one = evaluate(arch, w)
        assert float(report_at(rep, 0, j).energy_j) == pytest.approx(float(one.energy_j), rel=1e-6)
        assert float(report_at(rep, 0, j).cycles) == pytest.approx(float(one.cycles), rel=1e-6)
