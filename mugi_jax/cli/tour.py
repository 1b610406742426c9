"""``mugi-jax tour``: a short tour of the number formats and INT4 quantization."""

from __future__ import annotations

import typer

from mugi_jax.cli._common import app, print_json


@app.command()
def tour(json_out: bool = typer.Option(False, "--json", help="Print figures as one JSON object.")) -> None:
    """A tour of the number formats: BF16 fields, VLP mantissa rounding, INT4 quantization error."""
    from mugi_jax import _tour

    result = _tour.run()
    if json_out:
        print_json(result)
    else:
        _tour.print_report(result)
