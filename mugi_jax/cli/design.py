"""``mugi-jax design ...``: built-in designs as editable files.

    mugi-jax design list
    mugi-jax design show mugi-256x8 > my.toml     # edit, then: mugi-jax cost llm --arch my.toml ...
"""

from __future__ import annotations

from typing import Optional

import typer

from mugi_jax.cli._common import CliError, app, check_choice, print_json

design_app = typer.Typer(name="design", help="Built-in designs as editable TOML design files.",
                         no_args_is_help=True)
app.add_typer(design_app, name="design")


@design_app.command("list")
def list_cmd(json_out: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Every built-in design name and its family."""
    from mugi_jax.designs import ARCH_NAMES, get_arch

    rows = {name: get_arch(name).family for name in ARCH_NAMES}
    if json_out:
        print_json(rows)
        return
    for name, fam in rows.items():
        typer.echo(f"{name:18s} {fam}")


@design_app.command("show")
def show(
    name: str = typer.Argument(..., help="A built-in design (mugi-256x8, sa-16, ...) or a design file."),
    variant: Optional[str] = typer.Option(None, "--variant", help="Mugi sub-variant: vlp or lut."),
    nodes: str = typer.Option("1x1", "--nodes", help="Node mesh: 1x1, 2x1, 2x2, 4x4, 8x8."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (family, fields, file)."),
) -> None:
    """Print the complete, commented design file of a design (redirect it to a .toml and edit)."""
    from mugi_jax.designs import ARCH_NAMES, design_file, get_arch
    from mugi_jax.hw import MESHES

    if not name.endswith(".toml"):
        check_choice("NAME", name, ARCH_NAMES)
    check_choice("--nodes", nodes, MESHES)
    try:
        arch = get_arch(name, variant=variant, nodes=nodes)
    except ValueError as err:
        raise CliError(str(err)) from err
    text = design_file(arch)
    if json_out:
        print_json({"name": arch.name, "family": arch.family, "nodes": arch.mesh.name,
                    "fields": dict(arch.params), "file": text})
        return
    typer.echo(text, nl=False)
