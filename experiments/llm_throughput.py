"""LLM throughput under numerics presets: tokens/s for a 512-token prefill and for 64 decode
steps, at batch 1 and 8, SmolLM2-135M, measured in one run (same process, same machine).

    python -m experiments.llm_throughput [--presets exact,nonlinear-only,mugi] [--batches 1,8]
        [--prefill 512] [--decode 64] [--repeats 2] [--out results/llm_throughput]

Each (preset, batch) is compiled and run once untimed, then timed ``--repeats`` times (the best
is reported).  Writes ``throughput.csv``, ``throughput.json`` and ``provenance.json``; the
``ratio_vs_exact`` columns are time(preset) / time(exact) (goal: <= 1.5).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mugi_jax import data, eval as ev, models, numerics
from mugi_jax.io import provenance, write_csv, write_json
from mugi_jax.models.generate import _decode, _prefill


def _best(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile + warm up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="exact,nonlinear-only,mugi")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="results/llm_throughput")
    args = ap.parse_args(argv)
    model, tok, cfg = models.load("smollm2-135m")
    ids = ev.corpus_tokens(tok, data.corpus_text("sotu"), args.prefill * 8)
    rows = []
    t0 = time.time()
    for b in (int(x) for x in args.batches.split(",")):
        tokens = jnp.asarray(np.asarray(ids[: b * args.prefill], np.int32).reshape(b, args.prefill))
        valid = jnp.ones_like(tokens, bool)
        for name in args.presets.split(","):
            pol = numerics.preset(name)
            sampler = models.Sampler(model, None, pol)
            gd, st = sampler.graphdef, sampler.state
            total = args.prefill + args.decode
            cache0 = models.Cache.init(cfg, b, total)
            t_pre = _best(lambda: _prefill(gd, st, tokens, valid, cache0, pol), args.repeats)
            last, cache = _prefill(gd, st, tokens, valid, cache0, pol)
            key = jax.random.key(0)
            t_dec = _best(lambda: _decode(gd, st, last, cache, key, pol, args.decode, 0.0, None,
                                          None), args.repeats)
            row = {"preset": name, "batch": b, "prefill_tokens": b * args.prefill,
                   "prefill_s": round(t_pre, 4), "prefill_tok_s": round(b * args.prefill / t_pre, 1),
                   "decode_steps": args.decode, "decode_s": round(t_dec, 4),
                   "decode_tok_s": round(b * args.decode / t_dec, 1)}
            print(row, flush=True)
            rows.append(row)
            write_csv(Path(args.out) / "throughput.partial.csv", rows)  # survives an interrupted run
    for r in rows:
        ref = next(x for x in rows if x["preset"] == "exact" and x["batch"] == r["batch"]) \
            if any(x["preset"] == "exact" for x in rows) else None
        r["prefill_ratio_vs_exact"] = round(r["prefill_s"] / ref["prefill_s"], 3) if ref else None
        r["decode_ratio_vs_exact"] = round(r["decode_s"] / ref["decode_s"], 3) if ref else None
    out = Path(args.out)
    write_csv(out / "throughput.csv", rows)
    write_json(out / "throughput.json", rows)
    write_json(out / "provenance.json", provenance(vars(args), seed=0, wall_time_s=time.time() - t0))
    for r in rows:
        print(f"{r['preset']:>15} batch {r['batch']}: prefill {r['prefill_tok_s']:>9.1f} tok/s "
              f"(x{r['prefill_ratio_vs_exact']}), decode {r['decode_tok_s']:>8.1f} tok/s "
              f"(x{r['decode_ratio_vs_exact']})")
    return rows


if __name__ == "__main__":
    main()
