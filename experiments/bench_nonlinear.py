"""Benchmark: jitted VLP kernels vs the exact FP32 JAX ops (time ratio; goal <= 1.5).

Run: ``python -m experiments.bench_nonlinear [--repeats N] [--ops softmax,silu,...] [--json PATH] [--stages]``.  Both sides are
jitted and timed interleaved in the same process on the same input (FP32 for the exact op; the
VLP kernel gets the same FP32 array and rounds it to BF16 at entry, which is part of its timed
work); min and median wall times and a verdict per case (``experiments/_benchlib.py``).
The SmolLM2 cases are the attention softmax as the decoder (models/llama.py) calls it: the
policy's ``Nonlinear`` op on the raw FP32 scores ``Q K^T`` with the attention scale (1/8) and the
boolean mask handed over (``softmax(scores, tokens=T, scale=, mask=)``: the softmax of
``where(mask, scores * scale, -inf)``), head-major rows of the 3 query heads of a KV head; the
VLP side is the presets' unit (``Nonlinear(vlp_windows("llama")[0], bf16_input=True)``, FP32
result as the model gets it), the baseline the ``exact`` preset's op (XLA fuses the scale and the
mask into ``jax.nn.softmax``'s passes).  SmolLM2 prefill: 512 tokens, causal mask,
``tokens=512`` (window groups of one token's query heads); SmolLM2 decode: a decode step at
batch 8 with a 4096-entry cache whose rows have 0 - 700 left-padding slots masked
(``tokens=1``).  The other two softmax cases are the library call ``nl.softmax`` on plain rows
against ``jax.nn.softmax``.  ``--stages``
also prints, for each softmax case, the time of every compiled stage (XLA:CPU fusion) of the
exact op and of the VLP kernel, from a JAX profiler trace.  Where the native softmax kernel is in
use (mugi_jax/_native), each softmax case also times the kernel's XLA path in the same
interleaved loop and prints its ratio on a line of its own.  The activation cases are the MLP activations as the models
call them in a 512-token prefill: the policy's ``Nonlinear`` op (``numerics.Nonlinear``) on the
FP32 gate projection ``(1, 512, ffn)``, window groups along the last axis, FP32 result; the VLP
side is the presets' unit (BF16 input, the family's calibrated window from
``numerics.vlp_windows``), the baseline the ``exact`` preset's op (``jax.nn`` in FP32).  The row
``nl.silu`` is the library call on an FP32 array (BF16 result).  On CPU the VLP activations run
in the native kernel (``mugi_jax/_native/vlp_activation.cc``) when it is available; each
activation case also times the same call on the XLA path (``native=False``) in the same
interleaved loop and prints its ratio on a line of its own.  This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import importlib

import jax
import jax.numpy as jnp

from experiments._benchlib import (fmt_ratio, interleaved, load_average, ratio, stage_times,
                                   verdict)
from mugi_jax import _native
from mugi_jax import nonlinear as nl
from mugi_jax import numerics

GOAL = 1.5  # VLP kernel time / exact jax.nn op time

# (op, label, shape, tokens): tokens = query tokens of a causal attention softmax whose rows are
# (query heads x tokens) head-major, as the decoder calls it; None: no mask, plain rows
CASES = (
    ("softmax", "prefill attention", (4, 9, 512, 512), None),
    ("softmax", "SmolLM2 prefill", (1, 3, 1536, 512), 512),  # 512 tokens, 3 KV heads x 3 queries
    ("softmax", "decode attention", (8, 9, 1, 4096), None),  # one row per head: no groups
    ("softmax", "SmolLM2 decode", (8, 3, 3, 4096), 1),  # batch 8, 3 KV heads x 3 queries
)
# (fn, label, shape of the gate projection (1, tokens, ffn), model family): the MLP activation
# as the model calls it; family None: the library call ``nl.activation`` on FP32 (default config)
ACTIVATION_CASES = (
    ("silu", "SmolLM2 MLP", (1, 512, 1536), "llama"),
    ("gelu_tanh", "Gemma 3 MLP", (1, 512, 2048), "gemma3"),
    ("gelu", "MiniLM MLP", (1, 512, 1536), "bert"),
    ("silu", "nl.silu FP32 in", (512, 1536), None),
)


def activation_ops(fn: str, family: str | None) -> tuple:
    """``(exact, vlp, vlp_xla)`` jitted callables of one activation case; ``vlp_xla`` is the
    same VLP call on the XLA path (``native=False``: what runs without the native kernel)."""
    if family is None:
        return (jax.jit(lambda x: nl.exact(x, fn)),
                jax.jit(lambda x: nl.activation(x, fn, nl.VLPConfig())),
                jax.jit(lambda x: nl.vlp(x, fn, nl.VLPConfig(), native=False)))
    exact = numerics.Nonlinear()  # what the ``exact`` preset runs
    cfg = numerics.vlp_windows(family)[1]
    unit = numerics.Nonlinear(cfg, bf16_input=True)  # the presets'
    # what ``unit`` runs on an FP32 gate (its unit rounds at entry and writes the FP32 result)
    xla = jax.jit(lambda x: nl.vlp(x, fn, cfg, out_dtype="float32", native=False))
    return (jax.jit(lambda x: exact.activation(x, fn)), jax.jit(lambda x: unit.activation(x, fn)),
            xla)


def _row(op: str, label: str, shape: tuple, tokens: int | None, exact, vlp, x, repeats: int,
         xla_path=None) -> dict:
    """One case; ``x``: the input array or a tuple of the callables' arguments; ``xla_path``:
    the VLP kernel's XLA path, timed in the same interleaved loop (exact, vlp, xla_path, exact,
    ...) for the native-vs-XLA comparison."""
    args = x if isinstance(x, tuple) else (x,)
    fns = {"exact": lambda: exact(*args), "vlp": lambda: vlp(*args)}
    if xla_path is not None:
        fns["vlp_xla"] = lambda: xla_path(*args)
    t = interleaved(fns, repeats)
    r = ratio(t["vlp"], t["exact"])
    row = {"op": op, "case": label, "shape": "x".join(map(str, shape)), "tokens": tokens,
           "exact_min_ms": 1e3 * t["exact"].min, "exact_median_ms": 1e3 * t["exact"].median,
           "vlp_min_ms": 1e3 * t["vlp"].min, "vlp_median_ms": 1e3 * t["vlp"].median,
           "ratio_min": r[0], "ratio_median": r[1], "verdict": verdict(r, GOAL)}
    if xla_path is not None:
        rx = ratio(t["vlp_xla"], t["exact"])
        row.update({"xla_path_min_ms": 1e3 * t["vlp_xla"].min,
                    "xla_path_median_ms": 1e3 * t["vlp_xla"].median,
                    "xla_path_ratio_min": rx[0], "xla_path_ratio_median": rx[1]})
    return row


ATTN_SCALE = 0.125  # SmolLM2-135M: 1/sqrt(head_dim 64)


def model_scores(key: jax.Array, shape: tuple, tokens: int) -> tuple[jax.Array, jax.Array]:
    """Raw scores ``(B, KV heads, g x T, S)`` and the decoder's per-token mask ``(B, T, S)``
    (models/llama.py): causal for a prefill (T = S), left padding of 0 - 700 slots per row for a
    decode step (T = 1)."""
    b, _, rows, keys = shape
    x = jax.random.normal(key, shape, jnp.float32) * (3.0 / ATTN_SCALE)
    k_slots = jnp.arange(keys)
    if tokens == keys:
        mask = jnp.broadcast_to(k_slots[None, :] <= k_slots[:, None], (b, tokens, keys))
    else:
        pad = (jnp.arange(b) * 100)[:, None, None]
        mask = jnp.broadcast_to(k_slots[None, None, :] >= pad, (b, tokens, keys))
    return x, mask


def _row_mask(mask: jax.Array, g: int) -> jax.Array:
    """models/llama.py's mask of the head-major rows: ``(B, T, S)`` -> ``(B, 1, g x T, S)``."""
    b, t, keys = mask.shape
    return jnp.broadcast_to(mask[:, None], (b, g, t, keys)).reshape(b, 1, g * t, keys)


def model_softmax_ops(tokens: int, g: int) -> tuple:
    """``(exact, vlp, vlp_xla)`` jitted callables of ``(scores, mask)``: the ``exact`` preset's
    softmax op and the presets' VLP unit as the decoder calls them (the rows' mask built from
    the per-token one inside, as the decoder does), and the unit's call on the XLA path (FP32
    result, as ``Nonlinear`` returns it)."""
    impl = importlib.import_module("mugi_jax.nonlinear.softmax")
    cfg = numerics.vlp_windows("llama")[0]
    exact, unit = numerics.Nonlinear(), numerics.Nonlinear(cfg, bf16_input=True)
    scale = jnp.float32(ATTN_SCALE)

    def call(op):
        return jax.jit(lambda x, m: op.softmax(x, axis=-1, tokens=tokens, scale=scale,
                                               mask=_row_mask(m, g)))

    xla = jax.jit(lambda x, m: impl._softmax_jit(x, x.ndim - 1, cfg, tokens, False, scale,
                                                 _row_mask(m, g)).astype(jnp.float32))
    return call(exact), call(unit), xla


def softmax_xla_path(cfg: nl.VLPConfig, tokens: int | None):
    """The VLP softmax's XLA path (what runs without the native kernel: ``MUGI_JAX_NATIVE=0``,
    no compiler, GPU/TPU), jitted."""
    impl = importlib.import_module("mugi_jax.nonlinear.softmax")
    return jax.jit(lambda x: impl._softmax_jit(x, x.ndim - 1, cfg, tokens, False))


OPS = ("softmax", "silu", "gelu", "gelu_tanh")


def native_softmax() -> bool:
    """Whether ``nl.softmax`` runs the native kernel here (see mugi_jax/_native)."""
    impl = importlib.import_module("mugi_jax.nonlinear.softmax")
    return _native.register("softmax", [impl._NATIVE_HANDLER])


def run(repeats: int = 21, cfg: nl.VLPConfig = nl.VLPConfig(), ops: tuple[str, ...] = OPS,
        stages: bool = False) -> list[dict]:
    exact_softmax = jax.jit(lambda x: jax.nn.softmax(x, axis=-1))
    rows = []
    key = jax.random.PRNGKey(0)
    for op, label, shape, tokens in CASES:
        if op not in ops:
            continue
        if tokens is not None:  # as the decoder calls it
            args = model_scores(key, shape, tokens)
            exact, vlp, xla_path = model_softmax_ops(tokens, shape[-2] // tokens)
        else:
            args = (jax.random.normal(key, shape, jnp.float32) * 3.0,)
            exact = exact_softmax
            # the public functions are jitted internally; wrapping them in jit removes dispatch
            vlp = jax.jit(lambda x: nl.softmax(x, axis=-1, approx=cfg))
            xla_path = softmax_xla_path(cfg, None)
        # with the native kernel in use, its XLA path is timed alongside (same loop)
        xla_path = xla_path if native_softmax() else None
        rows.append(_row(op, label, shape, tokens, exact, vlp, args, repeats, xla_path))
        if stages:
            rows[-1]["stages"] = {
                name: stage_times(lambda f=f: f(*args), repeats, f.lower(*args).compile().as_text())
                for name, f in (("exact", exact), ("vlp", vlp))}
    for fn, label, shape, family in ACTIVATION_CASES:
        if fn not in ops:
            continue
        x = jax.random.normal(key, shape, jnp.float32) * 3.0
        exact, vlp, xla = activation_ops(fn, family)
        rows.append(_row(fn, label, shape, None, exact, vlp, x, repeats, xla_path=xla))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--ops", default=",".join(OPS),
                        help=f"comma-separated subset of {','.join(OPS)} (default: all)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--stages", action="store_true",
                        help="also time every compiled stage of the softmax cases (profiler trace)")
    args = parser.parse_args()
    ops = tuple(o for o in args.ops.split(",") if o)
    if not ops or any(o not in OPS for o in ops):
        parser.error(f"--ops: must be a comma-separated subset of {','.join(OPS)}, got {args.ops!r}")
    if args.repeats < 1:
        parser.error(f"--repeats: must be >= 1, got {args.repeats}")
    print(f"load average at start {load_average()}")
    rows = run(args.repeats, ops=ops, stages=args.stages)
    print(f"{'op':9s} {'case':18s} {'shape':16s} {'exact min/med ms':>17s} {'VLP min/med ms':>17s} "
          f"{'ratio min/med':>14s} verdict (goal <= {GOAL:g})")
    for r in rows:
        print(f"{r['op']:9s} {r['case']:18s} {r['shape']:16s} "
              f"{r['exact_min_ms']:8.3f}/{r['exact_median_ms']:<8.3f} "
              f"{r['vlp_min_ms']:8.3f}/{r['vlp_median_ms']:<8.3f} "
              f"{fmt_ratio((r['ratio_min'], r['ratio_median'])):>14s} {r['verdict']}")
    if "softmax" in ops:
        print(f"softmax: native kernel {'in use' if native_softmax() else 'NOT in use'} "
              "(MUGI_JAX_NATIVE=0 forces the XLA path)")
    if set(ops) - {"softmax"}:
        used = importlib.import_module("mugi_jax.nonlinear.vlp").native_available()
        print(f"activations: native kernel {'in use' if used else 'NOT in use'} "
              "(MUGI_JAX_NATIVE=0 forces the XLA path)")
    for r in rows:
        if "xla_path_min_ms" in r:
            rx = (r["xla_path_ratio_min"], r["xla_path_ratio_median"])
            print(f"  {r['case']:18s} XLA path (no native kernel) min/med ms "
                  f"{r['xla_path_min_ms']:.3f}/{r['xla_path_median_ms']:.3f}, "
                  f"ratio {fmt_ratio(rx)} {verdict(rx, GOAL)}")
    for r in rows:
        for name, stages in r.get("stages", {}).items():
            print(f"stages of {r['case']} {r['shape']}, {name} (min/median us over "
                  f"{args.repeats} calls; shape, source op):")
            for s in stages:
                print(f"  {s['min_us']:8.1f}/{s['median_us']:<8.1f} {s['stage']:36s} "
                      f"{s['shape']:34s} {s['op']}")
    print(f"devices: {jax.devices()}; load average at end {load_average()}; interleaved runs")
    if args.json:
        from mugi_jax import io
        io.write_json(args.json, {"rows": rows, "provenance": io.provenance({"repeats": args.repeats, "ops": list(ops)}, None)})


if __name__ == "__main__":
    main()
