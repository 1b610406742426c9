"""Activation capture as a numerics implementation selected by a rule.

:class:`Capture` wraps a policy (or one implementation): every op it is selected for resolves to
the wrapped implementation, behind a recorder that adds the op's input to a :class:`Recorder`
(at trace time, inside the traced function) and then calls the wrapped implementation, so the
numerics are unchanged.  Select it with a rule, e.g. to record every softmax input::

    rec = Recorder(mode="full")
    policy = numerics.preset("mugi").prepend(
        numerics.Rule(r".*\\.attn\\.softmax", Capture(numerics.preset("mugi"), rec)))

What a record holds (``mode``):

* ``"full"``: the op's input tensor itself;
* ``"histogram"`` (default), bounded-size summaries of the input rounded to BF16: ``exp_hist``
  (256 bins of the biased exponent field; zero/subnormal in bin 0, inf/NaN in bin 255),
  ``mant_hist`` (128 bins of the 7-bit mantissa), ``neg`` (negative elements), ``count``,
  ``absmax`` (max finite |x|), ``kind`` (the op kind) and, for a GEMM with an INT4 weight,
  ``code_hist`` (16 bins, code + 8).  Masked ``-inf`` attention scores land in bin 255.

Inputs recorded per op kind: ``linear`` the activations (and the weight, for ``code_hist``),
``scores`` the queries, ``softmax`` the scores, ``context`` the probabilities, ``activation``
the pre-activation; ``kv_cache`` ops are not recorded.

``Recorder.output_offsets`` (``{op path: array}``) is added to those ops' outputs: zeros leave
the forward pass unchanged and make ``jax.grad`` with respect to them the gradient of the loss
with respect to the op's output (the tuner's Fisher data).

:func:`capture_activations` runs a model with :class:`Capture` selected for every op and returns
``(logits, records)`` keyed by op path (``layers.{i}.attn.q_proj`` ... ``lm_head``).
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Int

from mugi_jax import nonlinear as nl
from mugi_jax import numerics

__all__ = ["Capture", "Recorder", "capture_activations", "summarize"]


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
    """Collects the records of the :class:`Capture` implementations that point to it.

    Args:
      mode: ``"histogram"`` (bounded summaries) or ``"full"`` (the input tensors themselves).
      include: if given, only op paths containing one of these substrings are recorded.
    """

    def __init__(self, mode: Literal["histogram", "full"] = "histogram",
                 include: tuple[str, ...] | None = None) -> None:
        if mode not in ("histogram", "full"):
            raise ValueError(f"mode: must be 'histogram' or 'full', got {mode!r}")
        self.mode = mode
        self.include = include
        self.records: dict[str, Any] = {}
        self.output_offsets: dict[str, Array] = {}

    def add(self, path: str, kind: str, x: Array, weight: Any = None) -> None:
        if self.include is not None and not any(s in path for s in self.include):
            return
        if self.mode == "full":
            self.records[path] = x
        else:
            rec: dict[str, Any] = summarize(x, weight)
            rec["kind"] = kind
            self.records[path] = rec

    def offset(self, path: str, out: Array) -> Array:
        off = self.output_offsets.get(path)
        return out if off is None else out + off


class _Recording:
    """The implementation of one op under :class:`Capture`: records, then delegates."""

    def __init__(self, impl: Any, path: str, kind: str, recorder: Recorder) -> None:
        self._impl, self._path, self._kind, self._rec = impl, path, kind, recorder

    def __getattr__(self, name: str) -> Any:  # label, scheme, quantizes_kv_at_use, ...
        return getattr(self._impl, name)

    def _run(self, x: Array, out: Array, weight: Any = None) -> Array:
        self._rec.add(self._path, self._kind, x, weight)
        return self._rec.offset(self._path, out)

    def softmax(self, x: Array, axis: int = -1, tokens: int | None = None, scale: Any = None,
                mask: Any = None) -> Array:
        x = nl.masked_scaled(x, scale, mask)  # the record is the softmax's input
        return self._run(x, self._impl.softmax(x, axis=axis, tokens=tokens))

    def activation(self, x: Array, fn: str) -> Array:
        return self._run(x, self._impl.activation(x, fn))

    def silu(self, x: Array) -> Array:
        return self.activation(x, "silu")

    def gelu(self, x: Array, approximate: bool = False) -> Array:
        return self.activation(x, "gelu_tanh" if approximate else "gelu")

    def matmul(self, x: Array, w: Any) -> Array:
        return self._run(x, self._impl.matmul(x, w), w)

    def scores(self, q: Array, k: Array, kv: Any = None, q_slots: Array | None = None,
               causal: int | None = None) -> Array:
        return self._run(q, self._impl.scores(q, k, kv, q_slots, causal=causal))

    def context(self, p: Array, v: Array, kv: Any = None, q_slots: Array | None = None,
                causal: int | None = None) -> Array:
        return self._run(p, self._impl.context(p, v, kv, q_slots, causal=causal))


class Capture(eqx.Module):
    """Records the input of every op it is selected for into ``recorder``, then runs the
    implementation ``inner`` resolves the op to (``inner``: a :class:`~mugi_jax.numerics.Policy`
    or one implementation)."""

    inner: Any
    recorder: Recorder = eqx.field(static=True)

    def resolve(self, path: str, kind: str) -> Any:
        impl = self.inner.resolve(path, kind) if hasattr(self.inner, "resolve") else self.inner
        if kind == numerics.KV_CACHE:
            return impl
        return _Recording(impl, path, kind, self.recorder)

    @property
    def label(self) -> str:
        inner = self.inner
        return f"capture({inner.name if isinstance(inner, numerics.Policy) else inner.label})"


def capturing(policy: Any, recorder: Recorder, pattern: str = ".*") -> numerics.Policy:
    """``policy`` with :class:`Capture` selected for the ops ``pattern`` matches."""
    policy = numerics.preset(policy)
    return policy.prepend(numerics.Rule(pattern, Capture(policy, recorder), required=False))


def capture_activations(model: Any, tokens: Int[Array, "batch seq"], policy: Any = None,
                        mode: Literal["histogram", "full"] = "histogram",
                        include: tuple[str, ...] | None = None) -> tuple[Array, dict[str, Any]]:
    """Run ``model`` on ``tokens`` under ``policy`` and return ``(logits, records)``.

    The run is jit-compiled; ``kind`` entries are plain strings, everything else is arrays.
    """
    from flax import nnx

    policy = numerics.preset(policy if policy is not None else "exact", numerics.family_of(model))
    policy.check(model)
    graphdef, state = nnx.split(model)
    kinds: dict[str, str] = {}

    @functools.partial(jax.jit)
    def run(state: Any, tokens: Array) -> tuple[Array, dict[str, Any]]:
        m = nnx.merge(graphdef, state)
        rec = Recorder(mode, include)
        logits, _ = m(tokens, capturing(policy, rec))
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

