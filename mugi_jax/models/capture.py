"""Activation capture: record the inputs of every nonlinear op and GEMM during a forward pass.

The model calls :func:`record` at the entry of every GEMM (projections, LM head, QK^T, PV) and
nonlinear op (softmax, SiLU).  Outside a :class:`Recorder` context this is a no-op (nothing is
traced).  Inside one - entered *within* the traced function - each call adds either the full
input (``mode="full"``) or bounded-size summaries (``mode="histogram"``, the default):

* ``exp_hist``: counts of the BF16 biased exponent field (256 bins) of the input rounded to BF16
  (zero/subnormal in bin 0, inf/NaN in bin 255);
* ``mant_hist``: counts of the 7-bit BF16 mantissa field (128 bins);
* ``neg``: the number of negative elements; ``count``: elements; ``absmax``: max |x| (finite);
* for GEMMs with an INT4 weight: ``code_hist``, counts of the weight codes (16 bins, code + 8).

Masked ``-inf`` attention scores are counted in bin 255 and excluded from ``absmax``.

Use :func:`capture_activations` to run a model and get ``(logits, records)`` with records keyed
``"layers.{i}.{op}"`` (ops: ``q_proj k_proj v_proj qk softmax pv o_proj gate_proj up_proj silu
down_proj``) and ``"lm_head"``.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, Int

__all__ = ["Recorder", "record", "capture_activations", "summarize"]

_ACTIVE: list["Recorder"] = []


def summarize(x: Array, weight: Any = None) -> dict[str, Array]:
    """Bounded-size summary of a tensor (see the module docstring)."""
    xb = jnp.asarray(x).astype(jnp.bfloat16)
    bits = jax.lax.bitcast_convert_type(xb, jnp.uint16).astype(jnp.int32).reshape(-1)
    exp = (bits >> 7) & 0xFF
    mant = bits & 0x7F
    finite = jnp.isfinite(xb.astype(jnp.float32)).reshape(-1)
    out = {
        "exp_hist": jnp.bincount(exp, length=256),
        "mant_hist": jnp.bincount(mant, length=128),
        "neg": jnp.sum((bits >> 15) & 1),
        "count": jnp.asarray(exp.size, jnp.int32),
        "absmax": jnp.max(jnp.where(finite, jnp.abs(xb.astype(jnp.float32)).reshape(-1), 0.0)),
    }
    codes = getattr(weight, "codes", None)
    if codes is not None:
        out["code_hist"] = jnp.bincount(codes.reshape(-1).astype(jnp.int32) + 8, length=16)
    return out


class Recorder:
    """Collects the inputs recorded by :func:`record` while it is the active recorder.

    Args:
      mode: ``"histogram"`` (bounded summaries) or ``"full"`` (the input tensors themselves).
      include: if given, only names containing one of these substrings are recorded.
    """

    def __init__(self, mode: Literal["histogram", "full"] = "histogram",
                 include: tuple[str, ...] | None = None) -> None:
        if mode not in ("histogram", "full"):
            raise ValueError(f"mode: must be 'histogram' or 'full', got {mode!r}")
        self.mode = mode
        self.include = include
        self.records: dict[str, Any] = {}

    def __enter__(self) -> "Recorder":
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _ACTIVE.remove(self)

    def add(self, name: str, kind: str, x: Array, weight: Any = None) -> None:
        if self.include is not None and not any(s in name for s in self.include):
            return
        if self.mode == "full":
            self.records[name] = x
        else:
            rec = summarize(x, weight)
            rec["kind"] = kind  # type: ignore[assignment]
            self.records[name] = rec


def record(name: str, kind: str, x: Array, weight: Any = None) -> None:
    """Record ``x`` (the input of op ``name`` of kind ``"gemm"`` or ``"nonlinear"``) in the
    active recorder, if any."""
    if _ACTIVE:
        _ACTIVE[-1].add(name, kind, x, weight)


def capture_activations(model: Any, tokens: Int[Array, "batch seq"], policy: Any = None,
                        mode: Literal["histogram", "full"] = "histogram",
                        include: tuple[str, ...] | None = None) -> tuple[Array, dict[str, Any]]:
    """Run ``model`` on ``tokens`` under ``policy`` and return ``(logits, records)``.

    The run is jit-compiled; ``kind`` entries are plain strings, everything else is arrays.
    """
    from flax import nnx

    from mugi_jax import numerics

    policy = numerics.preset(policy if policy is not None else "exact")
    graphdef, state = nnx.split(model)
    kinds: dict[str, str] = {}

    @functools.partial(jax.jit)
    def run(state: Any, tokens: Array) -> tuple[Array, dict[str, Any]]:
        m = nnx.merge(graphdef, state)
        with Recorder(mode, include) as rec:
            logits, _ = m(tokens, policy)
        recs = {}
        for k, v in rec.records.items():
            if isinstance(v, dict):
                kinds[k] = v.pop("kind")
            recs[k] = v
        return logits, recs

    logits, recs = run(state, jnp.asarray(tokens, jnp.int32))
    for k, kind in kinds.items():
        recs[k] = dict(recs[k], kind=kind)
    return logits, recs
