"""Compile time of the perplexity and prefill programs: layers as one ``lax.scan`` vs unrolled.

``mugi-jax ppl`` compiles one forward pass over a batch of windows; ``mugi-jax generate`` a prefill
(and an unrolled one-token decode step, unchanged here).  This benchmark compiles both programs for
SmolLM2-135M with the decoder layers scanned (the default, :func:`mugi_jax.models.llama.scan_layout`)
and unrolled (``scan=False``, the loop every earlier version compiled), interleaved A B A B, each
compile from a cleared in-memory cache and without the persistent compilation cache (this script
never enables it), and reports min and median seconds with their ratio, plus the steady-state run
time of each compiled program (the scan must not slow the forward pass down).

    python -m experiments.bench_compile --numerics exact,mugi --repeats 2
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments._benchlib import load_average


def _programs(model: Any, policy: Any, batch: int, context: int, prompt: int,
              new_tokens: int) -> dict[str, tuple[Any, tuple[Any, ...]]]:
    """``{name: (function of (state, *args, scan), args)}`` of the ppl and prefill programs."""
    from mugi_jax.models.llama import Cache, prepare

    graphdef, state = nnx.split(prepare(model, policy))
    rng = np.random.default_rng(0)
    windows = jnp.asarray(rng.integers(0, model.config.vocab_size, (batch, context)), jnp.int32)
    valid = jnp.ones((batch, context), bool)
    ids = jnp.asarray(rng.integers(0, model.config.vocab_size, (1, prompt)), jnp.int32)
    cache = Cache.init(model.config, 1, prompt + new_tokens)

    def ppl(state: Any, toks: Any, valid: Any, scan: bool) -> Any:
        logits, _ = nnx.merge(graphdef, state)(toks, policy, valid=valid, scan=scan)
        logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        return -jnp.take_along_axis(logp, toks[:, 1:, None], axis=-1).sum()

    def prefill(state: Any, toks: Any, cache: Any, scan: bool) -> Any:
        logits, cache = nnx.merge(graphdef, state)(toks, policy, cache=cache, scan=scan)
        return logits[:, -1], cache

    return {f"ppl {batch}x{context}": (ppl, (state, windows, valid)),
            f"prefill 1x{prompt}": (prefill, (state, ids, cache))}


def _compile_seconds(fn: Any, args: tuple[Any, ...], scan: bool) -> tuple[float, float, Any]:
    """Wall and process CPU seconds of tracing, lowering and compiling ``fn`` afresh."""
    jax.clear_caches()
    c0, t0 = time.process_time(), time.perf_counter()
    compiled = jax.jit(lambda *a: fn(*a, scan=scan)).lower(*args).compile()
    return time.perf_counter() - t0, time.process_time() - c0, compiled


def main(argv: list[str] | None = None) -> None:
    from mugi_jax import models, numerics
    from mugi_jax.models.llama import scan_layout

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--numerics", default="exact,mugi", help="comma-separated presets")
    ap.add_argument("--repeats", type=int, default=2, help="compiles per variant (interleaved)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--prompt", type=int, default=16)
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats: must be >= 1, got {args.repeats}")
    model, _, _ = models.load(args.model)
    print(f"# {args.model}, jax {jax.__version__}, {platform.processor() or platform.machine()}, "
          f"load average {load_average()}; persistent compilation cache off")
    print("numerics  program            compile s scan (min/med)  unrolled (min/med)  "
          "ratio min/med   CPU s scan/unrolled (min)   run s scan/unrolled")
    for name in args.numerics.split(","):
        policy = numerics.preset(name)
        layout = scan_layout(model.config, policy)
        for prog, (fn, fargs) in _programs(model, policy, args.batch, args.context, args.prompt,
                                           8).items():
            secs: dict[bool, list[float]] = {True: [], False: []}
            cpu: dict[bool, list[float]] = {True: [], False: []}
            run: dict[bool, float] = {}
            for _ in range(args.repeats):
                for scan in (True, False):
                    s, c, compiled = _compile_seconds(fn, fargs, scan)
                    secs[scan].append(s)
                    cpu[scan].append(c)
                    jax.block_until_ready(compiled(*fargs))  # warm
                    t0 = time.perf_counter()
                    jax.block_until_ready(compiled(*fargs))
                    run[scan] = min(run.get(scan, float("inf")), time.perf_counter() - t0)
            a, b = secs[True], secs[False]
            print(f"{name:9s} {prog:18s} {min(a):7.1f} / {statistics.median(a):5.1f}      "
                  f"{min(b):7.1f} / {statistics.median(b):5.1f}     "
                  f"{min(a) / min(b):.2f} / {statistics.median(a) / statistics.median(b):.2f}"
                  f"     {min(cpu[True]):6.1f} / {min(cpu[False]):6.1f}"
                  f"              {run[True]:.2f} / {run[False]:.2f}   (layout {layout})",
                  flush=True)


if __name__ == "__main__":
    main()
