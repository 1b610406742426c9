"""Perplexity table: numerics preset x corpus, SmolLM2-135M, context 512.

    python -m experiments.llm_ppl [--presets exact,nonlinear-only,...] [--corpora sotu,brown,austen]
                                  [--max-tokens 16384] [--context 512] [--out results/llm_ppl]

Writes ``results/llm_ppl/ppl.csv`` (one row per preset x corpus; rows already present with the
same max_tokens/context are kept, so an interrupted run resumes), ``ppl.json`` and
``provenance.json``.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from mugi_jax import data, eval as ev, models, numerics
from mugi_jax.models import quantize
from mugi_jax.io import provenance, write_csv, write_json

FIELDS = ["preset", "corpus", "context", "max_tokens", "predicted_tokens", "ppl", "nll", "seconds"]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="exact,nonlinear-only,pwl,taylor,mugi,mugi-exact,mugi-asym")
    ap.add_argument("--corpora", default=",".join(data.CORPORA))
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--out", default="results/llm_ppl")
    args = ap.parse_args(argv)
    from mugi_jax.report.helpers import script_out_dir

    out = script_out_dir(args.out)
    csv_path = out / "ppl.csv"
    rows: list[dict] = []
    if csv_path.exists():
        with open(csv_path) as f:
            rows = list(csv.DictReader(f))
    done = {(r["preset"], r["corpus"], int(r["context"]), int(r["max_tokens"])) for r in rows}
    model, tok, _ = models.load("smollm2-135m")
    t0 = time.time()
    for corpus in args.corpora.split(","):
        ids = ev.corpus_tokens(tok, data.corpus_text(corpus), args.max_tokens)
        for name in args.presets.split(","):
            if (name, corpus, args.context, args.max_tokens) in done:
                continue
            policy = numerics.preset(name, numerics.family_of(model))
            # the INT4 weights the preset's recipe asks for (calibrated once, cached)
            qmodel, _ = quantize.weights_for(model, tok, "smollm2-135m", policy)
            r = ev.perplexity(qmodel, ids, policy, context=args.context,
                              max_tokens=args.max_tokens, batch_size=args.batch_size,
                              progress=True)
            row = {"preset": name, "corpus": corpus, "context": args.context,
                   "max_tokens": args.max_tokens, "predicted_tokens": r["predicted_tokens"],
                   "ppl": round(r["ppl"], 4), "nll": round(r["nll"], 6),
                   "seconds": round(r["seconds"], 1)}
            print(row, flush=True)
            rows.append(row)
            write_csv(csv_path, rows, FIELDS)
    write_json(out / "ppl.json", rows)
    write_json(out / "provenance.json", provenance(vars(args), seed=None, wall_time_s=time.time() - t0))
    return rows


if __name__ == "__main__":
    main()
