"""``--mesh`` / ``--mesh-fallback`` / ``--distributed``: shared by the commands that run models."""

from __future__ import annotations

from typing import Any, Optional

import typer

from mugi_jax.cli._common import CliError

MESH_OPTION: Any = typer.Option(
    None, "--mesh", help="Device mesh data=D,model=M (D x M = the device count): weights by "
                         "heads / FFN columns / vocabulary along model, windows or rows along "
                         "data.  Default: one device.")
FALLBACK_OPTION: Any = typer.Option(
    False, "--mesh-fallback", help="Replicate model dimensions the model axis does not divide "
                                   "(default: an error naming the dimension).")
DISTRIBUTED_OPTION: Any = typer.Option(
    False, "--distributed", help="Multi-process run: jax.distributed.initialize() from "
                                 "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID "
                                 "(or SLURM / mpirun); only process 0 prints and writes.")


def setup(mesh: Optional[str], distributed: bool) -> Any:
    """Start the distributed runtime (first: before JAX touches a device) and build the mesh
    (``None`` without ``--mesh``).  Bad input raises :class:`CliError` naming the setting."""
    from mugi_jax import mesh as meshlib

    if distributed:
        try:
            meshlib.init_distributed()
        except meshlib.DistributedEnvError as err:
            raise CliError(str(err)) from err
    if mesh is None:
        return None
    try:
        return meshlib.make_mesh(meshlib.parse_mesh(mesh))
    except ValueError as err:
        raise CliError(str(err)) from err


def check_model(config: Any, mesh: Any, fallback: bool) -> None:
    """Fail early (one line) when the model's dimensions do not divide over ``model``."""
    if mesh is None:
        return
    from mugi_jax.models import sharding

    try:
        sharding.check_divisible(config, mesh, fallback)
    except ValueError as err:
        raise CliError(str(err)) from err


def using(mesh: Any, fallback: bool) -> Any:
    """Context: library calls inside run on ``mesh`` (see :func:`mugi_jax.mesh.using`)."""
    from mugi_jax import mesh as meshlib

    return meshlib.using(mesh, fallback)


def is_writer() -> bool:
    """Only process 0 prints results and writes result files."""
    from mugi_jax import mesh as meshlib

    return meshlib.is_writer()
