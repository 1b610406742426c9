r"""The model side of tuning: per-layer VLP parameters in a Llama forward pass.

* :class:`UnitParams` - per-layer, per-function parameters, arrays of shape ``(layers, 2)``
  (column 0: the softmax exponential, column 1: SiLU).
* :class:`RelaxedVLP` - the relaxed VLP unit of :mod:`mugi_jax.tune.relax` as a numerics
  implementation (an equinox module: parameters as array leaves, configuration static).
* :func:`relaxed_policy` - an ordinary :class:`~mugi_jax.numerics.Policy` whose rules give the
  softmax/SiLU of layer ``i`` a :class:`RelaxedVLP` with traced parameters, in front of the base
  policy's rules.  At temperature 0 and integer parameters a forward pass under it equals the
  forward pass under :func:`exact_policy` bit for bit (tested).
* :func:`exact_policy` - the discrete per-layer config as per-layer rules with the exact kernels,
  used for the held-out verification.
* :func:`capture` - one forward + backward pass of the exact model on the calibration windows
  with a capture rule on the tuned units: the inputs of every softmax and SiLU and the gradient
  of the summed next-token cross-entropy w.r.t. their outputs (the data of the Fisher proxy,
  :mod:`mugi_jax.tune.tuner`).
* :func:`window_nll` - jitted calibration NLL for a stack of parameters (one compilation serves
  every config of a grid search).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, ClassVar, NamedTuple

import equinox as eqx

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from mugi_jax import nonlinear as nl
from mugi_jax import numerics
from mugi_jax.models.capture import Recorder, capturing
from mugi_jax.nonlinear.config import VLPConfig
from mugi_jax.tune.relax import VLPParams, relaxed_softmax, relaxed_vlp

__all__ = ["FUNCS", "UnitParams", "RelaxedVLP", "relaxed_policy", "exact_policy", "capture", "Calibration",
           "window_nll", "make_windows", "configs_from_params", "params_from_configs"]

#: The tuned functions of a Llama layer, in column order.
FUNCS = ("softmax", "silu")


class UnitParams(NamedTuple):
    """Per-unit parameters, each ``(layers, len(FUNCS))`` float32."""

    e_top: Float[Array, "L F"]
    window: Float[Array, "L F"]
    mantissa_bits: Float[Array, "L F"]

    def unit(self, layer: int, col: int) -> VLPParams:
        return VLPParams(self.e_top[layer, col], self.window[layer, col],
                         self.mantissa_bits[layer, col])


def params_from_configs(configs: list[tuple[VLPConfig, VLPConfig]]) -> UnitParams:
    """Integer :class:`UnitParams` of per-layer ``(softmax, silu)`` configs."""
    arr = lambda f: jnp.asarray([[getattr(c, f) for c in row] for row in configs], jnp.float32)  # noqa: E731
    return UnitParams(arr("e_top"), arr("window"), arr("mantissa_bits"))


def configs_from_params(p: UnitParams, base: VLPConfig) -> list[tuple[VLPConfig, VLPConfig]]:
    """Per-layer ``(softmax, silu)`` :class:`VLPConfig` of integer-valued parameters (rounded)."""
    e, w, b = (np.rint(np.asarray(v)).astype(int) for v in p)
    return [tuple(dataclasses.replace(base, e_top=int(e[i, c]), window=int(w[i, c]),
                                      mantissa_bits=int(b[i, c])) for c in range(len(FUNCS)))
            for i in range(e.shape[0])]


class RelaxedVLP(eqx.Module):
    """A relaxed VLP unit (:mod:`mugi_jax.tune.relax`) as a numerics implementation: the unit's
    parameters (and the temperature, and the noise key) are array leaves, the base configuration
    and the rounding mode static.  Implements softmax (VLP exponential) and activations; outputs
    are float32 holding BF16 values (at temperature 0), cast to the input dtype."""

    params: VLPParams
    temperature: Any = 0.0
    key: Array | None = None
    base: VLPConfig = eqx.field(default=VLPConfig(), static=True)
    rounding: str = eqx.field(default="ste", static=True)
    exact_values: bool = eqx.field(default=True, static=True)
    kinds: ClassVar[tuple[str, ...]] = (numerics.SOFTMAX, numerics.ACTIVATION)
    label: ClassVar[str] = "relaxed VLP"

    def _kw(self) -> dict[str, Any]:
        return dict(temperature=self.temperature, rounding=self.rounding, key=self.key,
                    exact_values=self.exact_values)

    def softmax(self, x: Array, axis: int = -1, tokens: int | None = None, scale: Any = None,
                mask: Any = None) -> Array:
        x = nl.masked_scaled(x, scale, mask)
        return relaxed_softmax(x, self.params, self.base, axis=axis, tokens=tokens,
                               **self._kw()).astype(x.dtype)

    def activation(self, x: Array, fn: str) -> Array:
        return relaxed_vlp(x, fn, self.params, self.base, **self._kw()).astype(x.dtype)

    def silu(self, x: Array) -> Array:
        return self.activation(x, "silu")


#: The op paths (patterns) of the tuned units of layer ``i``, in :data:`FUNCS` order.
def _unit_paths(i: int) -> tuple[str, str]:
    return f"layers.{i}.attn.softmax", f"layers.{i}.mlp.act"


def relaxed_policy(params: UnitParams, n_layers: int, base_cfg: VLPConfig = VLPConfig(),
                   base: numerics.Policy | str = "exact", *, temperature: float | Array = 0.0,
                   rounding: str = "ste", key: Array | None = None,
                   exact_values: bool = True) -> numerics.Policy:
    """``base`` with the softmax/SiLU of layer ``i`` given to :class:`RelaxedVLP` units with
    ``params.unit(i, .)`` (rules in front of ``base``'s).  Inputs are rounded to BF16 inside
    the relaxed units (as the ``mugi`` presets do at the unit's entry).  ``key`` (noise
    rounding) is split per unit.  A pytree with the parameters as leaves: build it inside the
    traced function, or pass it to ``jax.jit`` as an argument."""
    base = numerics.preset(base)
    keys = [None] * (2 * n_layers) if key is None else list(jax.random.split(key, 2 * n_layers))
    kw = dict(temperature=temperature, base=base_cfg, rounding=rounding, exact_values=exact_values)
    rules = []
    for i in range(n_layers):
        for col, path in enumerate(_unit_paths(i)):
            unit = RelaxedVLP(params.unit(i, col), key=keys[2 * i + col], **kw)
            rules.append(numerics.Rule(re.escape(path), unit, required=False))
    return base.prepend(*rules, name="relaxed")


def exact_policy(configs: list[tuple[VLPConfig, VLPConfig]], base: numerics.Policy | str = "exact",
                 name: str = "tuned") -> numerics.Policy:
    """A ``numerics.Policy`` with per-layer VLP softmax/SiLU configs (BF16 unit inputs) in front
    of ``base``'s rules (its GEMM/KV choices are kept)."""
    base = numerics.preset(base)
    rules = [numerics.Rule(re.escape(path), numerics.Nonlinear(cfg, bf16_input=True),
                           required=False)
             for i, row in enumerate(configs) for path, cfg in zip(_unit_paths(i), row)]
    return base.prepend(*rules, name=name)


def make_windows(tokens: Any, context: int) -> tuple[Int[Array, "B T"], Array]:
    """Non-overlapping windows of ``context`` tokens (a shorter final window of >= 2 tokens is
    padded and masked), as in :func:`mugi_jax.eval.perplexity`."""
    toks = np.asarray(tokens, np.int32).reshape(-1)
    if context < 2:
        raise ValueError(f"context: must be >= 2, got {context}")
    n_full, rest = divmod(len(toks), context)
    n = n_full + (1 if rest >= 2 else 0)
    if n == 0:
        raise ValueError(f"tokens: need at least 2 tokens, got {len(toks)}")
    win = np.zeros((n, context), np.int32)
    val = np.zeros((n, context), bool)
    win[:n_full] = toks[:n_full * context].reshape(n_full, context)
    val[:n_full] = True
    if n > n_full:
        win[-1, :rest] = toks[n_full * context:]
        val[-1, :rest] = True
    return jnp.asarray(win), jnp.asarray(val)


def _nll(logits: Array, tokens: Array, valid: Array) -> tuple[Array, Array]:
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    m = valid[:, 1:] & valid[:, :-1]
    return jnp.sum(jnp.where(m, nll, 0.0)), jnp.sum(m)


@functools.partial(jax.jit, static_argnames=("graphdef", "base_cfg", "base"))
def _window_nll(graphdef: Any, state: Any, tokens: Array, valid: Array, params: UnitParams,
                base_cfg: VLPConfig, base: numerics.Policy) -> tuple[Array, Array]:
    model = nnx.merge(graphdef, state)
    pol = relaxed_policy(params, model.config.n_layers, base_cfg, base, temperature=0.0)
    logits, _ = model(tokens, pol, valid=valid)
    return _nll(logits, tokens, valid)


def window_nll(model: Any, tokens: Int[Array, "B T"], valid: Array, params: UnitParams,
               base_cfg: VLPConfig = VLPConfig(), base: numerics.Policy | str = "exact"
               ) -> float:
    """Mean next-token NLL on the windows under the *hard* units (temperature 0) with integer
    ``params`` - bit-identical to the exact kernels, but the parameters are traced, so every
    config reuses one compiled function.  One call is one full-model evaluation."""
    graphdef, state = nnx.split(model)
    s, c = _window_nll(graphdef, state, tokens, valid, params, base_cfg, numerics.preset(base))
    return float(s) / max(int(c), 1)


@dataclasses.dataclass
class Calibration:
    """Captured calibration data (arrays stacked over layers).

    ``softmax_x``: attention scores ``(L, B, kv_heads, group*T, S)``, head-major rows as the
    model lays them out (masked entries ``-inf``); ``softmax_tokens``: the ``T`` of those rows
    (the proxy forms the VLP window groups of one query token's rows, as the model does:
    ``nl.softmax(..., tokens=T)``); ``silu_x``: gate pre-activations ``(L, B, T, ffn)``;
    ``*_g``: d(summed NLL)/d(output) of the exact model; ``elements``: ``(L, 2)`` non-masked
    elements per unit; ``tokens``/``valid``: the windows; ``nll``: exact-model mean NLL on them."""

    softmax_x: Array
    softmax_g: Array
    silu_x: Array
    silu_g: Array
    elements: np.ndarray
    tokens: Array
    valid: Array
    nll: float
    softmax_tokens: int

    def thin(self, softmax_tokens: int | None = None, silu_tokens: int | None = None,
             batch: int | None = None, seed: int = 0) -> "Calibration":
        """A cheaper copy for the proxy objective: the first ``batch`` windows, the score rows of
        ``softmax_tokens`` random query tokens (per window and KV head: every query head's row of
        each kept token, in order, so a window group still holds one token's rows) and
        ``silu_tokens`` random tokens per window.  ``tokens``/``valid``/``nll`` are kept (they
        describe the model evaluations)."""
        rng = np.random.default_rng(seed)
        sx, sg, ax, ag = self.softmax_x, self.softmax_g, self.silu_x, self.silu_g
        t = self.softmax_tokens
        if batch is not None:
            sx, sg, ax, ag = sx[:, :batch], sg[:, :batch], ax[:, :batch], ag[:, :batch]
        if softmax_tokens is not None and softmax_tokens < t:
            keep = np.sort(rng.choice(t, softmax_tokens, replace=False))
            heads = sx.shape[3] // t
            idx = (np.arange(heads)[:, None] * t + keep[None, :]).reshape(-1)  # head-major
            sx, sg, t = sx[:, :, :, idx], sg[:, :, :, idx], softmax_tokens
        if silu_tokens is not None and silu_tokens < ax.shape[2]:
            idx = np.sort(rng.choice(ax.shape[2], silu_tokens, replace=False))
            ax, ag = ax[:, :, idx], ag[:, :, idx]
        return dataclasses.replace(self, softmax_x=sx, softmax_g=sg, silu_x=ax, silu_g=ag,
                                   softmax_tokens=t)


def capture(model: Any, tokens: Any, context: int = 128, base: numerics.Policy | str = "exact"
            ) -> Calibration:
    """One forward + backward pass of the ``base`` model on ``tokens`` cut into windows of
    ``context``: records the softmax and SiLU inputs of every layer and the gradient of the
    summed NLL w.r.t. their outputs (a :class:`~mugi_jax.models.capture.Capture` rule on the
    tuned units; the gradient is taken w.r.t. zero offsets added to their outputs)."""
    base = numerics.preset(base)
    win, val = make_windows(tokens, context)
    graphdef, state = nnx.split(model)
    n_layers = model.config.n_layers
    paths = [_unit_paths(i) for i in range(n_layers)]
    pattern = "|".join(re.escape(p) for row in paths for p in row)

    def run(state: Any, eps: dict[str, Array] | None) -> tuple[Array, tuple[Array, dict]]:
        m = nnx.merge(graphdef, state)
        rec = Recorder("full")
        if eps is not None:
            rec.output_offsets = eps
        logits, _ = m(win, capturing(base, rec, pattern), valid=val)
        s, c = _nll(logits, win, val)
        return s, (c, rec.records)

    shapes = jax.eval_shape(lambda st: run(st, None)[1][1], state)
    eps0 = {k: jnp.zeros(v.shape, jnp.float32) for k, v in shapes.items()}

    @jax.jit
    def fwd_bwd(state: Any, eps: dict) -> tuple[Array, Array, dict, dict]:
        (s, (c, taps)), g = jax.value_and_grad(lambda e: run(state, e), has_aux=True)(eps)
        return s, c, taps, g

    s, c, taps, g = fwd_bwd(state, eps0)
    sx = jnp.stack([taps[p[0]] for p in paths])
    sg = jnp.stack([g[p[0]] for p in paths])
    ax = jnp.stack([taps[p[1]] for p in paths])
    ag = jnp.stack([g[p[1]] for p in paths])
    n_sm = np.asarray(jnp.sum(jnp.isfinite(sx[0])))
    elements = np.stack([np.full(n_layers, n_sm), np.full(n_layers, ax[0].size)], axis=1)
    return Calibration(sx, sg, ax, ag, elements.astype(np.float64), win, val,
                       float(s) / max(int(c), 1), int(win.shape[1]))
