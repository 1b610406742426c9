"""A damaged cache is named with its repair command on use, and `data fetch` repairs it.

Works on a private MUGI_JAX_DATA whose downloads/ links to the shared cache's verified archives
(never touching the shared extracted files): no network, a few seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mugi_jax import data

REPO = Path(__file__).resolve().parents[1]
MUGI = [sys.executable, "-c", "from mugi_jax.cli import main; main()"]


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    shared = data.data_dir()
    need = [data.ARTIFACTS[n].filename for n in ("sotu", "smollm2")]
    if not all((shared / "downloads" / f).exists() for f in need):
        pytest.skip("the shared cache lacks the sotu/smollm2 downloads (run `make setup`)")
    root = tmp_path / "data"
    (root / "downloads").mkdir(parents=True)
    for f in need:
        (root / "downloads" / f).symlink_to(shared / "downloads" / f)
    monkeypatch.setenv("MUGI_JAX_DATA", str(root))
    return root


def _cli(*args):
    return subprocess.run(MUGI + list(args), capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=dict(os.environ))


def test_damaged_corpus_and_gguf_are_named_then_repaired(private_cache):
    sotu = private_cache / data.BUILT["sotu"].relpath
    gguf = private_cache / data.BUILT["smollm2"].relpath
    assert data.fetch("sotu") == sotu and data.fetch("smollm2") == gguf
    good_gguf = gguf.read_bytes()

    sotu.write_text("")  # emptied corpus
    with pytest.raises(data.DataError, match=r"sotu\.txt is damaged \(size 0 bytes.*"
                                             r"`mugi-jax data fetch sotu`"):
        data.corpus_text("sotu")
    r = _cli("ppl", "--corpus", "sotu", "--max-tokens", "64")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert str(sotu) in r.stderr and "mugi-jax data fetch sotu" in r.stderr

    gguf.write_bytes(good_gguf[:len(good_gguf) // 2])  # truncated model
    with pytest.raises(data.DataError, match=r"Q4_1\.gguf is damaged .*data fetch smollm2"):
        data.model_path("smollm2")
    with open(gguf, "r+b") as f:  # same size, one byte changed: caught by the sha256
        f.write(good_gguf[:len(good_gguf) // 2])
        f.write(good_gguf[len(good_gguf) // 2:])
        f.seek(4096)
        f.write(bytes([good_gguf[4096] ^ 1]))
    with pytest.raises(data.DataError, match="sha256"):
        data.model_path("smollm2")

    r = _cli("data", "fetch", "sotu", "smollm2")
    assert r.returncode == 0, r.stderr
    assert data.corpus_text("sotu").startswith("Mr. Speaker")
    assert gguf.read_bytes() == good_gguf


def test_derived_cache_files_are_verified(tmp_path):
    """Computed caches (tune's captured calibration) carry a size+sha256 sidecar; a damaged one
    reads as absent (removed), so it is recomputed instead of failing inside NumPy."""
    path = tmp_path / "cache" / "cal.npz"
    data.save_derived(path, b"x" * 1000)
    assert data.load_derived(path) == b"x" * 1000
    path.write_bytes(b"x" * 500)  # truncated
    assert data.load_derived(path) is None and not path.exists()
    data.save_derived(path, b"y" * 10)
    path.write_bytes(b"z" * 10)  # same size, other bytes
    assert data.load_derived(path) is None
    assert data.load_derived(tmp_path / "absent.npz") is None
