"""Where the ``mugi`` prefill time goes: ``mugi`` with one part swapped back to FP32, interleaved.

    python -m experiments.prefill_breakdown [--prefill 512] [--repeats 3] [--path cached|ppl]
        [--variants exact,nonlinear-only,mugi,mugi/proj-fp32,mugi/attn-fp32,mugi/nl-exact]

SmolLM2-135M, batch 1, one prefill of ``--prefill`` tokens under
``exact``, ``nonlinear-only``, ``mugi``, and ``mugi`` with its projections (``*_proj``) as FP32
matmuls (``mugi/proj-fp32``), its attention products QK^T / PV as FP32 einsums of BF16 operands
(``mugi/attn-fp32``, the KIVI cache kept), or its softmax/activation exact (``mugi/nl-exact``).
``--path ppl`` times what perplexity evaluation runs for one window (``eval.window_nll``: the
forward pass without a cache, then the NLL); ``--path cached`` (the default, what earlier
figures measured) times the prefill of a generation (``generate._prefill``: the tokens written into an empty KV cache of
``--prefill`` slots, last-token logits).  They compute the same logits; without a cache the
attention knows its keys are the queries' own tokens, so the ``mugi`` attention GEMMs skip the
keys after each chunk of queries (docs/models.md).
Weights are prepared once per variant (untimed); the prefills are timed interleaved
(``experiments/_benchlib.py``) and printed as min / median seconds and ratios to ``exact``,
with the median process CPU time (all threads; it moves less with the load than wall time).
The difference between ``mugi`` and a variant is the share of the swapped part.
"""

from __future__ import annotations

import argparse
import functools

import jax.numpy as jnp
import numpy as np

from experiments._benchlib import fmt_ratio, interleaved, load_average, ratio
from mugi_jax import data, eval as ev, models, numerics
from mugi_jax.models.generate import _prefill
from mugi_jax.numerics import Gemm, Nonlinear, Policy, Rule


def variants(family: str | None) -> dict[str, numerics.Policy]:
    mugi = numerics.preset("mugi", family)

    def swap(name: str, rules: list[Rule]) -> Policy:  # the first matching rule wins
        return Policy(name, tuple(rules) + mugi.rules, weights=mugi.weights)

    return {
        "exact": numerics.preset("exact", family),
        "nonlinear-only": numerics.preset("nonlinear-only", family),
        "mugi": mugi,
        "mugi/proj-fp32": swap("mugi/proj-fp32", [Rule(r".*_proj", Gemm(), required=False)]),
        "mugi/attn-fp32": swap("mugi/attn-fp32", [Rule(r".*\.attn\.(scores|context)",
                                                       Gemm(bf16_activations=True), required=False)]),
        "mugi/nl-exact": swap("mugi/nl-exact", [
            Rule(r".*\.attn\.softmax", Nonlinear(), required=False),
            Rule(r".*\.mlp\.act", Nonlinear(), required=False)]),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--path", default="cached", choices=("cached", "ppl"),
                    help="ppl: perplexity evaluation's uncached forward + NLL; cached: a "
                         "generation's prefill into an empty KV cache")
    ap.add_argument("--variants", default="exact,nonlinear-only,mugi,mugi/proj-fp32,"
                                          "mugi/attn-fp32,mugi/nl-exact")
    args = ap.parse_args(argv)
    names = args.variants.split(",")
    valid_names = list(variants(None))
    for name in names:
        if name not in valid_names:
            ap.error(f"--variants: unknown {name!r}; valid: {', '.join(valid_names)}")
    if "exact" not in names:
        ap.error("--variants: must include exact (the baseline)")
    model, tok, cfg = models.load("smollm2-135m")
    pols = variants(numerics.family_of(model))
    ids = ev.corpus_tokens(tok, data.corpus_text("sotu"), args.prefill)
    tokens = jnp.asarray(np.asarray(ids[: args.prefill], np.int32).reshape(1, args.prefill))
    valid = jnp.ones_like(tokens, bool)
    fns = {}
    for name in names:
        sampler = models.Sampler(model, None, pols[name])  # weights prepared once, untimed
        if args.path == "ppl":
            fns[name] = functools.partial(ev.window_nll, sampler.graphdef, sampler.state, tokens,
                                          valid, pols[name])
        else:
            cache0 = models.Cache.init(cfg, 1, args.prefill)
            fns[name] = functools.partial(_prefill, sampler.graphdef, sampler.state, tokens,
                                          valid, cache0, pols[name])
    print(f"path {args.path}; load average at start {load_average()}; interleaved, "
          f"{args.repeats} repeats")
    t = interleaved(fns, args.repeats)
    base_cpu = t["exact"].cpu_median
    for name in names:
        print(f"{name:>16s}: prefill {t[name].min:7.3f} / {t[name].median:7.3f} s (min / median),"
              f" x exact {fmt_ratio(ratio(t[name], t['exact']))};"
              f" CPU {t[name].cpu_median:7.3f} s, x exact {t[name].cpu_median / base_cpu:.2f}")
    print(f"load average at end {load_average()}")


if __name__ == "__main__":
    main()
