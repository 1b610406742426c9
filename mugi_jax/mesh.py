"""Device meshes for mugi-jax: the ``--mesh data=D,model=M`` mesh, placing host arrays on it
(one process or several), and ``--distributed`` start-up of a multi-process run.

Only JAX is imported here, so every layer (models, cost sweeps, the CLI) can use it.  What is
sharded how is decided by the callers: parameters by :mod:`mugi_jax.models.sharding`, rows and
sweep designs along ``data`` (or the whole mesh).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["MESH_AXES", "MeshSpec", "parse_mesh", "make_mesh", "put", "to_host",
           "batch_sharding", "init_distributed", "is_writer", "DistributedEnvError",
           "DISTRIBUTED_ENV", "using", "current"]

MESH_AXES = ("data", "model")


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    """Mesh shape: ``data`` x ``model`` devices."""

    data: int = 1
    model: int = 1

    @property
    def size(self) -> int:
        return self.data * self.model

    def __str__(self) -> str:
        return f"data={self.data},model={self.model}"


def parse_mesh(text: str) -> MeshSpec:
    """``"data=2,model=4"`` -> ``MeshSpec(2, 4)`` (an axis left out is 1).

    Raises ``ValueError`` naming ``--mesh`` and the allowed form for anything else.
    """
    form = "expected data=D,model=M with positive integers (e.g. data=2,model=4)"
    sizes: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        key, eq, val = part.partition("=")
        key = key.strip()
        if not eq or key not in MESH_AXES:
            raise ValueError(f"--mesh {text!r}: unknown part {part!r}; {form}")
        if key in sizes:
            raise ValueError(f"--mesh {text!r}: axis {key!r} given twice; {form}")
        try:
            n = int(val)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"--mesh {text!r}: {key} must be a positive integer, got {val!r}; "
                             f"{form}")
        sizes[key] = n
    return MeshSpec(**sizes)


def make_mesh(spec: MeshSpec | str, devices: Sequence[Any] | None = None) -> Mesh:
    """A ``(data, model)`` :class:`jax.sharding.Mesh` over ``devices`` (default: all devices of
    every process).  Raises ``ValueError`` when the mesh size differs from the device count."""
    spec = parse_mesh(spec) if isinstance(spec, str) else spec
    devices = list(jax.devices() if devices is None else devices)
    if spec.size != len(devices):
        hint = ("; on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N simulates N devices"
                if devices and devices[0].platform == "cpu" else "")
        raise ValueError(f"--mesh {spec}: needs {spec.size} devices but {len(devices)} are "
                         f"available (data x model must equal the device count){hint}")
    arr = np.asarray(devices, dtype=object).reshape(spec.data, spec.model)
    return Mesh(arr, MESH_AXES)


_CURRENT: contextvars.ContextVar[tuple[Mesh | None, bool]] = contextvars.ContextVar(
    "mugi_jax_mesh", default=(None, False))


@contextlib.contextmanager
def using(mesh: Mesh | None, fallback: bool = False) -> Iterator[Mesh | None]:
    """Run the enclosed code on ``mesh``: perplexity, generation and cost sweeps called without
    an explicit ``mesh=`` use it (how ``--mesh`` reaches the report's experiments and
    ``tune``).  ``fallback``: replicate model dimensions the ``model`` axis does not divide."""
    token = _CURRENT.set((mesh, fallback))
    try:
        yield mesh
    finally:
        _CURRENT.reset(token)


def current() -> tuple[Mesh | None, bool]:
    """``(mesh, fallback)`` set by :func:`using` (``(None, False)`` outside it)."""
    return _CURRENT.get()


def put(x: Any, sharding: NamedSharding) -> jax.Array:
    """Place a host or device array with ``sharding``; each process transfers only the pieces
    its own devices hold (so it also works when the mesh spans several processes)."""
    if isinstance(x, jax.Array) and x.is_fully_addressable and sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def to_host(x: jax.Array) -> np.ndarray:
    """A (possibly multi-process) array as one NumPy array on every process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Rows along ``data``, everything else replicated (windows, prompts, sweep designs)."""
    return NamedSharding(mesh, P("data", *([None] * (ndim - 1))))


# ------------------------------------------------------------------------------------------
# several processes
# ------------------------------------------------------------------------------------------

# environment variables by which jax.distributed.initialize() recognises a cluster itself
_CLUSTER_MARKERS = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "TPU_WORKER_HOSTNAMES",
                    "MEGASCALE_COORDINATOR_ADDRESS")
DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


class DistributedEnvError(ValueError):
    """A multi-process launch without the environment it needs (names the variables)."""


def init_distributed(environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """``jax.distributed.initialize()`` from the standard environment.

    ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0), ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID``; or, under SLURM / Open MPI / MPICH / Cloud TPU, JAX's own cluster
    detection.  Raises :class:`DistributedEnvError` naming the missing variables.  Returns
    ``{"process_id", "process_count", "devices", "local_devices"}``."""
    env = os.environ if environ is None else environ
    explicit = [k for k in DISTRIBUTED_ENV if env.get(k)]
    if not explicit and any(env.get(k) for k in _CLUSTER_MARKERS):
        jax.distributed.initialize()
    else:
        missing = [k for k in DISTRIBUTED_ENV if not env.get(k)]
        if missing:
            raise DistributedEnvError(
                f"--distributed: missing environment variable(s) {', '.join(missing)} (set "
                f"JAX_COORDINATOR_ADDRESS=host:port of process 0, JAX_NUM_PROCESSES and "
                f"JAX_PROCESS_ID=0..N-1 on every process, or launch under SLURM / mpirun)")
        try:
            n, pid = int(env["JAX_NUM_PROCESSES"]), int(env["JAX_PROCESS_ID"])
        except ValueError as err:
            raise DistributedEnvError(f"--distributed: JAX_NUM_PROCESSES and JAX_PROCESS_ID must "
                                      f"be integers ({err})") from None
        if not 0 <= pid < n:
            raise DistributedEnvError(f"--distributed: JAX_PROCESS_ID={pid} must be in 0.."
                                      f"{n - 1} (JAX_NUM_PROCESSES={n})")
        jax.distributed.initialize(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                                   num_processes=n, process_id=pid)
    return {"process_id": jax.process_index(), "process_count": jax.process_count(),
            "devices": jax.device_count(), "local_devices": jax.local_device_count()}


def is_writer() -> bool:
    """True on the process that prints and writes results (process 0)."""
    return jax.process_index() == 0
