"""Benchmark: jitted VLP kernels vs the exact FP32 JAX ops (time ratio; goal <= 1.5).

Run: ``python -m experiments.bench_nonlinear [--repeats N] [--json PATH]``.  Both sides are
jitted and timed interleaved in the same process on the same input (FP32 for the exact op; the
VLP kernel gets the same FP32 array and rounds it to BF16 at entry, which is part of its timed
work); min and median wall times and a verdict per case (``experiments/_benchlib.py``).
The SmolLM2 case is the attention softmax as the decoder calls it: head-major rows of the 3
query heads of a KV head, a causal mask (-inf above the diagonal) and ``tokens=512`` (window
groups of one token's query heads).  This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import jax
import jax.numpy as jnp

from experiments._benchlib import fmt_ratio, interleaved, load_average, ratio, verdict
from mugi_jax import nonlinear as nl

GOAL = 1.5  # VLP kernel time / exact jax.nn op time

# (op, label, shape, tokens): tokens = query tokens of a causal attention softmax whose rows are
# (query heads x tokens) head-major, as the decoder calls it; None: no mask, plain rows
CASES = (
    ("softmax", "prefill attention", (4, 9, 512, 512), None),
    ("softmax", "SmolLM2 prefill", (1, 3, 1536, 512), 512),  # 512 tokens, 3 KV heads x 3 queries
    ("softmax", "decode attention", (8, 9, 1, 4096), None),
    ("silu", "FFN", (512, 1536), None),
    ("gelu", "FFN", (512, 1536), None),
    ("gelu_tanh", "FFN", (512, 1536), None),
)


def causal(x: jax.Array, tokens: int) -> jax.Array:
    """``x`` (..., heads x tokens, keys) with -inf where a query token's key comes after it."""
    keys = x.shape[-1]
    query = jnp.tile(jnp.arange(tokens), x.shape[-2] // tokens) + (keys - tokens)
    return jnp.where(jnp.arange(keys)[None, :] <= query[:, None], x, -jnp.inf)


def run(repeats: int = 21, cfg: nl.VLPConfig = nl.VLPConfig()) -> list[dict]:
    exact = {
        "softmax": jax.jit(lambda x: jax.nn.softmax(x, axis=-1)),
        "silu": jax.jit(jax.nn.silu),
        "gelu": jax.jit(lambda x: jax.nn.gelu(x, approximate=False)),
        "gelu_tanh": jax.jit(lambda x: jax.nn.gelu(x, approximate=True)),
    }
    vlp = {  # the public functions are jitted internally; wrapping them in jit removes dispatch
        "softmax": lambda tokens: jax.jit(lambda x: nl.softmax(x, axis=-1, approx=cfg,
                                                               tokens=tokens)),
        "silu": lambda _: jax.jit(lambda x: nl.silu(x, approx=cfg)),
        "gelu": lambda _: jax.jit(lambda x: nl.gelu(x, approx=cfg)),
        "gelu_tanh": lambda _: jax.jit(lambda x: nl.gelu(x, approx=cfg, approximate=True)),
    }
    rows = []
    key = jax.random.PRNGKey(0)
    for op, label, shape, tokens in CASES:
        x = (jax.random.normal(key, shape, jnp.float32) * 3.0)
        if tokens is not None:
            x = causal(x, tokens)
        t = interleaved({"exact": lambda f=exact[op]: f(x),
                         "vlp": lambda f=vlp[op](tokens): f(x)}, repeats)
        r = ratio(t["vlp"], t["exact"])
        rows.append({"op": op, "case": label, "shape": "x".join(map(str, shape)), "tokens": tokens,
                     "exact_min_ms": 1e3 * t["exact"].min, "exact_median_ms": 1e3 * t["exact"].median,
                     "vlp_min_ms": 1e3 * t["vlp"].min, "vlp_median_ms": 1e3 * t["vlp"].median,
                     "ratio_min": r[0], "ratio_median": r[1], "verdict": verdict(r, GOAL)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    print(f"load average at start {load_average()}")
    rows = run(args.repeats)
    print(f"{'op':9s} {'case':18s} {'shape':16s} {'exact min/med ms':>17s} {'VLP min/med ms':>17s} "
          f"{'ratio min/med':>14s} verdict (goal <= {GOAL:g})")
    for r in rows:
        print(f"{r['op']:9s} {r['case']:18s} {r['shape']:16s} "
              f"{r['exact_min_ms']:8.2f}/{r['exact_median_ms']:<8.2f} "
              f"{r['vlp_min_ms']:8.2f}/{r['vlp_median_ms']:<8.2f} "
              f"{fmt_ratio((r['ratio_min'], r['ratio_median'])):>14s} {r['verdict']}")
    print(f"devices: {jax.devices()}; load average at end {load_average()}; interleaved runs")
    if args.json:
        from mugi_jax import io
        io.write_json(args.json, {"rows": rows, "provenance": io.provenance({"repeats": args.repeats}, None)})


if __name__ == "__main__":
    main()
