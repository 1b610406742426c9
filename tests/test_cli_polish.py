"""The CLI contract: every command listed with one line of help, --json wherever figures are
printed, one-line errors with a non-zero exit code."""

from __future__ import annotations

import subprocess
import sys

import typer.main

from mugi_jax.cli import app

MUGI = [sys.executable, "-c", "from mugi_jax.cli import main; main()"]


def _leaves(cmd, path=()):
    if hasattr(cmd, "list_commands"):
        ctx = type(cmd).context_class(cmd)
        for n in cmd.list_commands(ctx):
            yield from _leaves(cmd.get_command(ctx, n), path + (n,))
    else:
        yield path, cmd


def test_help_lists_every_command_with_one_line():
    root = typer.main.get_command(app)
    r = subprocess.run(MUGI + ["--help"], capture_output=True, text=True, env={"COLUMNS": "200", "PATH": ""})
    assert r.returncode == 0
    for name in root.list_commands(type(root).context_class(root)):
        assert name in r.stdout, name
    for path, cmd in _leaves(root):
        first = (cmd.help or "").strip().split("\n\n")[0]
        assert first and "\n" not in first, (path, first)
    for required in ("report", "experiment", "cost", "tune", "ppl", "data", "tour"):
        assert required in r.stdout


def test_every_leaf_command_has_json():
    for path, cmd in _leaves(typer.main.get_command(app)):
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        assert "--json" in opts, path


def test_errors_are_one_line_nonzero():
    for args in (["experiment", "nope"], ["report", "--only", "nope", "--quick"],
                 ["cost", "llm", "--arch", "no-such-design"], ["no-such-command"], ["experiment"],
                 ["report", "--no-such-option"]):
        r = subprocess.run(MUGI + args, capture_output=True, text=True)
        assert r.returncode != 0, args
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, r.stderr)
        assert "Traceback" not in r.stderr
