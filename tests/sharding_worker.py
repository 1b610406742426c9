"""Equivalence run for tests/test_sharding.py on simulated CPU devices.

Run as a separate process (``python tests/sharding_worker.py OUT.json``): XLA reads
``--xla_force_host_platform_device_count`` once, when JAX starts, so the 8-device setting cannot
be applied inside the pytest worker (whose JAX has already started with one device).  The
script computes every result once on one device and once per mesh (8x1, 2x4, 1x8) and writes
the raw comparisons as JSON; the tests make the assertions.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from mugi_jax import cost, eval as ev, numerics  # noqa: E402
from mugi_jax.hw import get_arch  # noqa: E402
from mugi_jax.models import Llama, Sampler, forward, prepare, sharding  # noqa: E402
from mugi_jax.workloads import Workload, get_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sharding_common import BATCH, CONFIG, CONTEXT, hf_checkpoint, load_counting_reads  # noqa: E402

MESHES = ("data=8,model=1", "data=2,model=4", "data=1,model=8")


def _diff(a: np.ndarray, b: np.ndarray) -> dict:
    a, b = np.asarray(a), np.asarray(b)
    return {"identical": bool(a.shape == b.shape and np.array_equal(a, b)),
            "max_abs": float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))),
            "max_ref": float(np.max(np.abs(b.astype(np.float64))))}


def _logits(model: Llama, tokens: np.ndarray, policy: str, mesh=None) -> np.ndarray:
    if mesh is None:
        m = prepare(model, policy)
        toks = jnp.asarray(tokens)
    else:
        m = sharding.shard_prepared(model, policy, mesh)
        toks = sharding.put(tokens, sharding.batch_sharding(mesh, 2))
    return np.asarray(forward(m, toks, policy)[0])


def _sharded_load(directory: Path, mesh) -> dict:
    """Load onto ``mesh`` counting the elements read from the files; compare with the
    single-device loader."""
    from mugi_jax.models import loaders

    model, elements_read = load_counting_reads(directory, mesh)
    ref, _ = loaders.load_safetensors(directory)
    ours = jax.tree_util.tree_leaves(nnx.split(model)[1])
    theirs = jax.tree_util.tree_leaves(nnx.split(ref)[1])
    return {"identical": all(np.array_equal(np.asarray(a), np.asarray(b))
                             for a, b in zip(ours, theirs)) and len(ours) == len(theirs),
            "elements_read": elements_read,
            "checkpoint_elements": sum(int(np.prod(x.shape)) for x in theirs),
            "all_sharded_by_rules": [str(x.sharding.spec) for x in ours]}


def main(out_path: str) -> None:
    assert jax.device_count() == 8, jax.devices()
    model = Llama(CONFIG, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    corpus = rng.integers(0, CONFIG.vocab_size, 2 * BATCH * CONTEXT).astype(np.int32)
    logit_tokens = corpus[:BATCH * CONTEXT].reshape(BATCH, CONTEXT)
    prompts = [[int(t) for t in rng.integers(3, CONFIG.vocab_size, n)] for n in (5, 3, 7, 4, 6, 2, 5, 3)]
    archs = [get_arch(a) for a in ("mugi-256x8", "sa-16", "simd-16", "carat-256x8", "mugi-128x8",
                                   "tensor-8x16x16", "sa-pwl-16", "sa-taylor-16", "mugi-32x8")]
    archs = archs * 2  # 18 designs: more than one device's chunk, not a multiple of the mesh
    work = [Workload(get_model("smollm2-135m"), 2, s) for s in (256, 512)]

    def run(mesh):
        res = {}
        # perplexity under exact (FP32 dots: the reduction-order case); the mugi forward pass
        # itself is compared through its logits (bit-identical)
        p = ev.perplexity(model, corpus, "exact", context=CONTEXT, max_tokens=None,
                          batch_size=BATCH, mesh=mesh)
        res["ppl/exact"] = np.asarray([p["nll"], p["ppl"]])
        res["ppl-count/exact"] = np.asarray([p["predicted_tokens"], p["windows"]])
        res["logits/mugi"] = _logits(model, logit_tokens, "mugi", mesh)
        res["generate/mugi"] = Sampler(model, None, "mugi", mesh=mesh)(prompts, 6).tokens
        # 3 prompts: rows replicated on meshes whose data axis does not divide them
        res["generate/exact-sampled"] = Sampler(model, None, "exact", mesh=mesh)(
            prompts[:3], 6, temperature=0.8, top_k=20, key=jax.random.key(3)).tokens
        rep = cost.sweep(archs, work, mesh=mesh)
        res["sweep/report"] = np.concatenate([np.ravel(np.asarray(x, np.float64))
                                              for x in jax.tree_util.tree_leaves(rep)])
        return res

    hf_checkpoint(Path(out_path).parent / "hf")
    ref = run(None)
    out: dict = {"devices": jax.device_count(), "meshes": {}}
    policy = numerics.preset("mugi")
    unsharded_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(
        nnx.split(prepare(model, policy))[1]))
    for spec in MESHES:
        mesh = sharding.make_mesh(spec)
        got = run(mesh)
        entry = {k: _diff(got[k], ref[k]) for k in ref}
        sharded = sharding.shard_prepared(model, policy, mesh)
        state = nnx.split(sharded)[1]
        weights = []
        for path, leaf in jax.tree_util.tree_leaves_with_path(state):
            name = jax.tree_util.keystr(path)
            weights.append({
                "path": name, "shape": list(leaf.shape),
                "spec": [None if a is None else str(a) for a in leaf.sharding.spec],
                "shard_shape": list(leaf.sharding.shard_shape(leaf.shape)),
                "mesh_shape": dict(leaf.sharding.mesh.shape),
                "distinct_shards": len({tuple((s.start, s.stop) for s in sh.index)
                                        for sh in leaf.addressable_shards}),
            })
        per_device = sharding.device_memory(state)
        entry["weights"] = weights
        entry["memory"] = {"per_device": per_device, "unsharded": unsharded_bytes,
                           "predicted": sharding.param_bytes_per_device(state, CONFIG, mesh)}
        entry["load"] = _sharded_load(Path(out_path).parent / "hf", mesh)
        out["meshes"][spec] = entry
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
