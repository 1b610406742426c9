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
