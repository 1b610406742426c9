"""LLM throughput under numerics presets: tokens/s for a 512-token prefill and for 64 decode
steps, at batch 1 and 8, SmolLM2-135M, measured in one run (same process, same machine).

    python -m experiments.llm_throughput [--presets exact,nonlinear-only,mugi] [--batches 1,8]
        [--prefill 512] [--decode 64] [--repeats 2] [--out results/llm_throughput]

Every preset's weights are prepared once (untimed, as ``models.Sampler`` does); per batch size the
presets' prefills are compiled, then timed interleaved (exact, nonlinear-only, mugi, exact, ...)
``--repeats`` times, then the decodes likewise (``experiments/_benchlib.py``).  tok/s come from
the minimum; the ratios to ``exact`` are printed as ratio of minima / ratio of medians, with a
verdict for the prefill targets (``mugi`` <= 2.5x, goal 1.5x; ``nonlinear-only`` <= 1.2x).
Writes ``throughput.csv``, ``throughput.json`` and ``provenance.json``.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments._benchlib import interleaved, load_average, ratio, verdict
from mugi_jax import data, eval as ev, models, numerics
from mugi_jax.io import provenance, write_csv, write_json
from mugi_jax.models.generate import _decode, _prefill


GOALS = {  # prefill time / exact prefill time: (target, goal) from the issue tracker
    "mugi": (2.5, 1.5),
    "nonlinear-only": (1.2, 1.2),
}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="exact,nonlinear-only,mugi")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="results/llm_throughput")
    args = ap.parse_args(argv)
    from mugi_jax.report.helpers import script_out_dir

    script_out_dir(args.out)
    model, tok, cfg = models.load("smollm2-135m")
    ids = ev.corpus_tokens(tok, data.corpus_text("sotu"), args.prefill * 8)
    names = args.presets.split(",")
    for name in names:
        numerics.preset(name)  # unknown names fail here, before any compilation
    print(f"load average at start {load_average()}; interleaved, {args.repeats} repeats")
    rows = []
    t0 = time.time()
    for b in (int(x) for x in args.batches.split(",")):
        tokens = jnp.asarray(np.asarray(ids[: b * args.prefill], np.int32).reshape(b, args.prefill))
        valid = jnp.ones_like(tokens, bool)
        prefill, decode = {}, {}
        for name in names:
            pol = numerics.preset(name, numerics.family_of(model))
            sampler = models.Sampler(model, None, pol)  # weights prepared once, untimed
            gd, st = sampler.graphdef, sampler.state
            cache0 = models.Cache.init(cfg, b, args.prefill + args.decode)
            prefill[name] = functools.partial(_prefill, gd, st, tokens, valid, cache0, pol)
            last, cache = _prefill(gd, st, tokens, valid, cache0, pol)
            decode[name] = functools.partial(_decode, gd, st, last, cache, jax.random.key(0), pol,
                                             args.decode, 0.0, None, None)
        t_pre = interleaved(prefill, args.repeats)
        t_dec = interleaved(decode, args.repeats)
        for name in names:
            tp, td = t_pre[name], t_dec[name]
            row = {"preset": name, "batch": b, "prefill_tokens": b * args.prefill,
                   "prefill_s_min": round(tp.min, 4), "prefill_s_median": round(tp.median, 4),
                   "prefill_tok_s": round(b * args.prefill / tp.min, 1),
                   "decode_steps": args.decode, "decode_s_min": round(td.min, 4),
                   "decode_s_median": round(td.median, 4),
                   "decode_tok_s": round(b * args.decode / td.min, 1)}
            # every row has every column (the CSV header is the first row's keys)
            row.update(prefill_ratio_min=None, prefill_ratio_median=None, decode_ratio_min=None,
                       decode_ratio_median=None, prefill_verdict=None)
            if "exact" in t_pre:
                rp, rd = ratio(tp, t_pre["exact"]), ratio(td, t_dec["exact"])
                row.update(prefill_ratio_min=round(rp[0], 3), prefill_ratio_median=round(rp[1], 3),
                           decode_ratio_min=round(rd[0], 3), decode_ratio_median=round(rd[1], 3))
                if name in GOALS:
                    row["prefill_verdict"] = verdict(rp, GOALS[name][0])
            print(row, flush=True)
            rows.append(row)
        write_csv(Path(args.out) / "throughput.partial.csv", rows)  # survives an interrupted run
    out = Path(args.out)
    write_csv(out / "throughput.csv", rows)
    write_json(out / "throughput.json", rows)
    write_json(out / "provenance.json", provenance(vars(args), seed=0, wall_time_s=time.time() - t0))
    print(f"load average at end {load_average()}; tok/s from the minimum, ratios min/median")
    for r in rows:
        rat = ""
        if r["prefill_ratio_min"] is not None:
            rat = (f" x{r['prefill_ratio_min']}/{r['prefill_ratio_median']}"
                   + (f" {r['prefill_verdict']} (target <= {GOALS[r['preset']][0]:g}, goal "
                      f"{GOALS[r['preset']][1]:g})" if r["prefill_verdict"] else ""))
            drat = f" x{r['decode_ratio_min']}/{r['decode_ratio_median']}"
        else:
            drat = ""
        print(f"{r['preset']:>15} batch {r['batch']}: prefill {r['prefill_tok_s']:>9.1f} tok/s"
              f"{rat}; decode {r['decode_tok_s']:>8.1f} tok/s{drat}")
    return rows


if __name__ == "__main__":
    main()
