"""Can XLA:CPU read BF16 weights inside a batch-1 matmul?  One decode step's projections, timed.

    python -m experiments.bench_decode_dot [--repeats 15] [--layers 30]

A batch-1 decode step reads every projection weight once: SmolLM2-135M's seven per layer
(576x576 q/o, 576x192 k/v, 576x1536 gate/up, 1536x576 down; 30 layers, random weights, no
model load).  The chain of those GEMVs (``x`` (1, k) x ``w`` (k, n), each output feeding the next)
is timed with the weights held

* ``fp32``: FP32, ``jnp.dot`` (what the ``exact`` preset runs);
* ``bf16-widened``: BF16, widened to FP32 inside the jitted step, then ``jnp.dot`` (the ``bf16``
  weight residency, ``models.prepare(..., residency="bf16")``);
* ``bf16-dot``: BF16 x BF16 ``lax.dot_general`` with ``preferred_element_type=float32`` (the
  activations rounded to BF16);
* ``mixed-dot``: FP32 activations x BF16 weights in one ``lax.dot_general`` (FP32 result);
* ``bf16-reduce``: BF16 weights held transposed ``(n, k)``, an elementwise product and a sum over
  ``k`` that XLA can fuse with the widening (no FP32 copy of the weights);
* ``bf16-native``: BF16 weights read as held by the native kernel
  ``mugi_jax/_native/decode_gemv.cc`` (``gemm.bf16_weight_matmul``, what the ``bf16`` residency
  runs for a decode step on the CPU; the row is left out where the kernel is unavailable).

``--head`` adds the same paths on SmolLM2's LM head alone (576 x 49152: 113 MB in FP32, the
largest single GEMV of a step), rows suffixed ``-head`` with ratios to ``fp32-head``.

Interleaved (``experiments/_benchlib.py``), min / median milliseconds and the ratio to ``fp32``.
A BF16 path that reads half the bytes could approach 2x faster on this memory-bound step; a
ratio above 1 means XLA:CPU does not get there.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from jax import lax

from experiments._benchlib import fmt_ratio, interleaved, load_average, ratio
from mugi_jax import gemm
from mugi_jax.gemm import decode

DIM, KV, FFN, VOCAB = 576, 192, 1536, 49152
SHAPES = ((DIM, DIM), (DIM, KV), (DIM, KV), (DIM, DIM), (DIM, FFN), (DIM, FFN), (FFN, DIM))


def _dot_general(a, w):
    return lax.dot_general(a, w, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


#: name -> (matmul(x, held weight), how the (k, n) FP32 weight is held)
PATHS = {
    "fp32": (jnp.dot, lambda w: w),
    "bf16-widened": (lambda a, w: jnp.dot(a, w.astype(jnp.float32)),
                     lambda w: w.astype(jnp.bfloat16)),
    "bf16-dot": (lambda a, w: _dot_general(a.astype(jnp.bfloat16), w),
                 lambda w: w.astype(jnp.bfloat16)),
    "mixed-dot": (_dot_general, lambda w: w.astype(jnp.bfloat16)),
    "bf16-reduce": (lambda a, w: jnp.sum(a[:, None, :] * w.astype(jnp.float32)[None], axis=2),
                    lambda w: w.T.astype(jnp.bfloat16)),
}
NATIVE = ("bf16-native", (gemm.bf16_weight_matmul, lambda w: w.astype(jnp.bfloat16)))


def _layer(x, ws, mm):
    """A decoder layer's projections in dependency order (the data flow of a real step)."""
    q, k, v = mm(x, ws[0]), mm(x, ws[1]), mm(x, ws[2])
    h = x + mm(q + jnp.tile(k + v, (1, DIM // KV)), ws[3])
    return jnp.tanh(h + mm(jax.nn.silu(mm(h, ws[4])) * mm(h, ws[5]), ws[6]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--head", action="store_true", help="also time the LM head alone")
    args = ap.parse_args(argv)
    for flag, value in (("--layers", args.layers), ("--repeats", args.repeats)):
        if value < 1:
            ap.error(f"{flag}: must be >= 1, got {value}")
    keys = jax.random.split(jax.random.key(0), args.layers * len(SHAPES))
    weights = [[jax.random.normal(keys[i * len(SHAPES) + j], s) * 0.03
                for j, s in enumerate(SHAPES)] for i in range(args.layers)]
    x = jax.random.normal(jax.random.key(1), (1, DIM))
    head = jax.random.normal(jax.random.key(2), (DIM, VOCAB)) * 0.03 if args.head else None
    fns, paths = {}, dict(PATHS)
    if decode.native_available():
        paths[NATIVE[0]] = NATIVE[1]
    for name, (mm, hold) in paths.items():
        held = jax.tree_util.tree_map(hold, weights)

        @jax.jit
        def step(held, x, mm=mm):
            for ws in held:
                x = _layer(x, ws, mm)
            return x

        fns[name] = lambda step=step, held=held: step(held, x)
        if args.head and name != "bf16-reduce":  # the slowest form: left out to keep the run short
            held_head = hold(head)
            head_step = jax.jit(lambda w, x, mm=mm: mm(x, w))
            fns[name + "-head"] = lambda f=head_step, w=held_head: f(w, x)
    print(f"load average at start {load_average()}; {args.layers} layers, interleaved, "
          f"{args.repeats} repeats")
    t = interleaved(fns, args.repeats)
    for name in fns:
        base = "fp32-head" if name.endswith("-head") else "fp32"
        print(f"{name:>16s}: {1e3 * t[name].min:8.2f} / {1e3 * t[name].median:8.2f} ms "
              f"(min / median), x {base} {fmt_ratio(ratio(t[name], t[base]))}")
    print(f"load average at end {load_average()}")


if __name__ == "__main__":
    main()
