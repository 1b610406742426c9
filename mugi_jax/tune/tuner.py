r"""Budgets, the gradient tuner and the two baselines (uniform grid search, per-layer greedy).

**Objective.**  The default ``objective="fisher"`` works on captured activations only
(:func:`mugi_jax.tune.model.capture`: one forward + backward pass of the exact model on the
calibration windows).  For unit :math:`u` (one function of one layer) with captured inputs
:math:`x`, exact outputs :math:`y^*(x)` and output gradients :math:`g = \partial L/\partial y`
(:math:`L` the summed next-token NLL), the increase of the loss caused by the approximation is
estimated to second order with the diagonal empirical Fisher matrix,

.. math:: \Delta L \approx \tfrac12 \sum_u \sum_i g_i^2\,\big(\tilde y_i(\theta_u) - y_i^*\big)^2
          =: \tfrac12 \sum_u D_u(\theta_u),

which is also the second-order expansion of the KL divergence to the exact model.  The gradient
is :math:`\partial D_u/\partial\theta_u = 2\sum_i g_i^2 (\tilde y_i - y^*_i)\,\partial\tilde
y_i/\partial\theta_u`, with :math:`\partial\tilde y/\partial\theta` from the relaxations.
``objective="ce"`` / ``"kl"`` instead differentiate the model end to end (relaxed units in every
layer) on the calibration windows: next-token cross-entropy, or KL to the exact model's logits.
Each step is then a forward + backward pass of the model (counted as a model evaluation).

**Budgets.**  ``mantissa_bits<=B`` and ``window<=W`` (and the ``e_top`` range) are box constraints,
enforced by projection after every optimizer step; ``table_entries<=``, ``cycles<=``,
``energy_pj<=`` constrain the element-weighted model averages of :mod:`mugi_jax.tune.cost` and are
handled with a Lagrangian: :math:`\mathcal L = D/D_0 + \sum_k \mu_k (c_k/c_k^{max} - 1)`, dual ascent
:math:`\mu_k \leftarrow \max(0, \mu_k + \eta\,(c_k/c_k^{max} - 1))`.  ``cost_weight`` adds
:math:`\lambda\, E/E_0` (energy, weighted objective) for Pareto sweeps.

**Discretization.**  After annealing the temperature to its final value the parameters are rounded
unit by unit: every floor/ceil combination of (e_top, W, b) inside the box is scored with the hard
(exact) units on the captured data, :math:`D_u + \sum_k \mu_k c_{k,u}/c_k^{max}`, and the best kept;
a cost budget still violated is repaired greedily (lower b or W where :math:`D` grows least).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from mugi_jax.nonlinear.config import VLPConfig
from mugi_jax.tune import cost as tcost
from mugi_jax.tune.model import (FUNCS, Calibration, UnitParams, capture, configs_from_params,
                                 make_windows, relaxed_policy, window_nll)
from mugi_jax.tune.relax import VLPParams, relaxed_softmax, relaxed_vlp

__all__ = ["STARTS", "Budget", "parse_budget", "TuneResult", "tune", "unit_errors", "hard_unit_errors", "grid_search",
           "greedy_search", "config_cost", "OBJECTIVES", "TUNABLE", "E_TOP_RANGE"]

TUNABLE = ("e_top", "window", "mantissa_bits")
OBJECTIVES = ("fisher", "ce", "kl")
#: The published grid search range of e_top (also the tuner's box).
E_TOP_RANGE = (-4, 4)
_PASSES = np.array([tcost.PASSES["softmax"], tcost.PASSES["silu"]], np.float32)


# ---------------------------------------------------------------------------------------------
# Budgets


@dataclasses.dataclass(frozen=True)
class Budget:
    """Hardware budget: box limits on the parameters plus optional limits on model-average cost."""

    mantissa_bits: int = 7
    window: int = 12
    e_top_min: int = E_TOP_RANGE[0]
    e_top_max: int = E_TOP_RANGE[1]
    table_entries: float | None = None
    cycles: float | None = None
    energy_pj: float | None = None

    def cost_limits(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in tcost.COST_METRICS if getattr(self, k) is not None}

    def describe(self) -> str:
        parts = [f"mantissa_bits<={self.mantissa_bits}", f"window<={self.window}",
                 f"e_top>={self.e_top_min}", f"e_top<={self.e_top_max}"]
        parts += [f"{k}<={v:g}" for k, v in self.cost_limits().items()]
        return ",".join(parts)


_BUDGET_KEYS = ("mantissa_bits", "window", "e_top") + tcost.COST_METRICS


def parse_budget(text: str | Budget | None, lut_exponents: int = 12) -> Budget:
    """Parse ``"mantissa_bits<=3,window<=8"`` (keys: mantissa_bits<= (1..7), window<=
    (1..lut_exponents), e_top<= / e_top>= (-126..127), table_entries<=, cycles<=, energy_pj<=
    (> 0)).  Raises ``ValueError`` naming the offending term and the allowed keys/values."""
    if isinstance(text, Budget):
        return text
    vals: dict[str, Any] = {}
    if text is None or not text.strip():
        return Budget(window=lut_exponents)
    for term in text.split(","):
        term = term.strip()
        mt = re.fullmatch(r"([a-z_]+)\s*(<=|>=)\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)", term)
        if not mt:
            raise ValueError(f"budget: malformed term {term!r}; expected KEY<=VALUE (or e_top>=VALUE)"
                             f" with KEY in {_BUDGET_KEYS}")
        key, op, num = mt.group(1), mt.group(2), float(mt.group(3))
        if key not in _BUDGET_KEYS:
            raise ValueError(f"budget: unknown parameter {key!r}; allowed: {_BUDGET_KEYS}")
        if op == ">=" and key != "e_top":
            raise ValueError(f"budget: {key} takes only '<=' (an upper limit), got {term!r}")
        if key in ("mantissa_bits", "window", "e_top"):
            if num != int(num):
                raise ValueError(f"budget: {key} must be an integer, got {num:g}")
            num = int(num)
        if key == "mantissa_bits" and not 1 <= num <= 7:
            raise ValueError(f"budget: mantissa_bits must be in [1, 7], got {num}")
        if key == "window" and not 1 <= num <= lut_exponents:
            raise ValueError(f"budget: window must be in [1, {lut_exponents}] (lut_exponents), "
                             f"got {num}")
        if key == "e_top" and not -126 + lut_exponents - 1 <= num <= 127:
            raise ValueError(f"budget: e_top must be in [{-126 + lut_exponents - 1}, 127], got {num}")
        if key in tcost.COST_METRICS and not num > 0:
            raise ValueError(f"budget: {key} must be > 0, got {num:g}")
        name = {("e_top", "<="): "e_top_max", ("e_top", ">="): "e_top_min"}.get((key, op), key)
        vals[name] = num
    b = Budget(**{"window": lut_exponents, **vals})
    if b.e_top_min > b.e_top_max:
        raise ValueError(f"budget: e_top range is empty ({b.e_top_min} > {b.e_top_max})")
    return b


# ---------------------------------------------------------------------------------------------
# The proxy objective


class _CalArrays(eqx.Module):
    """The arrays of a :class:`Calibration` (jit arguments) and its static ``softmax_tokens``."""

    softmax_x: Array
    softmax_g: Array
    silu_x: Array
    silu_g: Array
    softmax_tokens: int = eqx.field(static=True)

    @classmethod
    def of(cls, cal: Any) -> "_CalArrays":
        return cls(cal.softmax_x, cal.softmax_g, cal.silu_x, cal.silu_g, int(cal.softmax_tokens))


def _unit_stack(p: UnitParams, col: int) -> VLPParams:
    return VLPParams(p.e_top[:, col], p.window[:, col], p.mantissa_bits[:, col])


def hard_unit_errors(cal: Any, params: UnitParams, base_cfg: VLPConfig = VLPConfig()
                     ) -> Float[Array, "L F"]:
    """Jitted :func:`unit_errors` of the exact (hard) units."""
    return _hard_errors(params, _CalArrays.of(cal), base_cfg)


def unit_errors(cal: Calibration, params: UnitParams, base_cfg: VLPConfig = VLPConfig(), *,
                temperature: float | Array = 0.0, rounding: str = "ste",
                key: Array | None = None, exact_values: bool = True) -> Float[Array, "L F"]:
    r""":math:`D_u = \sum_i g_i^2 (\tilde y_i - y^*_i)^2` for every unit (module docstring).
    The softmax's window groups hold one query token's rows (``cal.softmax_tokens``), as in the
    model's forward pass."""
    n = cal.softmax_x.shape[0]
    t = int(cal.softmax_tokens)
    keys = (None, None) if key is None else tuple(jax.random.split(key, 2))
    kw = dict(temperature=temperature, rounding=rounding, exact_values=exact_values)

    def sm_err(x: Array, g: Array, p: VLPParams, k: Array | None) -> Array:
        y = relaxed_softmax(x, p, base_cfg, key=k, tokens=t, **kw)
        return jnp.sum(jnp.square(g * (y - jax.nn.softmax(x, axis=-1))))

    def si_err(x: Array, g: Array, p: VLPParams, k: Array | None) -> Array:
        y = relaxed_vlp(x, "silu", p, base_cfg, key=k, **kw)
        return jnp.sum(jnp.square(g * (y - jax.nn.silu(x))))

    out = []
    for col, (fn, xs, gs) in enumerate(((sm_err, cal.softmax_x, cal.softmax_g),
                                        (si_err, cal.silu_x, cal.silu_g))):
        k = keys[col]
        if k is None:
            out.append(jax.lax.map(lambda a: fn(a[0], a[1], VLPParams(*a[2]), None),
                                   (xs, gs, tuple(_unit_stack(params, col)))))
        else:
            ks = jax.random.split(k, n)
            out.append(jax.lax.map(lambda a: fn(a[0], a[1], VLPParams(*a[2]), a[3]),
                                   (xs, gs, tuple(_unit_stack(params, col)), ks)))
    return jnp.stack(out, axis=1)


# ---------------------------------------------------------------------------------------------
# Cost of configs


def config_cost(params: UnitParams, elements: np.ndarray, group: int = 256) -> dict[str, float]:
    """Element-weighted model-average cost of (integer or continuous) parameters."""
    passes = jnp.broadcast_to(jnp.asarray(_PASSES), params.window.shape)
    c = tcost.model_cost(params.mantissa_bits, params.window, passes, elements, group)
    return {k: float(v) for k, v in c.items()}


# ---------------------------------------------------------------------------------------------
# Tuner


@dataclasses.dataclass
class TuneResult:
    """What :func:`tune` returns.

    ``configs``: per-layer ``(softmax, silu)`` :class:`VLPConfig`; ``params``: their integer
    :class:`UnitParams`; ``proxy``: the hard :math:`\\sum_u D_u` of the result and of the start;
    ``cost``: model-average cost; ``model_evals``: full-model passes over the calibration windows
    (capture = 1); ``history``: per-step objective; ``seconds``."""

    configs: list[tuple[VLPConfig, VLPConfig]]
    params: UnitParams
    proxy: float
    proxy_start: float
    cost: dict[str, float]
    model_evals: int
    history: list[dict[str, float]]
    seconds: float
    calib_nll: float | None = None

    def config_table(self) -> list[dict[str, Any]]:
        return [{"layer": i, **{fn: {"e_top": c.e_top, "window": c.window,
                                     "mantissa_bits": c.mantissa_bits}
                                for fn, c in zip(FUNCS, row)}}
                for i, row in enumerate(self.configs)]


def _box(budget: Budget, lut: int) -> tuple[np.ndarray, np.ndarray]:
    lo = np.array([budget.e_top_min, 1, 1], np.float32)
    hi = np.array([budget.e_top_max, min(budget.window, lut), budget.mantissa_bits], np.float32)
    return lo, hi


def _project(p: UnitParams, lo: np.ndarray, hi: np.ndarray, frozen: dict[str, Array]) -> UnitParams:
    out = [jnp.clip(v, lo[i], hi[i]) for i, v in enumerate(p)]
    for i, name in enumerate(TUNABLE):
        if name in frozen:
            out[i] = frozen[name]
    return UnitParams(*out)


def _default_start(n_layers: int, budget: Budget, lut: int, start: Any) -> UnitParams:
    if isinstance(start, UnitParams):
        return start
    if isinstance(start, Sequence) and start and isinstance(start[0], tuple):
        from mugi_jax.tune.model import params_from_configs
        return params_from_configs(list(start))
    lo, hi = _box(budget, lut)
    e0 = float(np.clip(3, lo[0], hi[0]))
    shape = (n_layers, len(FUNCS))
    return UnitParams(jnp.full(shape, e0), jnp.full(shape, hi[1]), jnp.full(shape, hi[2]))


#: Named starting points: ``"default"`` (e_top = 3, W and b at the budget's maximum) and
#: ``"uniform-proxy"`` (the e_top per function, shared by all layers, minimising the hard proxy
#: summed over layers: one hard proxy evaluation per e_top in the budget's range).
STARTS = ("default", "uniform-proxy")


def _uniform_proxy_start(cal: Calibration, p0: UnitParams, budget: Budget,
                         base_cfg: VLPConfig) -> UnitParams:
    es = list(range(budget.e_top_min, budget.e_top_max + 1))
    d = np.stack([np.asarray(hard_unit_errors(cal, UnitParams(jnp.full_like(p0.e_top, e), p0.window,
                                                              p0.mantissa_bits), base_cfg))
                  for e in es])  # E L F
    best = [es[int(np.argmin(d[:, :, f].sum(axis=1)))] for f in range(d.shape[2])]
    return UnitParams(jnp.broadcast_to(jnp.asarray(best, jnp.float32), p0.e_top.shape),
                      p0.window, p0.mantissa_bits)


_DEFAULT_OPTIMIZER = optax.adam(0.1)


@functools.partial(jax.jit, static_argnames=("base_cfg",))
def _hard_errors(p: UnitParams, data: _CalArrays, base_cfg: VLPConfig) -> Array:
    return unit_errors(data, p, base_cfg)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _exact_logits(graphdef: Any, state: Any, tokens: Array, valid: Array) -> tuple:
    from flax import nnx
    return nnx.merge(graphdef, state)(tokens, valid=valid)


def _policy_key(base: Any) -> Any:
    from mugi_jax import numerics
    return numerics.preset(base)


@dataclasses.dataclass(frozen=True)
class _Static:
    objective: str
    base_cfg: VLPConfig
    rounding: str
    per_layer: bool
    frozen: tuple[str, ...]
    limit_keys: tuple[str, ...]
    optimizer: Any
    graphdef: Any
    base_policy: Any
    n_layers: int
    dual_lr: float
    cost_weight: float


def _expander(per_layer: bool) -> Callable[[UnitParams], UnitParams]:
    if per_layer:
        return lambda q: q
    # one value per function, shared by all layers
    return lambda q: UnitParams(*(jnp.broadcast_to(jnp.mean(v, axis=0, keepdims=True), v.shape)
                                  for v in q))


@functools.lru_cache(maxsize=32)
def _step_fn(st: _Static) -> Callable:
    """The jitted optimizer step for one static setting (cached: repeated tunings reuse it)."""
    expand = _expander(st.per_layer)
    group = st.base_cfg.window_group

    def costs(p: UnitParams, c: dict) -> dict[str, Array]:
        per = tcost.unit_cost(p.mantissa_bits, p.window, c["passes"], group)
        return {k: jnp.sum(c["w_el"] * v) for k, v in per.items()}

    def accuracy(p: UnitParams, tau: Array, key: Array, data: Any, c: dict) -> Array:
        k = key if st.rounding == "noise" else None
        if st.objective == "fisher":
            d = unit_errors(data, p, st.base_cfg, temperature=tau, rounding=st.rounding, key=k)
            return jnp.sum(d) / c["d_ref"]
        from flax import nnx
        state, tokens, valid, exact_logp = data
        mask = (valid[:, 1:] & valid[:, :-1]).astype(jnp.float32)
        pol = relaxed_policy(p, st.n_layers, st.base_cfg, st.base_policy, temperature=tau,
                             rounding=st.rounding, key=k)
        logits, _ = nnx.merge(st.graphdef, state)(tokens, pol, valid=valid)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        if st.objective == "ce":
            nll = -jnp.take_along_axis(logp[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
            return jnp.sum(nll * mask) / jnp.sum(mask)
        kl = jnp.sum(jnp.exp(exact_logp) * (exact_logp - logp), axis=-1)[:, :-1]
        return jnp.sum(kl * mask) / jnp.sum(mask)

    def penalty(p: UnitParams, mu: dict, c: dict) -> Array:
        cc = costs(p, c)
        pen = st.cost_weight * cc["energy_pj"] / c["e_ref"]
        for k in st.limit_keys:
            pen = pen + mu[k] * (cc[k] / c["limits"][k] - 1.0)
        return pen

    @jax.jit
    def step(p: UnitParams, opt_state: Any, mu: dict, tau: Array, key: Array, data: Any,
             c: dict) -> tuple:
        def total(q: UnitParams) -> tuple[Array, Array]:
            q = expand(q)
            acc = accuracy(q, tau, key, data, c)
            return acc + penalty(q, mu, c), acc
        (val, acc), g = jax.value_and_grad(total, has_aux=True)(p)
        g = UnitParams(*(jnp.zeros_like(gi) if name in st.frozen else gi
                         for name, gi in zip(TUNABLE, g)))
        upd, opt_state = st.optimizer.update(g, opt_state, p)
        p = _project(optax.apply_updates(p, upd), c["lo"], c["hi"], c["frozen"])
        cc = costs(expand(p), c)
        mu = {k: jnp.maximum(0.0, mu[k] + st.dual_lr * (cc[k] / c["limits"][k] - 1.0))
              for k in mu}
        return p, opt_state, mu, val, acc

    return step


def tune(model: Any, calib_tokens: Any, budget: str | Budget | None = "mantissa_bits<=3,window<=8",
         params: Sequence[str] = TUNABLE, per_layer: bool = True,
         optimizer: optax.GradientTransformation | None = None, steps: int = 60, *,
         objective: str = "fisher", base_cfg: VLPConfig = VLPConfig(),
         base_policy: Any = "exact", context: int = 128, rounding: str = "ste",
         temperature: tuple[float, float] = (0.3, 0.02), cost_weight: float = 0.0,
         dual_lr: float = 0.5, start: Any = None, seed: int = 0,
         calibration: Calibration | None = None, verify: bool = False,
         log: Callable[[str], None] | None = None) -> TuneResult:
    r"""Tune per-layer (or uniform, ``per_layer=False``) VLP parameters under ``budget`` by
    gradient descent on the relaxed units (module docstring), then discretize.

    Args:
      model: a Llama (:mod:`mugi_jax.models`).
      calib_tokens: calibration token ids (cut into windows of ``context``).
      budget: a :class:`Budget` or a string for :func:`parse_budget`.
      params: which of ``e_top``, ``window``, ``mantissa_bits`` are learned (the others stay at
        the start value).
      optimizer: an optax transformation (default ``optax.adam(0.1)``).
      steps: optimizer steps; the temperature anneals geometrically from ``temperature[0]`` to
        ``temperature[1]``.
      objective: ``"fisher"`` (captured activations), ``"ce"`` or ``"kl"`` (end to end).
      rounding: mantissa relaxation, ``"ste"`` or ``"noise"``.
      cost_weight: weight :math:`\lambda` of the normalised energy term (weighted objective).
      calibration: a :func:`mugi_jax.tune.model.capture` result to reuse (then no model pass is
        counted for the capture).
      start: ``None``/``"default"`` (e_top = 3, W and b at the budget maximum),
        ``"uniform-proxy"`` (see :data:`STARTS`), or explicit :class:`UnitParams` / configs.
      verify: also measure the calibration NLL of the result (one more model evaluation).
    """
    t0 = time.perf_counter()
    for p in params:
        if p not in TUNABLE:
            raise ValueError(f"params: unknown parameter {p!r}; allowed: {TUNABLE}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: must be one of {OBJECTIVES}, got {objective!r}")
    if steps < 0:
        raise ValueError(f"steps: must be >= 0, got {steps}")
    if cost_weight < 0:
        raise ValueError(f"cost_weight: must be >= 0, got {cost_weight}")
    lut = base_cfg.lut_exponents
    budget = parse_budget(budget, lut)
    lo, hi = _box(budget, lut)
    n_layers = model.config.n_layers
    log = log or (lambda s: None)
    evals = 0
    if calibration is None:
        calibration = capture(model, calib_tokens, context, base_policy)
        evals += 1
    cal = calibration
    if start is None:
        start = "default"
    if isinstance(start, str):
        if start not in STARTS:
            raise ValueError(f"start: must be one of {STARTS} (or UnitParams/configs), got {start!r}")
        p0 = _default_start(n_layers, budget, lut, None)
        if start == "uniform-proxy":
            p0 = _uniform_proxy_start(cal, p0, budget, base_cfg)
    else:
        p0 = _default_start(n_layers, budget, lut, start)
    p0 = _project(p0, lo, hi, {})
    frozen = {name: v for name, v in zip(TUNABLE, p0) if name not in params}
    limits = budget.cost_limits()
    elements = cal.elements
    passes = jnp.broadcast_to(jnp.asarray(_PASSES), p0.window.shape)
    w_el = jnp.asarray(elements / elements.sum(), jnp.float32)

    cal_arrays = _CalArrays.of(cal)
    hard_errors = lambda p: _hard_errors(p, cal_arrays, base_cfg)  # noqa: E731
    d0 = hard_errors(p0)
    d_ref = float(jnp.sum(d0)) + 1e-30
    e_ref = float(tcost.model_cost(p0.mantissa_bits, p0.window, passes, elements)["energy_pj"])
    if objective == "fisher":
        data: Any = cal_arrays
        graphdef = None
    else:
        from flax import nnx
        graphdef, state = nnx.split(model)
        exact_logp = jnp.zeros(())
        if objective == "kl":
            logits, _ = _exact_logits(graphdef, state, cal.tokens, cal.valid)
            exact_logp = jax.nn.log_softmax(logits, axis=-1)
        data = (state, cal.tokens, cal.valid, exact_logp)
    opt = optimizer if optimizer is not None else _DEFAULT_OPTIMIZER
    static = _Static(objective, base_cfg, rounding, per_layer, tuple(sorted(frozen)),
                     tuple(limits), opt, graphdef, _policy_key(base_policy), n_layers,
                     float(dual_lr), float(cost_weight))
    step = _step_fn(static)
    consts = {"d_ref": jnp.float32(d_ref), "e_ref": jnp.float32(e_ref), "w_el": w_el,
              "passes": passes, "limits": {k: jnp.float32(v) for k, v in limits.items()},
              "lo": jnp.asarray(lo), "hi": jnp.asarray(hi),
              "frozen": {k: v for k, v in frozen.items()}}
    mu = {k: jnp.float32(0.0) for k in limits}
    expand = _expander(per_layer)

    p = p0
    opt_state = opt.init(p)
    key = jax.random.PRNGKey(seed)
    history = []
    t_hi, t_lo = temperature
    for k in range(steps):
        tau = t_hi * (t_lo / t_hi) ** (k / max(steps - 1, 1))
        key, sub = jax.random.split(key)
        p, opt_state, mu, val, acc = step(p, opt_state, mu, jnp.float32(tau), sub, data,
                                          consts)
        if objective != "fisher":
            evals += 1
        history.append({"step": k, "temperature": tau, "objective": float(val),
                        "accuracy": float(acc)})
        if k % 10 == 0 or k == steps - 1:
            log(f"step {k:3d} tau {tau:.3f} objective {float(val):.4f} accuracy {float(acc):.4f}")
    p = expand(p)
    p_int = _discretize(p, hard_errors, lo, hi, frozen, mu, limits, passes, w_el, base_cfg,
                        per_layer)
    d_final = float(jnp.sum(hard_errors(p_int)))
    configs = configs_from_params(p_int, base_cfg)
    res = TuneResult(configs, p_int, d_final, float(jnp.sum(d0)),
                     config_cost(p_int, elements, base_cfg.window_group), evals, history,
                     time.perf_counter() - t0)
    if verify:
        res.calib_nll = window_nll(model, cal.tokens, cal.valid, p_int, base_cfg, base_policy)
        res.model_evals += 1
    res.seconds = time.perf_counter() - t0
    return res


def _discretize(p: UnitParams, hard_errors: Callable, lo: np.ndarray, hi: np.ndarray,
                frozen: dict, mu: dict, limits: dict, passes: Array, w_el: Array,
                base_cfg: VLPConfig, per_layer: bool) -> UnitParams:
    """Per-unit best floor/ceil rounding by the hard proxy (+ Lagrangian cost), then repair."""
    cands = []
    for choice in itertools.product((0, 1), repeat=3):
        vals = []
        for i, (name, v) in enumerate(zip(TUNABLE, p)):
            # floor/ceil (not floor + 1): an integer value has one rounding, itself
            r = (jnp.ceil(v) if choice[i] else jnp.floor(v)) if name not in frozen else jnp.round(v)
            vals.append(jnp.clip(r, lo[i], hi[i]))
        cands.append(UnitParams(*vals))
    scores = []
    norm = jnp.sum(hard_errors(UnitParams(*(jnp.round(v) for v in p)))) + 1e-30
    for c in cands:
        d = hard_errors(c)
        per = tcost.unit_cost(c.mantissa_bits, c.window, passes, base_cfg.window_group)
        s = d / norm
        for k, lim in limits.items():
            s = s + float(mu[k]) * w_el * per[k] / lim
        if not per_layer:
            s = jnp.broadcast_to(jnp.sum(s, axis=0, keepdims=True), s.shape)
        scores.append(s)
    best = jnp.argmin(jnp.stack(scores), axis=0)
    out = UnitParams(*(jnp.choose(best, [c[i] for c in cands]) for i in range(3)))
    return _repair(out, hard_errors, lo, limits, passes, w_el, base_cfg)


def _repair(p: UnitParams, hard_errors: Callable, lo: np.ndarray, limits: dict, passes: Array,
            w_el: Array, base_cfg: VLPConfig) -> UnitParams:
    """While a cost limit is exceeded, lower b (or W) of the unit whose hard error grows least
    per unit of cost saved."""
    for _ in range(400):
        per = tcost.unit_cost(p.mantissa_bits, p.window, passes, base_cfg.window_group)
        over = {k: float(jnp.sum(w_el * per[k])) / lim for k, lim in limits.items()
                if float(jnp.sum(w_el * per[k])) > lim * (1 + 1e-6)}
        if not over:
            return p
        k = max(over, key=over.get)
        d = hard_errors(p)
        best, best_score = None, math.inf
        for idx, floor in ((2, lo[2]), (1, lo[1])):
            cur = p[idx]
            cand_v = jnp.maximum(cur - 1, floor)
            q = UnitParams(*(cand_v if i == idx else v for i, v in enumerate(p)))
            saved = w_el * (per[k] - tcost.unit_cost(q.mantissa_bits, q.window, passes,
                                                     base_cfg.window_group)[k])
            grow = hard_errors(q) - d
            score = np.where(np.asarray(saved) > 0, np.asarray(grow) / np.maximum(np.asarray(saved), 1e-30), np.inf)
            j = np.unravel_index(np.argmin(score), score.shape)
            if score[j] < best_score:
                best_score = score[j]
                best = (idx, j, float(cand_v[j]))
        if best is None or not math.isfinite(best_score):
            return p
        idx, j, v = best
        p = UnitParams(*(v_.at[j].set(v) if i == idx else v_ for i, v_ in enumerate(p)))
    return p


# ---------------------------------------------------------------------------------------------
# Baselines


@dataclasses.dataclass
class SearchResult:
    """Result of a baseline search: best configs and score, evaluations used, all trials."""

    configs: list[tuple[VLPConfig, VLPConfig]]
    params: UnitParams
    score: float
    evals: int
    trials: list[dict[str, Any]]
    seconds: float


def _uniform(n_layers: int, e_sm: int, e_si: int, w: int, b: int) -> UnitParams:
    shape = (n_layers, 1)
    col = lambda a, c: jnp.concatenate([jnp.full(shape, a, jnp.float32),  # noqa: E731
                                        jnp.full(shape, c, jnp.float32)], axis=1)
    return UnitParams(col(e_sm, e_si), col(w, w), col(b, b))


def grid_search(model: Any, calib_tokens: Any, budget: str | Budget | None = "mantissa_bits<=3,window<=8",
                *, windows: Sequence[int] | None = None, mantissa_bits: Sequence[int] | None = None,
                e_tops: Sequence[int] | None = None, base_cfg: VLPConfig = VLPConfig(),
                base_policy: Any = "exact", context: int = 128,
                log: Callable[[str], None] | None = None) -> SearchResult:
    """The published uniform search: one (e_top of the softmax exp, e_top of SiLU, W, b) for all
    layers, every combination evaluated by the calibration NLL of the full model (hard units,
    bit-identical to the exact kernels).  Defaults: e_top in the budget's range (-4..4), W and b at
    the budget's maximum (larger never hurts accuracy; the paper fixes b = 3)."""
    t0 = time.perf_counter()
    budget = parse_budget(budget, base_cfg.lut_exponents)
    e_tops = list(e_tops) if e_tops is not None else list(range(budget.e_top_min, budget.e_top_max + 1))
    windows = list(windows) if windows is not None else [min(budget.window, base_cfg.lut_exponents)]
    bits = list(mantissa_bits) if mantissa_bits is not None else [budget.mantissa_bits]
    for w in windows:
        if not 1 <= w <= min(budget.window, base_cfg.lut_exponents):
            raise ValueError(f"windows: {w} is outside the budget (1..{budget.window})")
    for b in bits:
        if not 1 <= b <= budget.mantissa_bits:
            raise ValueError(f"mantissa_bits: {b} is outside the budget (1..{budget.mantissa_bits})")
    win, val = make_windows(calib_tokens, context)
    n = model.config.n_layers
    log = log or (lambda s: None)
    trials = []
    best = None
    for e_sm, e_si, w, b in itertools.product(e_tops, e_tops, windows, bits):
        p = _uniform(n, e_sm, e_si, w, b)
        nll = window_nll(model, win, val, p, base_cfg, base_policy)
        trials.append({"e_top_softmax": e_sm, "e_top_silu": e_si, "window": w,
                       "mantissa_bits": b, "calib_nll": nll})
        log(f"grid e_top=({e_sm},{e_si}) W={w} b={b}: nll {nll:.4f}")
        if best is None or nll < best[0]:
            best = (nll, p)
    return SearchResult(configs_from_params(best[1], base_cfg), best[1], best[0], len(trials),
                        trials, time.perf_counter() - t0)


def greedy_search(evaluate: Callable[[UnitParams], Any], start: UnitParams,
                  budget: str | Budget | None = "mantissa_bits<=3,window<=8", *,
                  e_tops: Sequence[int] | None = None, windows: Sequence[int] | None = None,
                  mantissa_bits: Sequence[int] | None = None, sweeps: int = 1,
                  max_evals: int | None = None, base_cfg: VLPConfig = VLPConfig(),
                  additive: bool = False) -> SearchResult:
    """Per-layer greedy (coordinate) search: for each unit in turn (layer by layer, softmax then
    SiLU), try every candidate (e_top, W, b) with the other units fixed and keep the best.

    ``evaluate(params)`` scores a full per-unit parameter set (lower is better) - the calibration
    NLL of the model (``additive=False``: one model evaluation per call) or, with
    ``additive=True``, a function returning per-unit scores ``(L, F)`` (the proxy
    :func:`unit_errors`), in which case a whole sweep is scored with one call per candidate.
    """
    t0 = time.perf_counter()
    lut_exponents = base_cfg.lut_exponents
    budget = parse_budget(budget, lut_exponents)
    e_tops = list(e_tops) if e_tops is not None else list(range(budget.e_top_min, budget.e_top_max + 1))
    windows = list(windows) if windows is not None else [min(budget.window, lut_exponents)]
    bits = list(mantissa_bits) if mantissa_bits is not None else [budget.mantissa_bits]
    cands = list(itertools.product(e_tops, windows, bits))
    p = start
    trials: list[dict[str, Any]] = []
    evals = 0
    if additive:
        # per-unit scores of every candidate applied to all units at once
        per = []
        for e, w, b in cands:
            q = UnitParams(jnp.full_like(p.e_top, e), jnp.full_like(p.window, w),
                           jnp.full_like(p.mantissa_bits, b))
            per.append(np.asarray(evaluate(q)))
            evals += 1
        per = np.stack(per)  # C L F
        best = np.argmin(per, axis=0)
        arr = np.asarray(cands, np.float32)[best]  # L F 3
        p = UnitParams(*(jnp.asarray(arr[..., i]) for i in range(3)))
        score = float(np.sum(np.min(per, axis=0)))
        trials.append({"score": score})
        return SearchResult(configs_from_params(p, base_cfg), p, score, evals, trials,
                            time.perf_counter() - t0)
    best_score = float(evaluate(p))
    evals += 1
    n_l, n_f = p.e_top.shape
    for _ in range(sweeps):
        for layer in range(n_l):
            for col in range(n_f):
                for e, w, b in cands:
                    if max_evals is not None and evals >= max_evals:
                        break
                    q = UnitParams(p.e_top.at[layer, col].set(e), p.window.at[layer, col].set(w),
                                   p.mantissa_bits.at[layer, col].set(b))
                    if all(float(a[layer, col]) == float(c[layer, col]) for a, c in zip(p, q)):
                        continue
                    s = float(evaluate(q))
                    evals += 1
                    trials.append({"layer": layer, "fn": FUNCS[col], "e_top": e, "window": w,
                                   "mantissa_bits": b, "score": s})
                    if s < best_score:
                        best_score, p = s, q
    return SearchResult(configs_from_params(p, base_cfg), p, best_score, evals, trials,
                        time.perf_counter() - t0)
