"""Result files written atomically get the mode a plain write would give them."""

import os
import stat

from mugi_jax import io


def test_new_file_takes_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        io.write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o644


def test_rewrite_keeps_existing_mode(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("old")
    path.chmod(0o640)
    io.write_text(path, "new")
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
