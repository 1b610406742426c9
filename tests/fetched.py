"""Whether the downloads a test needs are in the data cache (``make setup`` fetches them)."""

from __future__ import annotations


def smollm2_and_sotu() -> bool:
    """True when SmolLM2-135M and the SOTU corpus are fetched (nothing is downloaded here)."""
    from mugi_jax import data

    try:
        data.model_path("smollm2", fetch_missing=False)
        data.corpus_text("sotu", fetch_missing=False)
    except data.DataError:
        return False
    return True
