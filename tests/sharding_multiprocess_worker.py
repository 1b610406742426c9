"""One process of the 2-process run of tests/test_sharding.py (4 simulated CPU devices each).

``python tests/sharding_multiprocess_worker.py MESH HF_DIR OUT_DIR`` with
``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES=2`` and ``JAX_PROCESS_ID`` set: starts
``jax.distributed`` through :func:`mugi_jax.mesh.init_distributed`, computes perplexity and a
greedy generation on the global 8-device mesh, loads a Hugging Face directory onto the mesh
counting the elements this process reads, writes ``OUT_DIR/result.json`` through
:mod:`mugi_jax.io` (only process 0 may succeed) and prints its results as one JSON line.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4").strip()

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from mugi_jax import eval as ev, mesh as meshlib  # noqa: E402
from mugi_jax.io import write_json  # noqa: E402
from mugi_jax.models import Llama, Sampler, sharding  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sharding_common import BATCH, CONFIG, CONTEXT, load_counting_reads  # noqa: E402


def main(mesh_text: str, hf_dir: str, out_dir: str) -> None:
    info = meshlib.init_distributed()
    mesh = sharding.make_mesh(mesh_text)
    model = Llama(CONFIG, rngs=nnx.Rngs(0))
    corpus = np.random.default_rng(0).integers(0, CONFIG.vocab_size, 2 * BATCH * CONTEXT)
    r = ev.perplexity(model, corpus.astype(np.int32), "exact", context=CONTEXT, max_tokens=None,
                      batch_size=BATCH, mesh=mesh)
    gen = Sampler(model, None, "mugi", mesh=mesh)([[5, 6, 7], [8, 9], [10, 11, 12, 13], [3]], 4)
    loaded, elements_read = load_counting_reads(hf_dir, mesh)
    leaves = jax.tree_util.tree_leaves(nnx.split(loaded)[1])
    local = [np.asarray(s.data) for x in leaves for s in x.addressable_shards]
    write_json(Path(out_dir) / "result.json", {"process_id": info["process_id"]})
    print(json.dumps({**info, "nll": r["nll"], "ppl": r["ppl"], "tokens": gen.tokens.tolist(),
                      "elements_read": elements_read,
                      "checkpoint_elements": sum(int(np.prod(x.shape)) for x in leaves),
                      "local_checksum": float(sum(np.sum(a, dtype=np.float64) for a in local))}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
