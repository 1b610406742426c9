"""The end-to-end tuning run behind ``mugi-jax tune`` and ``experiments/tuning.py``.

Splits (fixed so results are comparable): the corpus is tokenized without BOS; calibration =
tokens ``[0, calib_tokens)``, held-out = tokens ``[heldout_start, heldout_start + heldout_tokens)``
with ``heldout_start >= calib_tokens`` (no overlap; checked).  Both are cut into windows of
``context`` tokens.  The captured calibration data (thinned, see
:meth:`mugi_jax.tune.model.Calibration.thin`) is cached under ``$MUGI_JAX_DATA/cache/tune``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from mugi_jax.nonlinear.config import VLPConfig
from mugi_jax.tune.model import Calibration, capture, exact_policy, make_windows, window_nll
from mugi_jax.tune.tuner import (Budget, config_cost, grid_search, parse_budget, tune)

__all__ = ["Splits", "splits", "cached_calibration", "heldout_ppl", "run"]

THIN = {"softmax_tokens": 24, "silu_tokens": 24}


@dataclasses.dataclass(frozen=True)
class Splits:
    calib: np.ndarray
    heldout: np.ndarray
    calib_range: tuple[int, int]
    heldout_range: tuple[int, int]


def splits(tokenizer: Any, corpus: str, calib_tokens: int = 256, heldout_tokens: int = 1024,
           heldout_start: int = 2048) -> Splits:
    """Disjoint calibration / held-out token ranges of ``corpus`` (module docstring)."""
    from mugi_jax import data
    from mugi_jax.eval import corpus_tokens

    if calib_tokens < 2 or heldout_tokens < 2:
        raise ValueError("calib_tokens and heldout_tokens must be >= 2")
    if heldout_start < calib_tokens:
        raise ValueError(f"heldout_start ({heldout_start}) must be >= calib_tokens ({calib_tokens}):"
                         " the held-out split may not overlap the calibration split")
    ids = np.asarray(corpus_tokens(tokenizer, data.corpus_text(corpus),
                                   heldout_start + heldout_tokens), np.int32)
    if len(ids) < heldout_start + heldout_tokens:
        raise ValueError(f"corpus {corpus!r} has only {len(ids)} tokens")
    return Splits(ids[:calib_tokens], ids[heldout_start:heldout_start + heldout_tokens],
                  (0, calib_tokens), (heldout_start, heldout_start + heldout_tokens))


def _cache_dir() -> Path:
    from mugi_jax import data
    return data.data_dir() / "cache" / "tune"


def cached_calibration(model: Any, tokens: np.ndarray, name: str, context: int = 128,
                       thin: dict[str, int] | None = None, seed: int = 0
                       ) -> tuple[Calibration, bool]:
    """Captured (and thinned) calibration data, cached on disk by a key of the model name, the
    tokens, ``context``, ``thin`` and ``seed``.  Returns ``(calibration, from_cache)``."""
    from mugi_jax import data

    thin = THIN if thin is None else thin
    key = hashlib.sha256(json.dumps([name, np.asarray(tokens).tolist(), context, thin, seed])
                         .encode()).hexdigest()[:16]
    path = _cache_dir() / f"{name}-{key}.npz"
    blob = data.load_derived(path)  # verified (size, sha256); a damaged file is recomputed
    if blob is not None:
        z = np.load(io.BytesIO(blob))
        cal = Calibration(*(jnp.asarray(z[k]) for k in ("softmax_x", "softmax_g", "silu_x",
                                                          "silu_g")),
                          z["elements"], jnp.asarray(z["tokens"]), jnp.asarray(z["valid"]),
                          float(z["nll"]), int(z["softmax_tokens"]))
        return cal, True
    cal = capture(model, tokens, context).thin(seed=seed, **thin)
    buf = io.BytesIO()
    np.savez(buf, softmax_x=np.asarray(cal.softmax_x), softmax_g=np.asarray(cal.softmax_g),
             silu_x=np.asarray(cal.silu_x), silu_g=np.asarray(cal.silu_g), elements=cal.elements,
             tokens=np.asarray(cal.tokens), valid=np.asarray(cal.valid), nll=cal.nll,
             softmax_tokens=cal.softmax_tokens)
    data.save_derived(path, buf.getvalue())
    return cal, False


def heldout_ppl(model: Any, tokens: np.ndarray, configs: list[tuple[VLPConfig, VLPConfig]] | None,
                context: int = 128, exact_kernels: bool = True) -> float:
    """Held-out perplexity of per-layer configs (``None``: the exact FP32 model).
    ``exact_kernels=True`` builds a ``numerics.Policy`` and runs :func:`mugi_jax.eval.perplexity`
    (the exact VLP kernels, one compilation per config); ``False`` uses the hard relaxed units with
    traced parameters (bit-identical, one compilation for all configs)."""
    import math

    from mugi_jax.eval import perplexity
    from mugi_jax.tune.model import params_from_configs

    if configs is None:
        return perplexity(model, tokens, "exact", context=context, max_tokens=None)["ppl"]
    if exact_kernels:
        return perplexity(model, tokens, exact_policy(configs), context=context,
                          max_tokens=None)["ppl"]
    win, val = make_windows(tokens, context)
    return math.exp(window_nll(model, win, val, params_from_configs(configs), configs[0][0]))


def run(model_name: str = "smollm2-135m", corpus: str = "sotu",
        budget: str | Budget = "mantissa_bits<=3,window<=8", *, steps: int = 30,
        calib_tokens: int = 256, heldout_tokens: int = 1024, heldout_start: int = 2048,
        context: int = 128, objective: str = "fisher", rounding: str = "ste", seed: int = 0,
        grid: bool = True, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Tune, run the uniform grid baseline, verify both on the held-out split with the exact
    kernels.  Returns the summary dict printed by ``mugi-jax tune --json``."""
    from mugi_jax import models

    log = log or (lambda s: None)
    t0 = time.perf_counter()
    log(f"loading {model_name}")
    model, tok, _ = models.load(model_name)
    b = parse_budget(budget)
    sp = splits(tok, corpus, calib_tokens, heldout_tokens, heldout_start)
    cal, cached = cached_calibration(model, sp.calib, model_name, context, seed=seed)
    log(f"calibration: {'cache' if cached else 'captured'}")
    log(f"tuning {steps} steps (the first step compiles)")
    res = tune(model, sp.calib, b, steps=steps, objective=objective, rounding=rounding,
               seed=seed, calibration=cal, context=context, log=log)
    log("held-out perplexity of the tuned config (compiles its kernels)")
    tuned_evals = res.model_evals + 1  # the capture (cached or not, it is one model pass)
    out: dict[str, Any] = {
        "model": model_name, "corpus": corpus, "budget": b.describe(),
        "calib_tokens": list(sp.calib_range), "heldout_tokens": list(sp.heldout_range),
        "objective": objective, "steps": steps,
        "heldout_ppl": heldout_ppl(model, sp.heldout, res.configs, context),
        "model_evals": tuned_evals, "cost": res.cost, "proxy": res.proxy,
        "proxy_start": res.proxy_start,
    }
    log(f"tuned held-out ppl {out['heldout_ppl']:.4f}")
    if grid:
        log("uniform grid baseline")
        g = grid_search(model, sp.calib, b, context=context, log=log)
        out["grid_best_ppl"] = heldout_ppl(model, sp.heldout, g.configs, context)
        out["grid_model_evals"] = g.evals
        out["grid_best"] = g.trials[int(np.argmin([t["calib_nll"] for t in g.trials]))]
        out["grid_cost"] = config_cost(g.params, cal.elements)
    out["exact_ppl"] = heldout_ppl(model, sp.heldout, None, context)
    out["config"] = res.config_table()
    out["seconds"] = time.perf_counter() - t0
    return out
