"""Decode speed and resident weight bytes by weight residency (``--weight-residency``), SmolLM2-135M.

For each pair (preset, residency) the weights are prepared once (untimed, as ``models.Sampler``
does), a prompt is prefilled, and ``--decode`` greedy batch-1 decode steps are timed interleaved
with the same preset's default ``prepared`` residency (A B A B, ``experiments/_benchlib.py``):
``exact`` + ``bf16`` decodes on the native BF16-weight kernel where it is available (the header
line says; ``gemm.bf16_weight_matmul``), and is then also timed on XLA's path (``bf16-xla``: the
same weights widened for XLA's dot, compiled with ``MUGI_JAX_NATIVE=0``) in the same rotation;
tok/s from the minimum, ratios to ``prepared`` as ratio of minima / ratio of medians.  Bytes are
every array the prepared model holds (embedding and norms included).  For the residencies that
keep the numerics (``mugi`` + ``int4``/``bf16``) the generated tokens are checked to be equal.

    python -m experiments.bench_residency [--pairs exact:bf16,mugi:int4] [--decode 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments._benchlib import interleaved, load_average, ratio


@contextlib.contextmanager
def _native_kernels(on: bool):
    """``MUGI_JAX_NATIVE=0`` inside the block when ``on`` is False (the XLA paths)."""
    old = os.environ.get("MUGI_JAX_NATIVE")
    if not on:
        os.environ["MUGI_JAX_NATIVE"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MUGI_JAX_NATIVE", None)
        else:
            os.environ["MUGI_JAX_NATIVE"] = old


def main(argv: list[str] | None = None) -> list[dict]:
    from mugi_jax import models, numerics
    from mugi_jax.gemm import decode
    from mugi_jax.models.generate import _decode, _prefill
    from mugi_jax.models.llama import resident_bytes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="exact:bf16,mugi:int4",
                    help="comma-separated PRESET:RESIDENCY, each timed against PRESET:prepared")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    model, _, cfg = models.load("smollm2-135m")
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (1, args.prompt)), jnp.int32)
    valid = jnp.ones_like(tokens, bool)
    print(f"# smollm2-135m, batch 1, {args.decode} decode steps after a {args.prompt}-token "
          f"prompt; jax {jax.__version__}; native BF16-weight decode kernel: "
          f"{'yes' if decode.native_available() else 'no'}; load average {load_average()}")
    rows = []
    for pair in args.pairs.split(","):
        name, residency = pair.split(":")
        policy = numerics.preset(name, numerics.family_of(model))
        fns, toks, nbytes, uses_native = {}, {}, {}, {}
        variants = [("prepared", "prepared", True), (residency, residency, True)]
        if residency == "bf16" and decode.native_available():
            variants.append(("bf16-xla", "bf16", False))  # the same weights on XLA's path
        for label, res, native in variants:
            sampler = models.Sampler(model, None, policy, residency=res)
            gd, st = sampler.graphdef, sampler.state
            nbytes[label] = resident_bytes(nnx.merge(gd, st))
            cache0 = models.Cache.init(cfg, 1, args.prompt + args.decode)
            with _native_kernels(native):  # chosen at trace time: compiled here, ahead of timing
                jax.clear_caches()  # no trace of another variant reused
                last, cache = _prefill(gd, st, tokens, valid, cache0, policy)
                compiled = _decode.lower(gd, st, last, cache, jax.random.key(0), policy,
                                         args.decode, 0.0, None, None).compile()
            fns[label] = functools.partial(compiled, st, last, cache, jax.random.key(0))
            uses_native[label] = "mugi_decode_gemv" in compiled.as_text()
            toks[label] = np.asarray(fns[label]())
        t = interleaved(fns, args.repeats)
        for label in list(fns)[1:]:
            r = ratio(t[label], t["prepared"])
            row = {"preset": name, "residency": label,
                   "tok_s": round(args.decode / t[label].min, 1),
                   "tok_s_median": round(args.decode / t[label].median, 1),
                   "tok_s_prepared": round(args.decode / t["prepared"].min, 1),
                   "time_ratio_min": round(r[0], 3), "time_ratio_median": round(r[1], 3),
                   "bytes": nbytes[label], "bytes_prepared": nbytes["prepared"],
                   "same_tokens": bool(np.array_equal(toks[label], toks["prepared"])),
                   "native_kernel": uses_native[label]}
            rows.append(row)
            print(f"{name:6s} {label:8s}: {row['tok_s']:6.1f} tok/s (median "
                  f"{row['tok_s_median']:.1f}) vs prepared {row['tok_s_prepared']:6.1f} (time "
                  f"ratio min/median {r[0]:.2f}/{r[1]:.2f}); resident "
                  f"{nbytes[label] / 2**20:7.1f} MiB vs {nbytes['prepared'] / 2**20:7.1f} MiB; "
                  f"same tokens: {row['same_tokens']}; native kernel in the step: "
                  f"{uses_native[label]}", flush=True)
    print(f"load average at end {load_average()}")
    return rows


if __name__ == "__main__":
    main()
