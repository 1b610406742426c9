"""Where the ``mugi`` prefill time goes: ``mugi`` with one part swapped back to FP32, interleaved.

    python -m experiments.prefill_breakdown [--prefill 512] [--repeats 3] [--path cached|ppl]
        [--variants exact,nonlinear-only,mugi,mugi/proj-fp32,mugi/attn-fp32,mugi/nl-exact,
                    mugi/head-fp32] [--stages VARIANT]

SmolLM2-135M, batch 1, one prefill of ``--prefill`` tokens under
``exact``, ``nonlinear-only``, ``mugi``, and ``mugi`` with its projections (``*_proj``) as FP32
matmuls (``mugi/proj-fp32``), its attention products QK^T / PV as FP32 einsums of BF16 operands
(``mugi/attn-fp32``, the KIVI cache kept), its softmax/activation exact (``mugi/nl-exact``), or
its LM head FP32 (``mugi/head-fp32``: FP32 weights and activations, ``exact``'s head).
``--path ppl`` times what perplexity evaluation runs for one window (``eval.window_nll``: the
forward pass without a cache, then the NLL); ``--path cached`` (the default, what earlier
figures measured) times the prefill of a generation (``generate._prefill``: the tokens written into an empty KV cache of
``--prefill`` slots, last-token logits).  They compute the same logits; without a cache the
attention knows its keys are the queries' own tokens, so the ``mugi`` attention GEMMs skip the
keys after each chunk of queries (docs/models.md).
Weights are prepared once per variant (untimed); the prefills are timed interleaved
(``experiments/_benchlib.py``) and printed as min / median seconds and ratios to ``exact``,
with the median process CPU time (all threads; it moves less with the load than wall time).
The difference between ``mugi`` and a variant is the share of the swapped part.  Note that
``mugi/attn-fp32`` is not ``exact``'s attention: its KIVI cache still computes the quantized and
the full-precision products over the whole ``(tokens, tokens)`` matrix and merges them.

``--stages VARIANT`` instead profiles ``--repeats`` prefills of one variant (JAX profiler trace,
XLA:CPU thunks) and prints the time per call of each kind of work, from the compiled module's
op metadata: the native kernels by name (and the VLP GEMM by output shape), the attention's
datapath GEMMs (XLA kernels), the vocabulary-wide work (LM head and log-softmax), other dots,
and the rest.  The stages run one after the other, so their sum is close to the wall time.
"""

from __future__ import annotations

import argparse
import collections
import functools
import re

import jax.numpy as jnp
import numpy as np

from experiments._benchlib import fmt_ratio, interleaved, load_average, ratio, trace_events
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
        "mugi/head-fp32": swap("mugi/head-fp32", [Rule("lm_head", Gemm(), required=False)]),
    }


def _stage_kind(op: str, shape: str, op_name: str, target: str, vocab: int) -> str:
    """The kind of work of one compiled instruction (see the module docstring)."""
    if target:
        return f"native {target.removeprefix('mugi_')}" + (
            f" {shape.split('{')[0]}" if target == "mugi_vlp_gemm" else "")
    if "_matmul_2d_jit" in op_name and "/cond/" in op_name:  # the native call's branch
        return "native vlp_gemm operands (pair indices, per call)"
    if "_matmul_2d_jit" in op_name:
        return "attention GEMMs on the datapath (XLA kernels)"
    if re.search(rf"\b{vocab}\b", shape) or "log_softmax" in op_name:
        return f"vocabulary-wide (LM head, log-softmax): {op_name.split('/')[-1]}"
    if "dot_general" in op_name:
        return "other dots (FP32 products, KIVI full-precision band)"
    return "other (elementwise, selects, casts, copies)"


def stages(fn: functools.partial, repeats: int, vocab: int) -> list[tuple[str, float, int]]:
    """``(kind, ms per call, instructions)`` of ``fn``'s compiled stages, slowest first, from a
    profiler trace of ``repeats`` calls (after one untimed call)."""
    hlo = fn.func.lower(*fn.args).compile().as_text()  # eval.window_nll / generate._prefill: jitted
    meta = {}
    for m in re.finditer(r"%([\w.-]+) = (\S+) ([\w-]+)\((.*)", hlo):
        op_name = re.search(r'op_name="([^"]*)"', m.group(4))
        target = re.search(r'custom_call_target="([^"]*)"', m.group(4))
        meta[m.group(1)] = (m.group(3), m.group(2), op_name.group(1) if op_name else "",
                            target.group(1) if target else "")
    events = trace_events(fn, repeats)
    total: dict[str, float] = collections.defaultdict(float)
    names: dict[str, set] = collections.defaultdict(set)
    for e in events:
        info = meta.get(e.get("name", ""))
        if e.get("ph") != "X" or info is None or info[0] in ("while", "conditional", "call"):
            continue  # loops and conditionals: their bodies are timed as stages of their own
        kind = _stage_kind(*info, vocab=vocab)
        total[kind] += float(e["dur"]) / 1e3 / repeats
        names[kind].add(e["name"])
    return sorted(((k, v, len(names[k])) for k, v in total.items()), key=lambda r: -r[1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--path", default="cached", choices=("cached", "ppl"),
                    help="ppl: perplexity evaluation's uncached forward + NLL; cached: a "
                         "generation's prefill into an empty KV cache")
    ap.add_argument("--variants", default="exact,nonlinear-only,mugi,mugi/proj-fp32,"
                                          "mugi/attn-fp32,mugi/nl-exact")
    ap.add_argument("--stages", default=None, metavar="VARIANT",
                    help="profile this variant's prefill and print the time per kind of work "
                         "instead of timing --variants")
    args = ap.parse_args(argv)
    names = args.variants.split(",") if args.stages is None else [args.stages]
    valid_names = list(variants(None))
    for name in names:
        if name not in valid_names:
            flag = "--variants" if args.stages is None else "--stages"
            ap.error(f"{flag}: unknown {name!r}; valid: {', '.join(valid_names)}")
    if args.stages is None and "exact" not in names:
        ap.error("--variants: must include exact (the baseline)")
    if args.repeats < 1:
        ap.error(f"--repeats: must be >= 1, got {args.repeats}")
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
    if args.stages is not None:
        name = args.stages
        print(f"path {args.path}; variant {name}; load average at start {load_average()}; "
              f"profile of {args.repeats} prefills, ms per prefill:")
        rows = stages(fns[name], args.repeats, cfg.vocab_size)
        for kind, ms, count in rows:
            print(f"{ms:9.1f} ms  {kind} ({count} stage{'s' * (count != 1)})")
        print(f"{sum(r[1] for r in rows):9.1f} ms  sum; load average at end {load_average()}")
        return
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
