"""Sharding over a device mesh (mugi_jax.mesh, mugi_jax.models.sharding).

The equivalence tests run ``tests/sharding_worker.py`` once, in a subprocess with 8 simulated
CPU devices (``--xla_force_host_platform_device_count=8`` must be set before JAX starts, and
this pytest worker's JAX has already started with one), and assert on its JSON.  Tolerances
(docs/scaling.md): generated tokens and cost sweeps are identical on every mesh, Mugi logits on
the data-only mesh; perplexity and Mugi logits with weights split over ``model`` (reductions XLA
lays out by the shape each device sees) agree to 1e-6 relative.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jax.sharding import PartitionSpec as P

from mugi_jax import mesh as meshlib
from mugi_jax.models import sharding
from mugi_jax.models.config import LlamaConfig

ROOT = Path(__file__).resolve().parents[1]
MESHES = ("data=8,model=1", "data=2,model=4", "data=1,model=8")
SMOLLM2 = LlamaConfig()


@pytest.mark.slow  # one subprocess: about 1.5 CPU-minutes
def test_sharded_programs_on_8_simulated_devices(tmp_path):
    """Perplexity, generation, logits, the cost sweep and checkpoint loading on meshes 8x1, 2x4
    and 1x8 equal the single-device results; every weight is where the rules put it.  One test
    (not one per mesh) so that pytest-xdist runs the 8-device subprocess once."""
    out = tmp_path / "out.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "sharding_worker.py"), str(out)],
                          env=env, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    equivalence = json.loads(out.read_text())
    assert equivalence["devices"] == 8
    for spec in MESHES:
        _check_results(equivalence, spec)
        _check_weights(equivalence, spec)
        _check_checkpoint(equivalence, spec)
    _check_memory(equivalence)


def _check_results(equivalence, spec):
    e = equivalence["meshes"][spec]
    for key in ("generate/mugi", "generate/exact-sampled", "sweep/report", "ppl-count/exact"):
        assert e[key]["identical"], (spec, key, e[key])
    # [mean NLL, ppl]: measured about 1e-7 relative.  Mugi logits: bit-identical with the
    # weights whole on every device (data axis only); split over model, the fast kernels'
    # per-group XLA dots see other shapes (measured: 1 float32 ulp, 1.2e-7 of 0.73)
    tolerance = {"ppl/exact": 1e-6, "logits/mugi": 0.0 if spec == "data=8,model=1" else 1e-6}
    for key, rel in tolerance.items():
        assert e[key]["max_abs"] <= rel * e[key]["max_ref"], (spec, key, e[key])


def _check_weights(equivalence, spec):
    """``.sharding`` of every array of the prepared (INT4, mugi) model: heads / FFN columns /
    vocabulary split over ``model`` (column-parallel: last axis, row-parallel: first axis), one
    distinct slice per ``model`` index; norms and within-group axes whole; a row-parallel
    array with fewer groups than ``model`` (group scales, weight terms) split along ``out``."""
    e = equivalence["meshes"][spec]
    data, model = (int(p.split("=")[1]) for p in spec.split(","))
    split_seen = set()
    for w in e["weights"]:
        assert w["mesh_shape"] == {"data": data, "model": model}
        path, shape, sp = w["path"], w["shape"], w["spec"]
        if "norm" in path:
            assert sp == [None], path
            continue
        if any(k in path for k in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj",
                                   "lm_head")):
            axis = len(shape) - 1  # columns: heads / FFN columns / vocabulary
        else:
            assert any(k in path for k in ("o_proj", "down_proj", "embed")), path
            axis = 0  # rows: heads / FFN columns / vocabulary
        if shape[axis] % model:  # too few groups: split along out (the last axis) instead
            assert axis == 0 and sp[-1] == "model" and len(shape) > 1, path
            assert w["distinct_shards"] == model, path
            continue
        assert all(a is None for i, a in enumerate(sp) if i != axis), path
        assert sp[axis] == "model", path
        assert w["shard_shape"][axis] == shape[axis] // model, path
        assert w["distinct_shards"] == model, path
        if path.endswith(".codes") or path.endswith("].value"):
            split_seen.add(path.split("]")[0] + "]")
    # the weights themselves (FP32 embedding, INT4 codes of every projection and the head)
    assert split_seen >= {"['embed']", "['layers']", "['lm_head']"}


def _check_memory(equivalence):
    for spec in MESHES:
        mem = equivalence["meshes"][spec]["memory"]
        per = set(mem["per_device"].values())
        assert len(mem["per_device"]) == 8 and len(per) == 1
        assert per == {mem["predicted"]}
    full = equivalence["meshes"]["data=8,model=1"]["memory"]
    assert full["predicted"] == full["unsharded"]
    m4 = equivalence["meshes"]["data=2,model=4"]["memory"]["predicted"]
    m8 = equivalence["meshes"]["data=1,model=8"]["memory"]["predicted"]
    # norms (replicated) aside, every array is split into model equal parts
    assert m4 < full["unsharded"] / 4 * 1.05 and m8 < full["unsharded"] / 8 * 1.1


# ------------------------------------------------------------------------------------------
# mesh flags, divisibility and the distributed environment (one device is enough)


def test_parse_mesh():
    assert meshlib.parse_mesh("data=2,model=4") == meshlib.MeshSpec(2, 4)
    assert meshlib.parse_mesh("model=8") == meshlib.MeshSpec(1, 8)
    for bad in ("data=2,model=x", "data=0", "pipe=2", "data=2,data=2", "2x4", ""):
        with pytest.raises(ValueError, match="--mesh"):
            meshlib.parse_mesh(bad)


def test_mesh_size_must_match_devices():
    with pytest.raises(ValueError, match=r"--mesh data=2,model=4: needs 8 devices but 1"):
        meshlib.make_mesh("data=2,model=4")
    assert meshlib.make_mesh("data=1,model=1").shape == {"data": 1, "model": 1}


def test_indivisible_model_dimension_is_named():
    # SmolLM2: 9 heads, 3 KV heads, FFN 1536, vocabulary 49152
    with pytest.raises(ValueError, match=r"n_heads=9 is not divisible by model=2"):
        sharding.check_divisible(SMOLLM2, {"data": 1, "model": 2})
    with pytest.raises(ValueError, match=r"n_kv_heads=3 is not divisible by model=9"):
        sharding.check_divisible(SMOLLM2, {"data": 1, "model": 9})
    assert sharding.check_divisible(SMOLLM2, {"data": 8, "model": 3}) == frozenset()
    assert sharding.check_divisible(SMOLLM2, {"data": 1, "model": 4}, fallback=True) == \
        {"q_heads", "kv_heads"}


def test_rules_cover_the_abstract_7b_model():
    from flax import nnx

    from mugi_jax.models import Llama

    cfg = LlamaConfig(vocab_size=32000, dim=4096, n_layers=2, n_heads=32, n_kv_heads=32,
                      head_dim=128, ffn_dim=11008, tie_embeddings=False)
    state = nnx.split(nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0))))[1]
    specs = sharding.param_specs(state, cfg, {"data": 1, "model": 8})
    flat = {tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path): s
            for path, s in __import__("jax").tree_util.tree_leaves_with_path(
                specs, is_leaf=lambda x: isinstance(x, P))}
    assert flat[("layers", "0", "attn", "q_proj", "kernel", "value")] == P(None, "model")
    assert flat[("layers", "1", "mlp", "down_proj", "kernel", "value")] == P("model", None)
    assert flat[("lm_head", "kernel", "value")] == P(None, "model")
    full = sharding.param_bytes_per_device(state, cfg, {"data": 1, "model": 1})
    eighth = sharding.param_bytes_per_device(state, cfg, {"data": 1, "model": 8})
    assert full / 8 <= eighth < full / 8 * 1.01


def test_unknown_parameter_is_an_error():
    with pytest.raises(ValueError, match="no sharding rule for parameter 'rotary.freqs'"):
        sharding.param_specs({"rotary": {"freqs": __import__("numpy").zeros(4)}}, SMOLLM2,
                             {"data": 1, "model": 1})


def test_distributed_env_missing_is_named():
    with pytest.raises(meshlib.DistributedEnvError,
                       match=r"--distributed: missing environment variable\(s\) "
                             r"JAX_NUM_PROCESSES, JAX_PROCESS_ID"):
        meshlib.init_distributed({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
    with pytest.raises(meshlib.DistributedEnvError, match="JAX_PROCESS_ID=2 must be in 0..1"):
        meshlib.init_distributed({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2",
                                  "JAX_PROCESS_ID": "2"})


def _check_checkpoint(equivalence, spec):
    """A Hugging Face directory loaded onto the mesh equals the single-device loader's model,
    and the files are read once in total (each device's slice; replicated slices once)."""
    load = equivalence["meshes"][spec]["load"]
    assert load["identical"]
    assert load["elements_read"] == load["checkpoint_elements"]
    if spec != "data=8,model=1":
        assert "P(None, 'model')" in load["all_sharded_by_rules"]


# ------------------------------------------------------------------------------------------
# command line: bad input is one line naming the setting, exit code 2


def _cli(monkeypatch, capsys, args, env=None):
    from mugi_jax.cli import main

    for k in meshlib.DISTRIBUTED_ENV + ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr("sys.argv", ["mugi-jax", *args])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err.strip()
    return e.value.code, err


@pytest.mark.parametrize("args, message", [
    (["ppl", "--mesh", "data=2,model=4"], "--mesh data=2,model=4: needs 8 devices but 1 are available"),
    (["generate", "--prompt", "x", "--mesh", "data=2;model=4"], "--mesh 'data=2;model=4': data must be a positive integer"),
    (["tune", "--mesh", "model=0"], "--mesh 'model=0': model must be a positive integer"),
    (["experiment", "accuracy", "--mesh", "data=3"], "needs 3 devices"),
])
def test_cli_bad_mesh(monkeypatch, capsys, args, message):
    code, err = _cli(monkeypatch, capsys, args)
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_cli_distributed_without_environment(monkeypatch, capsys):
    code, err = _cli(monkeypatch, capsys, ["ppl", "--distributed"],
                     env={"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1"})
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "missing environment variable(s) JAX_NUM_PROCESSES, JAX_PROCESS_ID" in err


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two subprocesses: about 1.5 CPU-minutes
def test_two_processes_equal_one_device(tmp_path):
    """A real multi-process run: 2 processes x 4 simulated CPU devices (jax.distributed over
    127.0.0.1, gloo collectives) on a 1x8 mesh.  Both processes get the single-device greedy
    tokens and (within the documented tolerance) perplexity; each reads only the checkpoint
    slices of its own 4 devices (about half of every split tensor); only process 0 writes."""
    sys.path.insert(0, str(ROOT / "tests"))
    from sharding_common import BATCH, CONFIG, CONTEXT, hf_checkpoint

    import numpy as np
    from flax import nnx

    from mugi_jax import eval as ev
    from mugi_jax.models import Llama, Sampler

    hf_checkpoint(tmp_path / "hf")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
           "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{_free_port()}", "JAX_NUM_PROCESSES": "2"}
    script = str(ROOT / "tests" / "sharding_multiprocess_worker.py")
    procs = [subprocess.Popen([sys.executable, script, "data=1,model=8", str(tmp_path / "hf"),
                               str(tmp_path / "out")], env={**env, "JAX_PROCESS_ID": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert [o["process_id"] for o in outs] == [0, 1]
    assert all(o["devices"] == 8 and o["local_devices"] == 4 for o in outs)
    model = Llama(CONFIG, rngs=nnx.Rngs(0))
    corpus = np.random.default_rng(0).integers(0, CONFIG.vocab_size, 2 * BATCH * CONTEXT)
    ref = ev.perplexity(model, corpus.astype(np.int32), "exact", context=CONTEXT,
                        max_tokens=None, batch_size=BATCH)
    tokens = Sampler(model, None, "mugi")([[5, 6, 7], [8, 9], [10, 11, 12, 13], [3]], 4).tokens
    for o in outs:
        assert o["tokens"] == tokens.tolist()
        assert abs(o["ppl"] - ref["ppl"]) <= 1e-6 * ref["ppl"]
        # half of every split tensor (the norms, replicated, are read whole)
        assert o["elements_read"] < 0.55 * o["checkpoint_elements"]
    assert outs[0]["local_checksum"] != outs[1]["local_checksum"]  # different slices
    assert json.loads((tmp_path / "out" / "result.json").read_text()) == {"process_id": 0}
