"""Per-device memory of 7B/8B-shaped Llamas sharded over 8 devices (abstract: no weights).

    python -m experiments.scaling_memory [--models llama2-7b,llama3-8b] [--meshes 8x1,2x4,1x8]
        [--numerics exact,mugi] [--compile] [--batch 8] [--context 512] [--out results/scaling_memory]

Runs with 8 simulated CPU devices (the script sets ``--xla_force_host_platform_device_count``
itself before JAX starts).  For each model x mesh x numerics it reports the parameter bytes one
device holds under the sharding rules (FP32 weights for ``exact``; INT4 codes stored one per
int8, FP32 group scales, for ``mugi``: the in-memory layout of the prepared model) from
``jax.eval_shape`` of the model and of :func:`mugi_jax.models.prepare`.  With ``--compile`` it
also lowers and compiles the perplexity program (:func:`mugi_jax.eval.window_nll`, a batch of
``--batch`` windows of ``--context`` tokens along ``data``) for the sharded abstract model and
reports XLA's per-device memory analysis (arguments + outputs + temporaries).
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

# Hugging Face config.json shapes of the two checkpoints docs/scaling.md walks through
SHAPES = {
    "llama2-7b": dict(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                      head_dim=128, ffn_dim=11008, tie_embeddings=False, max_seq_len=4096),
    "llama3-8b": dict(vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                      head_dim=128, ffn_dim=14336, tie_embeddings=False, max_seq_len=8192,
                      rope_theta=500000.0),
}
FIELDS = ["model", "mesh", "numerics", "param_gib_per_device", "param_gib_total",
          "compiled_gib_per_device", "compile_s"]


def measure(name: str, mesh_text: str, policy_name: str, compile_program: bool, batch: int,
            context: int) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    from mugi_jax import eval as ev, numerics
    from mugi_jax.models import Llama, prepare, sharding
    from mugi_jax.models.config import LlamaConfig

    config = LlamaConfig(**SHAPES[name])
    policy = numerics.preset(policy_name)
    d, m = (int(x) for x in mesh_text.split("x"))
    mesh = sharding.make_mesh(sharding.MeshSpec(d, m))
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0))))
    pgraph, pstate = nnx.split(nnx.eval_shape(
        lambda st: prepare(nnx.merge(graphdef, st), policy), state))
    gib = 2.0 ** 30
    row = {"model": name, "mesh": mesh_text, "numerics": policy_name,
           "param_gib_per_device": sharding.param_bytes_per_device(pstate, config, mesh) / gib,
           "param_gib_total": sharding.param_bytes_per_device(pstate, config, {}) / gib,
           "compiled_gib_per_device": None, "compile_s": None}
    if compile_program:
        shardings = sharding.state_shardings(pstate, config, mesh)
        args = jax.tree_util.tree_map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), pstate, shardings)
        rows = sharding.batch_sharding(mesh, 2)
        toks = jax.ShapeDtypeStruct((batch, context), np.int32, sharding=rows)
        valid = jax.ShapeDtypeStruct((batch, context), np.bool_, sharding=rows)
        t0 = time.perf_counter()
        compiled = ev.window_nll.lower(pgraph, args, toks, valid, policy).compile()
        row["compile_s"] = time.perf_counter() - t0
        mem = compiled.memory_analysis()
        peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                - mem.alias_size_in_bytes)
        row["compiled_gib_per_device"] = peak / gib
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="llama2-7b,llama3-8b")
    ap.add_argument("--meshes", default="8x1,2x4,1x8")
    ap.add_argument("--numerics", default="exact,mugi")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--out", default="results/scaling_memory")
    args = ap.parse_args(argv)
    from mugi_jax.io import provenance, write_csv, write_json

    rows = []
    t0 = time.time()
    for name in args.models.split(","):
        for mesh_text in args.meshes.split(","):
            for pol in args.numerics.split(","):
                row = measure(name, mesh_text, pol, args.compile, args.batch, args.context)
                print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()},
                      flush=True)
                rows.append(row)
    out = Path(args.out)
    write_csv(out / "memory.csv", rows, FIELDS)
    write_json(out / "provenance.json", provenance(vars(args), seed=None,
                                                   wall_time_s=time.time() - t0))
    return rows


if __name__ == "__main__":
    main()
