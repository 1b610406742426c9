"""Per-family VLP input windows: the ``e_top`` (largest stored exponent: the table covers
exponents ``e_top - lut_exponents + 1 .. e_top``) of the softmax exponential and of the FFN
activation, calibrated per model family and stored as data, one record per family, in
``mugi_jax/data/vlp_windows.json`` (:data:`mugi_jax.numerics.VLP_WINDOWS_FILE`).  The presets
read them (:func:`mugi_jax.numerics.preset` with ``family=``); a family without a record keeps
:class:`~mugi_jax.nonlinear.VLPConfig`'s default.

How a record is made (``python -m mugi_jax.tune.windows --model NAME --write``): one
``e_top`` per function for all layers (the published uniform rule), searched over the tuner's
range (:data:`mugi_jax.tune.tuner.E_TOP_RANGE`) one function at a time (softmax first, the
activation at the default; then the activation at the softmax's best), with the other VLP
parameters at the preset's (W = 8, 3 mantissa bits, 12 stored exponents, BF16 input).  Each
candidate is scored on calibration text with the hard units (the tuner's relaxed units at
temperature 0, bit-identical to the kernels; one compilation serves every candidate):

* decoders: the next-token NLL (:func:`mugi_jax.tune.model.window_nll`) of the last
  :data:`DECODER_TOKENS` tokens of Brown (never the evaluated prefix,
  :func:`mugi_jax.models.quantize.calibration_ids`), in windows of :data:`DECODER_CONTEXT`;
* encoders: the mean cosine distance of the sentence embeddings to the exact ones, on
  :data:`ENCODER_TOKENS` tokens of Brown file tails in 128-token windows
  (:func:`mugi_jax.models.quantize.encoder_calibration_ids`; never a file's first 512 tokens,
  which hold the evaluated passages).

A tie keeps the earlier candidate in the order default first, then ascending.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mugi_jax import numerics
from mugi_jax.nonlinear.config import VLPConfig

__all__ = ["calibrate", "DECODER_TOKENS", "DECODER_CONTEXT", "ENCODER_TOKENS", "MODELS"]

#: 4096 (as the AWQ weights' calibration): with 1024 tokens Gemma 3's GELU-tanh search picked
#: e_top 0 by 0.009 nats, a choice the last 4096 tokens reverse by 0.043 nats (docs/models.md).
DECODER_TOKENS = 4096
DECODER_CONTEXT = 256
ENCODER_TOKENS = 2048
#: The model a family's record is calibrated on.
MODELS = {"llama": "smollm2-135m", "gemma3": "gemma3-270m", "bert": "minilm-l6"}


def _score_fn(model: Any, tokenizer: Any) -> tuple[Any, dict[str, Any]]:
    """``score(params) -> float`` (lower is better) and a description of the calibration data."""
    from mugi_jax import data
    from mugi_jax.models import quantize as mq
    from mugi_jax.tune import model as tm

    if numerics.family_of(model) != "bert":
        ids = mq.calibration_ids(tokenizer, data.corpus_text("brown"), DECODER_TOKENS)
        win, val = tm.make_windows(ids, DECODER_CONTEXT)
        return (lambda p: tm.window_nll(model, win, val, p),
                {"objective": "next-token NLL (nats/token)",
                 "calibration": f"last {DECODER_TOKENS} tokens of brown, context {DECODER_CONTEXT}"})
    from mugi_jax.models import bert

    ids = mq.encoder_calibration_ids(tokenizer, [t for _, t in data.brown_documents()],
                                     ENCODER_TOKENS)
    toks = jnp.asarray(np.asarray(ids, np.int32).reshape(-1, mq.ENCODER_WINDOW))
    valid = jnp.ones(toks.shape, bool)
    graphdef, state = nnx.split(model)
    ref = bert.encode(model, toks, valid, "exact")

    @jax.jit
    def distance(state: Any, params: Any) -> jax.Array:
        m = nnx.merge(graphdef, state)
        pol = tm.relaxed_policy(params, m.config.n_layers, VLPConfig(), "exact", temperature=0.0)
        emb = bert.pool(m(toks, pol, valid=valid), valid)
        return jnp.mean(1.0 - jnp.sum(emb * ref, axis=-1))

    return (lambda p: float(distance(state, p)),
            {"objective": "mean cosine distance of the sentence embeddings to exact",
             "calibration": f"{ENCODER_TOKENS} tokens of brown file tails (each file's first "
                            f"{mq.ENCODER_SKIP_TOKENS} tokens skipped), 128-token windows"})


def calibrate(model: Any, tokenizer: Any, e_tops: tuple[int, ...] | None = None,
              log: Any = None) -> dict[str, Any]:
    """Search the softmax and activation ``e_top`` of ``model`` (see the module docstring);
    returns the record (without provenance)."""
    from mugi_jax.tune.tuner import E_TOP_RANGE, _uniform

    base = VLPConfig()
    e_tops = tuple(range(E_TOP_RANGE[0], E_TOP_RANGE[1] + 1)) if e_tops is None else e_tops
    order = (base.e_top,) + tuple(e for e in e_tops if e != base.e_top)
    score, info = _score_fn(model, tokenizer)
    n = model.config.n_layers
    best = [base.e_top, base.e_top]
    trials, t0 = [], time.perf_counter()
    for col, fn in enumerate(("softmax", "activation")):
        scores = {}
        for e in order:
            cur = list(best)
            cur[col] = e
            scores[e] = score(_uniform(n, cur[0], cur[1], base.window, base.mantissa_bits))
            trials.append({"function": fn, "e_top_softmax": cur[0], "e_top_activation": cur[1],
                           "score": scores[e]})
            if log:
                log(f"{fn} e_top={e}: {scores[e]:.6g}")
        best[col] = min(order, key=lambda e: scores[e])  # min keeps the first of equal scores
    act = model.config.activation
    return {"family": numerics.family_of(model), "activation": act,
            "softmax": {"e_top": best[0]}, act: {"e_top": best[1]},
            "window": base.window, "mantissa_bits": base.mantissa_bits,
            "lut_exponents": base.lut_exponents, **info, "e_tops_searched": list(e_tops),
            "default_e_top": base.e_top, "trials": trials,
            "search_seconds": round(time.perf_counter() - t0, 1)}


def _write(record: dict[str, Any]) -> None:
    from mugi_jax import io

    path = numerics.VLP_WINDOWS_FILE
    recs = dict(numerics._window_records(str(path)))
    recs[record["family"]] = record
    io.write_json(path, {
        "what": "VLP input windows (e_top per function) per model family; produced by "
                "`python -m mugi_jax.tune.windows --model NAME --write` (see its docstring)",
        "records": [recs[k] for k in sorted(recs)]})
    numerics._window_records.cache_clear()


def main(argv: list[str] | None = None) -> int:
    from mugi_jax import io, models

    ap = argparse.ArgumentParser(prog="python -m mugi_jax.tune.windows",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, choices=sorted(MODELS.values()))
    ap.add_argument("--write", action="store_true",
                    help=f"store the record in {numerics.VLP_WINDOWS_FILE}")
    args = ap.parse_args(argv)
    model, tok, _ = models.load(args.model)
    rec = calibrate(model, tok, log=lambda s: print(s, flush=True))
    rec["model"] = args.model
    rec["provenance"] = io.provenance({"model": args.model}, seed=None,
                                      wall_time_s=rec["search_seconds"])
    print(json.dumps({k: v for k, v in rec.items() if k not in ("trials", "provenance")}))
    if args.write:
        _write(rec)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
