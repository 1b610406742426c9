"""Models over a device mesh: parameters sharded by rules over parameter paths.

A mesh has two axes, ``data`` and ``model`` (``--mesh data=D,model=M``).  Sharding is described
in two steps, as in MaxText:

1. :data:`PARAM_RULES` give every parameter (matched by its path in the NNX state, e.g.
   ``layers.3.attn.q_proj.kernel``) a *logical* axis name per dimension (``vocab``, ``embed``,
   ``q_heads``, ``kv_heads``, ``mlp``);
2. :data:`LOGICAL_AXIS_RULES` map logical axes to mesh axes: attention heads and FFN columns
   along ``model`` (Megatron-style: Q/K/V and gate/up column-parallel, O and down row-parallel),
   the vocabulary (embedding and LM head) along ``model``, norms and ``embed`` replicated;
   activations (``batch``: perplexity windows, generation rows, cost-sweep designs) along
   ``data``.

A prepared kernel (an INT4 :class:`~mugi_jax.quant.QuantizedTensor` - codes, scales, zeros - inside
a :class:`~mugi_jax.gemm.PreparedWeight` with the datapath's normalised copies) shards with its
weight: every array's first axis runs along the weight's ``in`` axis (rows or groups of rows) and
its last along ``out``, and takes that axis's mesh axis when it divides the length; a row-parallel
array with too few groups (e.g. Llama-2-7B ``down_proj``: 86 groups of 128 over ``model=8``) is
split along ``out`` instead.

Nothing about the numerics changes: the same jitted programs run with sharded inputs and XLA's
SPMD partitioner inserts the collectives.  Results equal the single-device ones bit for bit
with whole weights on every device (``data`` only); with weights split over ``model``, the
row-parallel layers (O, down), the vocabulary-split log-softmax and XLA's dots on other shapes
add float32 partial sums in another order (about one ulp; see docs/scaling.md).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mugi_jax.mesh import MESH_AXES, MeshSpec, batch_sharding, make_mesh, parse_mesh, put, to_host

__all__ = [
    "PARAM_RULES", "LOGICAL_AXIS_RULES", "logical_axes", "param_specs", "state_shardings",
    "shard", "shard_prepared", "cache_sharding", "check_divisible", "param_bytes_per_device",
    "device_memory", "MESH_AXES", "MeshSpec", "make_mesh", "parse_mesh", "put", "to_host",
    "batch_sharding",
]

# parameter path (regex, full match) -> logical axis of each dimension
PARAM_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"embed", ("vocab", "embed")),
    (r"lm_head\.kernel", ("embed", "vocab")),
    (r"layers\.\d+\.attn\.q_proj\.kernel", ("embed", "q_heads")),
    (r"layers\.\d+\.attn\.[kv]_proj\.kernel", ("embed", "kv_heads")),
    (r"layers\.\d+\.attn\.q_proj\.bias", ("q_heads",)),  # Qwen2
    (r"layers\.\d+\.attn\.[kv]_proj\.bias", ("kv_heads",)),
    (r"layers\.\d+\.attn\.o_proj\.kernel", ("q_heads", "embed")),
    (r"layers\.\d+\.mlp\.(gate|up)_proj\.kernel", ("embed", "mlp")),
    (r"layers\.\d+\.mlp\.down_proj\.kernel", ("mlp", "embed")),
    (r".*norm\.scale", ("embed",)),
)

# logical axis -> mesh axis (None: replicated)
LOGICAL_AXIS_RULES: dict[str, str | None] = {
    "batch": "data", "q_heads": "model", "kv_heads": "model", "mlp": "model", "vocab": "model",
    "embed": None, "length": None, "head_dim": None,
}

# logical axis -> (config field whose count must divide by the mesh axis, unit of a shard)
_LOGICAL_COUNT = {"q_heads": "n_heads", "kv_heads": "n_kv_heads", "mlp": "ffn_dim",
                  "vocab": "vocab_size"}


def _axis_size(mesh: Mesh | Mapping[str, int], axis: str) -> int:
    shape = mesh.shape if isinstance(mesh, Mesh) else mesh
    return int(shape.get(axis, 1))


def check_divisible(config: Any, mesh: Mesh | Mapping[str, int],
                    fallback: bool = False) -> frozenset[str]:
    """The logical axes that cannot be split over their mesh axis.

    Shards hold whole attention heads, whole FFN columns and whole vocabulary rows, so
    ``n_heads``, ``n_kv_heads``, ``ffn_dim`` and ``vocab_size`` must be multiples of the
    ``model`` axis.  Raises ``ValueError`` naming the first dimension that is not, unless
    ``fallback`` (then that logical axis is replicated and returned)."""
    replicated = set()
    for logical, field in _LOGICAL_COUNT.items():
        axis = LOGICAL_AXIS_RULES[logical]
        n = _axis_size(mesh, axis) if axis else 1
        count = getattr(config, field)
        if count % n:
            if not fallback:
                ok = [d for d in range(1, count + 1) if count % d == 0 and d <= 64]
                raise ValueError(
                    f"--mesh: the model's {field}={count} is not divisible by {axis}={n}; use a "
                    f"{axis} axis dividing it ({', '.join(map(str, ok))}) or --mesh-fallback "
                    f"(fallback=True) to replicate what does not divide")
            replicated.add(logical)
    return frozenset(replicated)


def logical_axes(path: str) -> tuple[str | None, ...] | None:
    """The logical axes of the parameter at ``path`` (``None`` when no rule matches)."""
    for pattern, axes in PARAM_RULES:
        if re.fullmatch(pattern, path):
            return axes
    return None


def _mesh_spec(axes: Sequence[str | None], replicated: frozenset[str]) -> P:
    return P(*(None if a is None or a in replicated else LOGICAL_AXIS_RULES.get(a) for a in axes))


def _key_name(k: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _split_path(keypath: Sequence[Any]) -> tuple[str, bool]:
    """``(parameter path, whether the leaf is a part of a structured weight)`` of a state leaf
    (a prepared kernel is a pytree: ``QuantizedTensor`` codes/scales/zeros, the GEMM's
    normalised copies)."""
    names = [_key_name(k) for k in keypath]
    if "value" in names:
        i = names.index("value")
        return ".".join(names[:i]), i + 1 < len(names)
    return ".".join(names), False


def _derived_spec(spec: P, shape: Sequence[int], mesh: Mesh | Mapping[str, int]) -> P:
    """The spec of an array derived from a ``(in, out)`` weight: its first axis runs along ``in``
    (rows, or groups of rows), its last along ``out``, axes between are whole. When the mesh axis
    does not divide the first axis (fewer groups than devices, e.g. Llama-2-7B ``down_proj``: 86
    groups of 128 over ``model=8``) the array is split along its last axis instead, so each device
    still holds 1/M of it (XLA regathers it at use); failing that too, it is replicated."""
    first = spec[0] if len(shape) > 1 else None
    last = spec[-1]
    n = len(shape)

    def divides(axis: int, mesh_axis: str | None) -> bool:
        return mesh_axis is not None and shape[axis] % _axis_size(mesh, mesh_axis) == 0

    out: list[str | None] = [None] * n
    if first is not None and divides(0, first):
        out[0] = first
    elif first is not None and last is None and n > 1 and divides(n - 1, first):
        out[n - 1] = first
    if last is not None and divides(n - 1, last):
        out[n - 1] = last
    return P(*out)


def param_specs(state: Any, config: Any, mesh: Mesh | Mapping[str, int],
                fallback: bool = False) -> Any:
    """A pytree like ``state`` (an NNX state, concrete or abstract) of :class:`PartitionSpec`s.

    Raises ``ValueError`` for a parameter no rule covers (so a new parameter is never silently
    replicated) and for a model dimension the ``model`` axis does not divide (see
    :func:`check_divisible`)."""
    replicated = check_divisible(config, mesh, fallback)

    def spec(keypath: Any, leaf: Any) -> P:
        path, derived = _split_path(keypath)
        axes = logical_axes(path)
        if axes is None:
            raise ValueError(f"no sharding rule for parameter {path!r} "
                             f"(mugi_jax.models.sharding.PARAM_RULES)")
        s = _mesh_spec(axes, replicated)
        if derived:
            return _derived_spec(s, leaf.shape, mesh)
        if len(axes) != len(leaf.shape):
            raise ValueError(f"sharding rule for {path!r} has {len(axes)} axes but the "
                             f"parameter has shape {leaf.shape}")
        return s

    return jax.tree_util.tree_map_with_path(spec, state)


def state_shardings(state: Any, config: Any, mesh: Mesh, fallback: bool = False) -> Any:
    """:func:`param_specs` as :class:`NamedSharding`s on ``mesh``."""
    return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s),
                                  param_specs(state, config, mesh, fallback),
                                  is_leaf=lambda x: isinstance(x, P))


def shard(model: nnx.Module, mesh: Mesh, fallback: bool = False) -> nnx.Module:
    """A copy of ``model`` with every parameter placed on ``mesh`` by :data:`PARAM_RULES`
    (works for FP32 and prepared / INT4 models alike)."""
    graphdef, state = nnx.split(model)
    shardings = state_shardings(state, model.config, mesh, fallback)
    state = jax.tree_util.tree_map(put, state, shardings)
    return nnx.merge(graphdef, state)


def shard_prepared(model: nnx.Module, policy: Any, mesh: Mesh, fallback: bool = False,
                   residency: str = "prepared") -> nnx.Module:
    """``shard(prepare(model, policy), mesh)`` without ever holding the prepared (e.g. INT4)
    weights on one device: the preparation runs as one jitted SPMD program on the sharded FP32
    weights, with the prepared weights' shardings as its outputs."""
    from mugi_jax import numerics
    from mugi_jax.models.llama import prepare

    policy = numerics.preset(policy, numerics.family_of(model))
    model = shard(model, mesh, fallback)
    graphdef, state = nnx.split(model)

    def prep(st: Any) -> Any:
        return nnx.split(prepare(nnx.merge(graphdef, st), policy, residency))[1]

    # shapes of the prepared model, traced from the state as an argument (no weight is read)
    new_graphdef, abstract = nnx.split(
        nnx.eval_shape(lambda st: prepare(nnx.merge(graphdef, st), policy, residency), state))

    out = state_shardings(abstract, model.config, mesh, fallback)
    new_state = jax.jit(prep, out_shardings=out)(state)
    return nnx.merge(new_graphdef, new_state)


def cache_sharding(mesh: Mesh, config: Any, fallback: bool = False) -> Any:
    """Shardings of a :class:`~mugi_jax.models.llama.Cache`: rows along ``data``.  A layer's
    cache rows are ``batch x kv_heads`` merged, batch-major, so a ``data`` group holds every KV
    head of its batch rows: the heads are not split along ``model`` (a merged axis split along
    ``data`` and ``model`` would give a device the heads of a batch row only when one batch row
    falls to each ``data`` group)."""
    from mugi_jax.models.llama import Cache

    check_divisible(config, mesh, fallback)
    kv = (NamedSharding(mesh, P("data", None, None)),) * config.n_layers  # one per layer
    return Cache(k=kv, v=kv, valid=NamedSharding(mesh, P("data", None)),
                 index=NamedSharding(mesh, P()))


# ------------------------------------------------------------------------------------------
# memory
# ------------------------------------------------------------------------------------------


def param_bytes_per_device(state: Any, config: Any, mesh: Mesh | Mapping[str, int],
                           fallback: bool = False) -> int:
    """Bytes of parameters one device holds under the rules (works on abstract states from
    ``nnx.eval_shape``; INT4 codes are counted as stored in memory: one int8 per code)."""
    specs = param_specs(state, config, mesh, fallback)
    total = 0
    for leaf, spec in zip(jax.tree_util.tree_leaves(state),
                          jax.tree_util.tree_leaves(specs, is_leaf=lambda x: isinstance(x, P))):
        shape = list(leaf.shape)
        for i, a in enumerate(spec):
            if a is not None:
                shape[i] //= _axis_size(mesh, a)
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total


def device_memory(state: Any) -> dict[str, int]:
    """Bytes of ``state``'s (concrete, sharded) arrays held on each addressable device."""
    per: dict[str, int] = {}
    for leaf in jax.tree_util.tree_leaves(state):
        for s in leaf.addressable_shards:
            per[str(s.device)] = per.get(str(s.device), 0) + s.data.nbytes
    return per


# ------------------------------------------------------------------------------------------
# per-host checkpoint reading
# ------------------------------------------------------------------------------------------


def _model_name(path: str) -> str:
    """NNX state path -> the loaders' parameter name (``layers.3.attn.q_proj.kernel`` ->
    ``layers.3.q_proj``, ``final_norm.scale`` -> ``final_norm``)."""
    parts = [p for p in path.split(".") if p not in ("attn", "mlp", "kernel", "scale")]
    return ".".join(parts)


def reads_sharded(path: Any) -> bool:
    """Whether :func:`load_safetensors_sharded` reads the Hugging Face directory ``path``: the
    Llama family (Llama 2 / 3 layout: no Q/K/V bias, no Q/K norms); other families are loaded
    whole and then sharded."""
    from mugi_jax.models import loaders
    from mugi_jax.models.hf import read_config

    try:
        config = loaders.config_from_hf(read_config(path))
    except (ValueError, FileNotFoundError, KeyError):
        return False
    return config.family == "llama" and not config.qkv_bias and not config.qk_norm \
        and config.rope_layout == "adjacent" and not config.post_norms


def load_safetensors_sharded(path: Any, mesh: Mesh, fallback: bool = False) -> tuple[nnx.Module, Any]:
    """Load a Hugging Face Llama directory straight onto ``mesh``: ``(model, config)``.

    Every parameter is created with :func:`jax.make_array_from_callback`, whose callback reads
    from the memory-mapped safetensors files only the slice one device holds (transposed to the
    model's ``(in, out)`` layout; Q/K rows permuted to adjacent-pair RoPE within each head, which
    a head-aligned shard contains whole).  No process ever holds a full weight it does not
    need, and no full copy of the checkpoint exists in host memory.
    """
    from mugi_jax.models import loaders
    from mugi_jax.models.hf import SafetensorsDir, read_config
    from mugi_jax.models.llama import Llama

    config = loaders.config_from_hf(read_config(path))
    tensors = SafetensorsDir(path)
    hf_key = {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight",
              "lm_head": "lm_head.weight"}
    hf_key.update({f"layers.{i}.{ours}": f"model.layers.{i}.{theirs}"
                   for i in range(config.n_layers)
                   for theirs, ours in loaders._HF_LAYER.items()})
    expected = config.param_shapes()
    for name, shape in expected.items():
        key = hf_key[name]
        if key not in tensors:
            raise loaders.CheckpointError(f"checkpoint is missing tensor {key!r} "
                                          f"(expected shape {shape})")
        got = tensors.shape(key)
        want = shape[::-1] if len(shape) == 2 and name != "embed" else shape
        if got != want:
            raise loaders.CheckpointError(f"tensor {key!r} has shape {got} but the config "
                                          f"expects {want} (model parameter {name})")

    abstract = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    shardings = state_shardings(state, config, mesh, fallback)
    heads = {"q_proj": config.n_heads, "k_proj": config.n_kv_heads}

    def build(keypath: Any, leaf: Any, sh: NamedSharding) -> jax.Array:
        name = _model_name(_split_path(keypath)[0])
        key = hf_key[name]
        kind = name.rsplit(".", 1)[-1]
        cache: dict[tuple, np.ndarray] = {}  # a slice replicated on several devices: read once

        def read(index: tuple[slice, ...]) -> np.ndarray:
            norm = tuple(s.indices(n)[:2] for s, n in zip(index, leaf.shape))
            if norm in cache:
                return cache[norm]
            if len(leaf.shape) == 1 or name == "embed":  # stored in the model's layout
                x = tensors.read(key, index)
            else:  # HF (out, in) -> (in, out)
                x = tensors.read(key, (index[1], index[0]))
                if kind in heads:  # whole heads: permute half-split -> adjacent pairs
                    start, stop = norm[1]
                    hd = config.head_dim
                    if start % hd or stop % hd:
                        raise AssertionError(f"{name}: shard {start}:{stop} splits a head")
                    x = loaders.hf_to_interleaved(x, (stop - start) // hd)
                x = x.T
            cache[norm] = np.ascontiguousarray(x)
            return cache[norm]

        return jax.make_array_from_callback(tuple(leaf.shape), sh, read)

    leaves = jax.tree_util.tree_map_with_path(build, state, shardings)
    return nnx.merge(graphdef, leaves), config
