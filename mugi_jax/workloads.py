"""LLM inference workloads as op tables (arrays), for the cost model.

A :class:`ModelShape` is the architecture of a decoder-only LLM; a :class:`Workload` adds the
serving scenario (batch, maximum sequence length, prompt length); :func:`op_table` turns both,
plus the decode-length conventions of a cost preset (:class:`DecodeConvention`), into an
:class:`OpTable`: one row per distinct op shape with a repeat count, as NumPy arrays.

GEMM rows are ``batch`` independent ``(m x k) @ (k x n)`` products, with m on the array columns
(tokens or query heads), n on the rows (output channels, KV positions), k the reduction.  The
"weight" operand k x n (4-bit weights, or the 4-bit KV cache) is the one the array streams on its
rows.  Nonlinear rows are an ``m x n`` element grid (m along the unit's lanes).  With B = batch,
P = prompt length, S = max sequence length, d = model dim, h = heads, g = KV heads,
dh = head dim, F = FFN hidden, V = vocab, L = layers (the authors' shapes, notes section 2.1):

    op        prefill (batch, m, k, n)      decode step (batch, m, k, n)
    q, o      (1, B*P, d, h*dh)             (1, B, d, h*dh)                 x linear_decode_steps
    k, v      (1, B*P, d, g*dh)             (1, B, d, g*dh)                 x linear_decode_steps
    qk^T      (B*g, (h/g)*P, dh, P)         (B*g, h/g, dh, c)               c = P+1 .. S
    pv        (B*g, (h/g)*P, P, dh)         (B*g, h/g, c, dh)               c = P+1 .. S
    gate, up  (1, B*P, d, F)                (1, B, d, F)                    x linear_decode_steps
    down      (1, B*P, F, d)                (1, B, F, d)                    x linear_decode_steps
    lm head   (1, B*P, d, V)                (1, B, d, V)                    x lm_head_decode_steps
    softmax   m = B*h*P, n = P              m = B*h, n = c                  c = P+1 .. S
    act       m = F, n = B*P                m = F, n = B                    x linear_decode_steps

Every per-layer row repeats L times.  The activation is SiLU for SwiGLU models and GELU for
GELU models (none of the presets here; the ``act_kind`` column says which).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from jaxtyping import Float, Int

# op kinds
GEMM, SOFTMAX, SILU, GELU = 0, 1, 2, 3
KIND_NAMES: tuple[str, ...] = ("gemm", "softmax", "silu", "gelu")
# op classes of the report's breakdown
PROJECTION, ATTENTION, FFN, NONLINEAR, OUTPUT = 0, 1, 2, 3, 4
CLASS_NAMES: tuple[str, ...] = ("projection", "attention", "ffn", "nonlinear", "output")
OP_NAMES: tuple[str, ...] = (
    "proj_q", "proj_k", "proj_v", "proj_o", "qkt", "pv", "gate", "up", "down", "lm_head",
    "softmax", "act",
)


@dataclass(frozen=True)
class ModelShape:
    """Decoder-only transformer shape."""

    name: str
    layers: int
    dim: int
    heads: int
    kv_heads: int
    ffn_hidden: int
    vocab: int
    head_dim: int | None = None  # default dim // heads
    activation: str = "silu"  # silu | gelu

    @property
    def dh(self) -> int:
        return self.head_dim if self.head_dim is not None else self.dim // self.heads

    def with_kv_heads(self, kv_heads: int) -> "ModelShape":
        if kv_heads < 1 or self.heads % kv_heads:
            raise ValueError(f"kv_heads={kv_heads}: must divide heads={self.heads}")
        from dataclasses import replace

        return replace(self, kv_heads=kv_heads)


MODELS: dict[str, ModelShape] = {
    "llama2-7b": ModelShape("llama2-7b", 32, 4096, 32, 32, 11008, 32000),
    "llama2-13b": ModelShape("llama2-13b", 40, 5120, 40, 40, 13824, 32000),
    # the authors model Llama-2-70B as MHA (kv_heads = heads) and separately with GQA
    "llama2-70b": ModelShape("llama2-70b", 80, 8192, 64, 64, 28672, 32000),
    "llama2-70b-gqa": ModelShape("llama2-70b-gqa", 80, 8192, 64, 8, 28672, 32000),
    "llama3-8b": ModelShape("llama3-8b", 32, 4096, 32, 8, 14336, 128256),
    "llama3-70b": ModelShape("llama3-70b", 80, 8192, 64, 8, 28672, 128256),
    "smollm2-135m": ModelShape("smollm2-135m", 30, 576, 9, 3, 1536, 49152, head_dim=64),
}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)
GQA_KV_HEADS: tuple[int, ...] = (8, 16, 32, 64)
BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
SEQ_LENS: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096)


def get_model(name: str, kv_heads: int | None = None) -> ModelShape:
    """Model by name (``llama2-70b-gqa`` etc.); ``kv_heads`` overrides the KV head count."""
    if name not in MODELS:
        raise ValueError(f"model={name!r}: valid names are {', '.join(MODEL_NAMES)}")
    model = MODELS[name]
    return model if kv_heads is None else model.with_kv_heads(kv_heads)


@dataclass(frozen=True)
class Workload:
    """One serving scenario: ``batch`` sequences, prompt ``prefill_len``, grown to ``seq_len``."""

    model: ModelShape
    batch: int = 8
    seq_len: int = 4096
    prefill_len: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.batch <= 1024:
            raise ValueError(f"batch={self.batch}: allowed range is 1..1024")
        if not 1 <= self.prefill_len < self.seq_len:
            raise ValueError(
                f"seq_len={self.seq_len}, prefill_len={self.prefill_len}: need 1 <= prefill_len < seq_len")
        if self.seq_len > 1 << 17:
            raise ValueError(f"seq_len={self.seq_len}: allowed range is up to {1 << 17}")

    @property
    def name(self) -> str:
        return f"{self.model.name}/g{self.model.kv_heads}/b{self.batch}/s{self.seq_len}"


@dataclass(frozen=True)
class DecodeConvention:
    """How many decode steps each op class is charged (a property of the cost preset).

    ``linear_decode_steps=None`` means seq_len - prefill_len (the physically consistent count);
    the authors' model charges 4096 steps for projections, FFN and the activation regardless of
    seq_len, and the LM head once (``lm_head_decode_steps=1``; ``None`` = every decode step).
    """

    linear_decode_steps: int | None = None
    lm_head_decode_steps: int | None = None


class OpTable(NamedTuple):
    """Op rows as arrays (all of length R).  Shapes are exact integers stored as int64."""

    op: Int[np.ndarray, " R"]  # index into OP_NAMES
    kind: Int[np.ndarray, " R"]  # GEMM / SOFTMAX / SILU / GELU
    op_class: Int[np.ndarray, " R"]  # PROJECTION .. OUTPUT
    phase: Int[np.ndarray, " R"]  # 0 prefill, 1 decode
    batch: Int[np.ndarray, " R"]
    m: Int[np.ndarray, " R"]
    k: Int[np.ndarray, " R"]  # 1 for nonlinear rows
    n: Int[np.ndarray, " R"]
    repeat: Float[np.ndarray, " R"]  # how many times the row executes in the whole run

    @property
    def rows(self) -> int:
        return int(self.op.shape[0])

    def pad_to(self, rows: int) -> "OpTable":
        """Append no-op rows (repeat 0, all dimensions 1) up to ``rows`` rows."""
        extra = rows - self.rows
        if extra < 0:
            raise ValueError(f"pad_to({rows}): table already has {self.rows} rows")
        fill = {"repeat": 0.0, "kind": GEMM, "op_class": PROJECTION, "op": 0, "phase": 0}
        return OpTable(*(
            np.concatenate([col, np.full(extra, fill.get(name, 1), dtype=col.dtype)])
            for name, col in zip(self._fields, self)
        ))


def attention_decode_rows(workload: Workload) -> int:
    return workload.seq_len - workload.prefill_len


def op_table(workload: Workload, convention: DecodeConvention = DecodeConvention()) -> OpTable:
    """The op table of a whole run (prefill + decode, all layers); see the module docstring."""
    md, B, S, P = workload.model, workload.batch, workload.seq_len, workload.prefill_len
    d, h, g, dh, F, V, L = md.dim, md.heads, md.kv_heads, md.dh, md.ffn_hidden, md.vocab, md.layers
    if h % g:
        raise ValueError(f"kv_heads={g} must divide heads={h}")
    T = convention.linear_decode_steps if convention.linear_decode_steps is not None else S - P
    T_head = convention.lm_head_decode_steps if convention.lm_head_decode_steps is not None else S - P
    act = SILU if md.activation == "silu" else GELU
    rows: list[tuple[int, int, int, int, int, int, int, int, float]] = []

    def add(op: str, kind: int, cls: int, phase: int, b: int, m: int, k: int, n: int, rep: float):
        rows.append((OP_NAMES.index(op), kind, cls, phase, b, m, k, n, rep))

    for phase, tok, rep in ((0, B * P, float(L)), (1, B, float(L) * T)):
        add("proj_q", GEMM, PROJECTION, phase, 1, tok, d, h * dh, rep)
        add("proj_k", GEMM, PROJECTION, phase, 1, tok, d, g * dh, rep)
        add("proj_v", GEMM, PROJECTION, phase, 1, tok, d, g * dh, rep)
        add("proj_o", GEMM, PROJECTION, phase, 1, tok, h * dh, d, rep)
        add("gate", GEMM, FFN, phase, 1, tok, d, F, rep)
        add("up", GEMM, FFN, phase, 1, tok, d, F, rep)
        add("down", GEMM, FFN, phase, 1, tok, F, d, rep)
        add("act", act, NONLINEAR, phase, 1, F, 1, tok, rep)
    add("lm_head", GEMM, OUTPUT, 0, 1, B * P, d, V, 1.0)
    add("lm_head", GEMM, OUTPUT, 1, 1, B, d, V, float(T_head))
    add("qkt", GEMM, ATTENTION, 0, B * g, (h // g) * P, dh, P, float(L))
    add("pv", GEMM, ATTENTION, 0, B * g, (h // g) * P, P, dh, float(L))
    add("softmax", SOFTMAX, NONLINEAR, 0, 1, B * h * P, 1, P, float(L))
    base = np.array(rows, dtype=np.float64)

    cur = np.arange(P + 1, S + 1, dtype=np.int64)
    C = cur.size
    one = np.ones(C, dtype=np.int64)

    def block(op: str, kind: int, cls: int, b: int, m, k, n) -> np.ndarray:
        return np.stack([
            one * OP_NAMES.index(op), one * kind, one * cls, one, one * b,
            np.broadcast_to(m, (C,)), np.broadcast_to(k, (C,)), np.broadcast_to(n, (C,)),
            one * L,
        ], axis=1).astype(np.float64)

    dec = np.concatenate([
        block("qkt", GEMM, ATTENTION, B * g, h // g, dh, cur),
        block("pv", GEMM, ATTENTION, B * g, h // g, cur, dh),
        block("softmax", SOFTMAX, NONLINEAR, 1, B * h, 1, cur),
    ])
    allrows = np.concatenate([base, dec])
    cols = [allrows[:, i].astype(np.int64) for i in range(8)] + [allrows[:, 8]]
    return OpTable(*cols)


def op_table_family(
    model: ModelShape, batch: int, seq_lens: "list[int] | tuple[int, ...]", prefill_len: int = 64,
    convention: DecodeConvention = DecodeConvention(),
) -> tuple[OpTable, Float[np.ndarray, "S R"]]:
    """One op table serving several sequence lengths of the same (model, batch, prompt).

    Row costs do not depend on the sequence length, only the repeat counts do, and the attention
    decode rows of a shorter run are a prefix of the longer run's.  Returns the table of the longest
    run and a repeat matrix ``reps[i, r]`` such that ``op_table(Workload(model, batch, seq_lens[i]))``
    equals the rows r with ``reps[i, r] > 0`` (with those repeats).  A sweep evaluates each row once
    per design and gets every sequence length by one matrix product.
    """
    if not seq_lens:
        raise ValueError("seq_lens must not be empty")
    s_max = max(seq_lens)
    union = op_table(Workload(model, batch, s_max, prefill_len), convention)
    c_max = s_max - prefill_len
    n_fixed = union.rows - 3 * c_max
    reps = np.zeros((len(seq_lens), union.rows), dtype=np.float64)
    for i, s in enumerate(seq_lens):
        t = op_table(Workload(model, batch, s, prefill_len), convention)
        c = s - prefill_len
        reps[i, :n_fixed] = t.repeat[:n_fixed]
        for blk in range(3):  # qkt, pv, softmax blocks, each a prefix of the union's block
            reps[i, n_fixed + blk * c_max: n_fixed + blk * c_max + c] = t.repeat[n_fixed + blk * c: n_fixed + (blk + 1) * c]
    return union, reps


class PrefixFamily(NamedTuple):
    """:func:`op_table_family` in the layout the sweep kernel uses (see its docstring)."""

    fixed: OpTable  # rows whose shape does not depend on seq_len (F rows)
    fixed_reps: Float[np.ndarray, "S F"]  # their repeat for each seq_len
    gemm_blocks: OpTable  # attention decode GEMMs: 2 blocks (QK^T, PV) x C_max rows, flattened
    nl_blocks: OpTable  # softmax decode: 1 block x C_max rows
    prefix: Int[np.ndarray, " S"]  # decode rows of each seq_len: seq_len - prefill_len
    c_max: int


def op_table_prefix_family(
    model: ModelShape, batch: int, seq_lens: "list[int] | tuple[int, ...]", prefill_len: int = 64,
    convention: DecodeConvention = DecodeConvention(),
) -> PrefixFamily:
    """The family of :func:`op_table_family` split into fixed rows and attention-decode blocks.

    The decode blocks of :func:`op_table` are ordered by context length c = P+1..S with a
    constant repeat (layers), so the run at seq_len s uses exactly the first s - P rows of each
    block: a cumulative sum over the block gives every sequence length at once.
    """
    union, reps = op_table_family(model, batch, seq_lens, prefill_len, convention)
    c_max = max(seq_lens) - prefill_len
    n_fixed = union.rows - 3 * c_max

    def take(lo: int, hi: int) -> OpTable:
        return OpTable(*(col[lo:hi] for col in union))

    return PrefixFamily(
        fixed=take(0, n_fixed),
        fixed_reps=reps[:, :n_fixed],
        gemm_blocks=take(n_fixed, n_fixed + 2 * c_max),
        nl_blocks=take(n_fixed + 2 * c_max, n_fixed + 3 * c_max),
        prefix=np.asarray([s - prefill_len for s in seq_lens], dtype=np.int64),
        c_max=c_max,
    )


def table_rows(workload: Workload) -> int:
    """Rows of :func:`op_table` for this workload (21 fixed + 3 per attention decode step)."""
    return 21 + 3 * attention_decode_rows(workload)
