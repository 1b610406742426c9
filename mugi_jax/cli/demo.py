"""``mugi-jax demo``: a short tour of the number formats and INT4 quantization."""

from __future__ import annotations

import typer

from mugi_jax.cli._common import app, print_json


@app.command()
def demo(json_out: bool = typer.Option(False, "--json", help="Print figures as one JSON object.")) -> None:
    """Show BF16 field decomposition, VLP mantissa rounding and INT4 quantization error."""
    from mugi_jax import _demo

    result = _demo.run()
    if json_out:
        print_json(result)
    else:
        _demo.print_report(result)
