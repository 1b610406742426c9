"""LLM inference workloads as op tables (arrays), for the cost model.

A :class:`ModelShape` is the cost model's view of a model config (:mod:`mugi_jax.models.config`,
the record the Flax model is built from): :meth:`ModelShape.from_config` reads the shapes, the
op list (which projections the config's layers have: a gated FFN or not), the activation
(SiLU, GELU, GELU-tanh; both GELUs are costed as a two-pass GELU, like SiLU: kind ``GELU``), the
attention kind per layer (sliding window or global) and whether it is an encoder (no decode, no
LM head, bidirectional attention over the whole input).  :func:`get_model` accepts a registered
name (:data:`MODEL_NAMES`: the paper's Llama-2 shapes, Llama 3, SmolLM2, Gemma 3, MiniLM) or a
path to a Hugging Face ``config.json``.  A :class:`Workload` adds the
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

Every per-layer row repeats L times.  The activation row has kind SILU for SwiGLU models and
GELU for GELU / GeGLU models.  A model without a gate projection has no ``gate`` row.

Sliding-window layers (window w) see min(c, w) keys: their attention rows (and softmax) use
min(c, w) for the context, so a model with sliding and global layers has one group of attention
rows per window (layers of a group share rows; repeat = layers in the group), and the decode
blocks are laid out group by group (QK^T, PV, softmax of the first group, then the next).
An encoder runs once over all S tokens (B*S tokens per projection, S x S bidirectional attention),
with no decode rows and no LM head.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
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


ACTIVATIONS: tuple[str, ...] = ("silu", "gelu", "gelu_tanh")


@dataclass(frozen=True)
class ModelShape:
    """The cost model's view of a transformer (built from a model config, see the module docstring).

    ``windows`` holds each layer's sliding window (``None``: global attention); ``()`` means every
    layer is global.  ``gated_ffn``: the FFN has a gate projection (SwiGLU / GeGLU).  ``encoder``:
    no decode, no LM head, bidirectional attention.
    """

    name: str
    layers: int
    dim: int
    heads: int
    kv_heads: int
    ffn_hidden: int
    vocab: int
    head_dim: int | None = None  # default dim // heads
    activation: str = "silu"  # silu | gelu | gelu_tanh
    gated_ffn: bool = True
    windows: tuple[int | None, ...] = ()
    encoder: bool = False

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}: allowed values are {', '.join(ACTIVATIONS)}")
        if self.windows and len(self.windows) != self.layers:
            raise ValueError(f"windows: needs one entry per layer ({self.layers}), got {len(self.windows)}")

    @property
    def dh(self) -> int:
        return self.head_dim if self.head_dim is not None else self.dim // self.heads

    @property
    def act_kind(self) -> int:
        """Op kind of the FFN activation (both GELUs are costed as a two-pass GELU)."""
        return SILU if self.activation == "silu" else GELU

    def attention_groups(self) -> tuple[tuple[int | None, int], ...]:
        """(window, layers) per attention kind, in order of first appearance."""
        counts: dict[int | None, int] = {}
        for w in (self.windows or (None,) * self.layers):
            counts[w] = counts.get(w, 0) + 1
        return tuple(counts.items())

    def with_kv_heads(self, kv_heads: int) -> "ModelShape":
        if kv_heads < 1 or self.heads % kv_heads:
            raise ValueError(f"kv_heads={kv_heads}: must divide heads={self.heads}")
        from dataclasses import replace

        return replace(self, kv_heads=kv_heads)

    @classmethod
    def from_config(cls, config, name: str) -> "ModelShape":
        """The cost view of a model config (:mod:`mugi_jax.models.config`: ``LlamaConfig`` /
        ``DecoderConfig`` decoders, ``BertConfig`` encoders).

        Reads the shapes, the activation, the per-layer sliding windows (``config.window(i)``),
        ``config.causal`` (``False``: an encoder) and the op list from ``config.param_shapes()``:
        layer 0's projections must have the shapes this module's op list gives them.
        """
        layers, d, h, g = config.n_layers, config.dim, config.n_heads, config.n_kv_heads
        dh, F = config.head_dim, config.ffn_dim
        activation = getattr(config, "activation", "silu")
        encoder = not getattr(config, "causal", True)
        windows: tuple[int | None, ...] = ()
        if hasattr(config, "window"):
            windows = tuple(config.window(i) for i in range(layers))
            if all(w is None for w in windows):
                windows = ()
        shapes = {k: v for k, v in config.param_shapes().items() if k.startswith("layers.0.")}

        def proj(role: str) -> tuple[int, ...] | None:
            hit = [v for k, v in shapes.items() if k.split(".")[-2 if k.endswith((".kernel", ".bias")) else -1] == role
                   and not k.endswith(".bias")]
            return hit[0] if hit else None

        want = {"q_proj": (d, h * dh), "k_proj": (d, g * dh), "v_proj": (d, g * dh),
                "o_proj": (h * dh, d), "up_proj": (d, F), "down_proj": (F, d)}
        for role, shape in want.items():
            if proj(role) != shape:
                raise ValueError(f"{name}: layer 0 {role} has shape {proj(role)}, expected {shape}")
        gate = proj("gate_proj")
        if gate is not None and gate != (d, F):
            raise ValueError(f"{name}: layer 0 gate_proj has shape {gate}, expected {(d, F)}")
        return cls(name=name, layers=layers, dim=d, heads=h, kv_heads=g, ffn_hidden=F,
                   vocab=config.vocab_size, head_dim=dh, activation=activation,
                   gated_ffn=gate is not None, windows=windows, encoder=encoder)


def _named_configs() -> dict:
    """Registered model name -> its config (imported lazily: the models package pulls in Flax)."""
    from mugi_jax.models import config as mc

    out = {
        "llama2-7b": mc.LLAMA2_7B, "llama2-13b": mc.LLAMA2_13B, "llama2-70b": mc.LLAMA2_70B,
        "llama2-70b-gqa": mc.LLAMA2_70B_GQA, "llama3-8b": mc.LLAMA3_8B, "llama3-70b": mc.LLAMA3_70B,
        "smollm2-135m": mc.SMOLLM2_135M, "minilm-l6": mc.MINILM_L6,
    }
    if hasattr(mc, "GEMMA3_270M"):
        out["gemma3-270m"] = mc.GEMMA3_270M
    return out


#: Registered names (``get_model``); a path to a Hugging Face ``config.json`` is accepted as well.
MODEL_NAMES: tuple[str, ...] = (
    "llama2-7b", "llama2-13b", "llama2-70b", "llama2-70b-gqa", "llama3-8b", "llama3-70b",
    "smollm2-135m", "gemma3-270m", "minilm-l6",
)
GQA_KV_HEADS: tuple[int, ...] = (8, 16, 32, 64)
BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
SEQ_LENS: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096)


def _config_from_json(path: Path):
    """The model config of a Hugging Face ``config.json`` (BERT encoders, or the decoder families
    the loaders read), as the Flax model would be built from it."""
    from mugi_jax.models.config import BertConfig
    from mugi_jax.models.loaders import config_from_hf

    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        return BertConfig.from_hf(raw) if raw.get("model_type") == "bert" else config_from_hf(raw)
    except (ValueError, KeyError, TypeError) as err:  # the loaders' CheckpointError is a ValueError
        raise ValueError(f"model={str(path)!r}: cannot read a model config from it ({err})") from err


@functools.lru_cache(maxsize=None)
def _shape_of(name: str) -> ModelShape:
    configs = _named_configs()
    if name in configs:
        return ModelShape.from_config(configs[name], name)
    path = Path(name)
    if name.endswith(".json") or path.is_dir():
        cfg_path = path / "config.json" if path.is_dir() else path
        if not cfg_path.is_file():
            raise ValueError(f"model={name!r}: no such file {str(cfg_path)!r}")
        return ModelShape.from_config(_config_from_json(cfg_path), cfg_path.parent.name
                                      if cfg_path.name == "config.json" else cfg_path.stem)
    raise ValueError(f"model={name!r}: valid names are {', '.join(MODEL_NAMES)}, or a path to a "
                     "Hugging Face config.json")


def get_model(name: str, kv_heads: int | None = None) -> ModelShape:
    """The cost view of a model: a registered name (``llama2-70b-gqa``, ``gemma3-270m``, ...) or a
    path to a Hugging Face ``config.json`` (or its directory); ``kv_heads`` overrides the KV heads."""
    model = _shape_of(str(name))
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
    """Context lengths with attention-decode rows (0 for an encoder)."""
    return 0 if workload.model.encoder else workload.seq_len - workload.prefill_len


def layer_gemms(md: ModelShape, tokens: int) -> list[tuple[str, int, int, int, int]]:
    """The per-layer projection and FFN GEMMs of ``tokens`` tokens: ``(op, class, m, k, n)``,
    in table order (the op list of the model config: no ``gate`` row without a gate projection)."""
    d, h, g, dh, F = md.dim, md.heads, md.kv_heads, md.dh, md.ffn_hidden
    rows = [("proj_q", PROJECTION, tokens, d, h * dh), ("proj_k", PROJECTION, tokens, d, g * dh),
            ("proj_v", PROJECTION, tokens, d, g * dh), ("proj_o", PROJECTION, tokens, h * dh, d)]
    if md.gated_ffn:
        rows.append(("gate", FFN, tokens, d, F))
    rows += [("up", FFN, tokens, d, F), ("down", FFN, tokens, F, d)]
    return rows


def attention_shapes(md: ModelShape, batch: int, queries: int, keys):
    """(QK^T, PV, softmax) shapes of ``queries`` query tokens per sequence against ``keys`` keys
    (an int or an array of context lengths): ``(b, m, k, n)``, ``(b, m, k, n)``, ``(m, n)``."""
    h, g, dh = md.heads, md.kv_heads, md.dh
    hq = h // g
    return ((batch * g, hq * queries, dh, keys), (batch * g, hq * queries, keys, dh),
            (batch * h * queries, keys))


def _windowed(keys, window: int | None):
    return keys if window is None else np.minimum(keys, window)


def op_table(workload: Workload, convention: DecodeConvention = DecodeConvention()) -> OpTable:
    """The op table of a whole run (prefill + decode, all layers); see the module docstring."""
    md, B, S, P = workload.model, workload.batch, workload.seq_len, workload.prefill_len
    d, h, g, F, V, L = md.dim, md.heads, md.kv_heads, md.ffn_hidden, md.vocab, md.layers
    if h % g:
        raise ValueError(f"kv_heads={g} must divide heads={h}")
    if md.encoder:  # one pass over all S tokens, no decode, no LM head
        P = S
    T = convention.linear_decode_steps if convention.linear_decode_steps is not None else S - P
    T_head = convention.lm_head_decode_steps if convention.lm_head_decode_steps is not None else S - P
    rows: list[tuple[int, int, int, int, int, int, int, int, float]] = []

    def add(op: str, kind: int, cls: int, phase: int, b: int, m: int, k: int, n: int, rep: float):
        rows.append((OP_NAMES.index(op), kind, cls, phase, b, m, k, n, rep))

    phases = ((0, B * P, float(L)),) if md.encoder else ((0, B * P, float(L)), (1, B, float(L) * T))
    for phase, tok, rep in phases:
        for op, cls, m, k, n in layer_gemms(md, tok):
            add(op, GEMM, cls, phase, 1, m, k, n, rep)
        add("act", md.act_kind, NONLINEAR, phase, 1, F, 1, tok, rep)
    if not md.encoder:
        add("lm_head", GEMM, OUTPUT, 0, 1, B * P, d, V, 1.0)
        add("lm_head", GEMM, OUTPUT, 1, 1, B, d, V, float(T_head))
    groups = md.attention_groups()
    for window, n_layers in groups:
        qk, pv, sm = attention_shapes(md, B, P, int(_windowed(P, window)))
        add("qkt", GEMM, ATTENTION, 0, *qk, float(n_layers))
        add("pv", GEMM, ATTENTION, 0, *pv, float(n_layers))
        add("softmax", SOFTMAX, NONLINEAR, 0, 1, sm[0], 1, sm[1], float(n_layers))
    base = np.array(rows, dtype=np.float64).reshape(-1, 9)

    cur = np.arange(P + 1, S + 1, dtype=np.int64)
    C = cur.size
    one = np.ones(C, dtype=np.int64)

    def block(op: str, kind: int, cls: int, b: int, m, k, n, rep: int) -> np.ndarray:
        return np.stack([
            one * OP_NAMES.index(op), one * kind, one * cls, one, one * b,
            np.broadcast_to(m, (C,)), np.broadcast_to(k, (C,)), np.broadcast_to(n, (C,)),
            one * rep,
        ], axis=1).astype(np.float64)

    dec = []
    for window, n_layers in (groups if C else ()):
        qk, pv, sm = attention_shapes(md, B, 1, _windowed(cur, window))
        dec += [block("qkt", GEMM, ATTENTION, *qk, n_layers), block("pv", GEMM, ATTENTION, *pv, n_layers),
                block("softmax", SOFTMAX, NONLINEAR, 1, sm[0], 1, sm[1], n_layers)]
    allrows = np.concatenate([base, *dec]) if dec else base
    cols = [allrows[:, i].astype(np.int64) for i in range(8)] + [allrows[:, 8]]
    return OpTable(*cols)


def _decode_blocks(model: ModelShape) -> int:
    """Attention-decode blocks of an op table (QK^T, PV, softmax per attention group)."""
    return 0 if model.encoder else 3 * len(model.attention_groups())


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
    n_blk = _decode_blocks(model)
    c_max = s_max - prefill_len if n_blk else 0
    n_fixed = union.rows - n_blk * c_max
    reps = np.zeros((len(seq_lens), union.rows), dtype=np.float64)
    for i, s in enumerate(seq_lens):
        t = op_table(Workload(model, batch, s, prefill_len), convention)
        c = s - prefill_len if n_blk else 0
        reps[i, :n_fixed] = t.repeat[:n_fixed]
        for blk in range(n_blk):  # qkt, pv, softmax blocks per group, each a prefix of the union's
            reps[i, n_fixed + blk * c_max: n_fixed + blk * c_max + c] = t.repeat[n_fixed + blk * c: n_fixed + (blk + 1) * c]
    return union, reps


class PrefixFamily(NamedTuple):
    """:func:`op_table_family` in the layout the sweep kernel uses (see its docstring)."""

    fixed: OpTable  # rows whose shape does not depend on seq_len (F rows)
    fixed_reps: Float[np.ndarray, "S F"]  # their repeat for each seq_len
    gemm_blocks: OpTable  # attention decode GEMMs: 2 blocks (QK^T, PV) per group x C_max rows, flattened
    nl_blocks: OpTable  # softmax decode: 1 block per group x C_max rows
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
    n_blk = _decode_blocks(model)
    c_max = max(seq_lens) - prefill_len if n_blk else 0
    n_fixed = union.rows - n_blk * c_max

    def take(blocks) -> OpTable:
        idx = np.concatenate([np.arange(n_fixed + i * c_max, n_fixed + (i + 1) * c_max) for i in blocks]
                             + [np.zeros(0, np.int64)])
        return OpTable(*(col[idx] for col in union))

    return PrefixFamily(
        fixed=OpTable(*(col[:n_fixed] for col in union)),
        fixed_reps=reps[:, :n_fixed],
        gemm_blocks=take([i for i in range(n_blk) if i % 3 != 2]),
        nl_blocks=take([i for i in range(n_blk) if i % 3 == 2]),
        prefix=np.asarray([s - prefill_len if n_blk else 0 for s in seq_lens], dtype=np.int64),
        c_max=c_max,
    )


def table_rows(workload: Workload) -> int:
    """Rows of :func:`op_table` for this workload (fixed rows + the attention-decode blocks)."""
    md = workload.model
    per_phase = len(layer_gemms(md, 1)) + 1
    groups = len(md.attention_groups())
    if md.encoder:
        return per_phase + 3 * groups
    return 2 * per_phase + 2 + 3 * groups + _decode_blocks(md) * attention_decode_rows(workload)
