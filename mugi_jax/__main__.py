"""``python -m mugi_jax`` is the ``mugi-jax`` command."""

from mugi_jax.cli import main

main()
