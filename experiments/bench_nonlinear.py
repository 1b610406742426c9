"""Benchmark: jitted VLP kernels vs the exact FP32 JAX ops (time ratio; goal <= 1.5).

Run: ``python -m experiments.bench_nonlinear [--repeats N] [--json PATH]``.  Both sides are
jitted and timed in the same process on the same input (FP32 for the exact op; the VLP kernel
gets the same FP32 array and rounds it to BF16 at entry, which is part of its timed work).
This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from mugi_jax import nonlinear as nl

CASES = (
    ("softmax", "prefill attention", (4, 9, 512, 512)),
    ("softmax", "decode attention", (8, 9, 1, 4096)),
    ("silu", "FFN", (512, 1536)),
    ("gelu", "FFN", (512, 1536)),
)


def _time_pair(f: Callable, g: Callable, x: jax.Array, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` wall times of ``f(x)`` and ``g(x)`` in seconds, measured interleaved
    (f, g, f, g, ...) after a warm-up call that compiles, so that load from other processes
    affects both alike; the minimum is the least disturbed run."""
    jax.block_until_ready(f(x))
    jax.block_until_ready(g(x))
    tf, tg = [], []
    for _ in range(repeats):
        for fun, acc in ((f, tf), (g, tg)):
            t0 = time.perf_counter()
            jax.block_until_ready(fun(x))
            acc.append(time.perf_counter() - t0)
    return min(tf), min(tg)


def run(repeats: int = 21, cfg: nl.VLPConfig = nl.VLPConfig()) -> list[dict]:
    exact = {
        "softmax": jax.jit(lambda x: jax.nn.softmax(x, axis=-1)),
        "silu": jax.jit(jax.nn.silu),
        "gelu": jax.jit(lambda x: jax.nn.gelu(x, approximate=False)),
    }
    vlp = {  # the public functions are jitted internally; wrapping them in jit removes dispatch
        "softmax": jax.jit(lambda x: nl.softmax(x, axis=-1, approx=cfg)),
        "silu": jax.jit(lambda x: nl.silu(x, approx=cfg)),
        "gelu": jax.jit(lambda x: nl.gelu(x, approx=cfg)),
    }
    rows = []
    key = jax.random.PRNGKey(0)
    for op, label, shape in CASES:
        x = (jax.random.normal(key, shape, jnp.float32) * 3.0)
        t_exact, t_vlp = _time_pair(exact[op], vlp[op], x, repeats)
        rows.append({"op": op, "case": label, "shape": "x".join(map(str, shape)),
                     "exact_ms": 1e3 * t_exact, "vlp_ms": 1e3 * t_vlp,
                     "ratio": t_vlp / t_exact})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    rows = run(args.repeats)
    print(f"{'op':8s} {'case':18s} {'shape':16s} {'exact ms':>9s} {'VLP ms':>9s} {'ratio':>6s}")
    for r in rows:
        print(f"{r['op']:8s} {r['case']:18s} {r['shape']:16s} {r['exact_ms']:9.2f} "
              f"{r['vlp_ms']:9.2f} {r['ratio']:6.2f}")
    print(f"devices: {jax.devices()}  (goal: every ratio <= 1.5)")
    if args.json:
        from mugi_jax import io
        io.write_json(args.json, {"rows": rows, "provenance": io.provenance({"repeats": args.repeats}, None)})


if __name__ == "__main__":
    main()
