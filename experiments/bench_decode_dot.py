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
  ``k`` that XLA can fuse with the widening (no FP32 copy of the weights).

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

DIM, KV, FFN = 576, 192, 1536
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


def _layer(x, ws, mm):
    """A decoder layer's projections in dependency order (the data flow of a real step)."""
    q, k, v = mm(x, ws[0]), mm(x, ws[1]), mm(x, ws[2])
    h = x + mm(q + jnp.tile(k + v, (1, DIM // KV)), ws[3])
    return jnp.tanh(h + mm(jax.nn.silu(mm(h, ws[4])) * mm(h, ws[5]), ws[6]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--layers", type=int, default=30)
    args = ap.parse_args(argv)
    for flag, value in (("--layers", args.layers), ("--repeats", args.repeats)):
        if value < 1:
            ap.error(f"{flag}: must be >= 1, got {value}")
    keys = jax.random.split(jax.random.key(0), args.layers * len(SHAPES))
    weights = [[jax.random.normal(keys[i * len(SHAPES) + j], s) * 0.03
                for j, s in enumerate(SHAPES)] for i in range(args.layers)]
    x = jax.random.normal(jax.random.key(1), (1, DIM))
    fns = {}
    for name, (mm, hold) in PATHS.items():
        held = jax.tree_util.tree_map(hold, weights)

        @jax.jit
        def step(held, x, mm=mm):
            for ws in held:
                x = _layer(x, ws, mm)
            return x

        fns[name] = lambda step=step, held=held: step(held, x)
    print(f"load average at start {load_average()}; {args.layers} layers, interleaved, "
          f"{args.repeats} repeats")
    t = interleaved(fns, args.repeats)
    for name in fns:
        print(f"{name:>13s}: {1e3 * t[name].min:8.2f} / {1e3 * t[name].median:8.2f} ms "
              f"(min / median), x fp32 {fmt_ratio(ratio(t[name], t['fp32']))}")
    print(f"load average at end {load_average()}")


if __name__ == "__main__":
    main()
