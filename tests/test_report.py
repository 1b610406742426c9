"""The reproduction report: registry, runner contract, and `mugi-jax report --quick` end to end."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fetched

from mugi_jax import report
from mugi_jax.report import suite
from mugi_jax.report.registry import EXPERIMENTS, repo_root

REPO = Path(__file__).resolve().parents[1]
MUGI = [sys.executable, "-c", "from mugi_jax.cli import main; main()"]



def test_every_registered_experiment_has_a_script_with_run():
    root = repo_root()
    assert root is not None
    for e in EXPERIMENTS:
        path = root / "experiments" / f"{e.name}.py"
        assert path.exists(), path
        text = path.read_text()
        assert "def run(out_dir" in text and f'cli_main("{e.name}")' in text, e.name


def test_compare_verdicts():
    assert report.compare("llm_throughput_x", 2.07)["verdict"] == "matches"
    assert report.compare("llm_throughput_x", 3.0)["verdict"] == "higher"
    c = report.compare("embodied_carbon_x", 1.0)
    assert c["verdict"] == "lower" and "1.48" in c["text"] and c["source"]


def test_csv_to_markdown_truncates(tmp_path):
    p = tmp_path / "x" / "t.csv"
    p.parent.mkdir()
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b"])
        for i in range(40):
            w.writerow([i, 1.23456789e-7 * i])
    md = suite.csv_to_markdown(p, max_rows=5)
    assert md.count("\n| ") == 5 and "35 more rows" in md and "1.235e-07" in md


def test_unknown_experiment_is_one_line_error():
    r = subprocess.run(MUGI + ["experiment", "no-such-thing"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: unknown experiment")


def test_python_m_experiment_and_skip(tmp_path):
    """`python -m experiments.NAME` writes CSV + PNG + provenance; a rerun skips it."""
    cmd = [sys.executable, "-m", "experiments.multinode", "--quick", "--out", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    d = tmp_path / "multinode"
    prov = json.loads((d / "provenance.json").read_text())
    assert {"config", "seed", "versions", "git_revision", "wall_time_s"} <= set(prov)
    assert prov["config"]["quick"] is True
    assert (d / "multinode.csv").exists() and (d / "multinode.png").exists()
    summary = json.loads((d / "reading.json").read_text())
    assert summary["status"] == "ok" and summary["readings"]
    oc = report.run_experiment("multinode", tmp_path, quick=True)
    assert oc.status == "skipped"
    # quick results do not satisfy a full request
    assert not report.registry.is_complete(d, quick=False)


def test_full_requests_need_full_results(tmp_path):
    from mugi_jax.io import write_json
    from mugi_jax.report import registry

    d = tmp_path / "x"
    write_json(d / "reading.json", {"status": "ok", "quick": False, "full": False})
    assert registry.is_complete(d, quick=False) and registry.is_complete(d, quick=True)
    assert not registry.is_complete(d, quick=False, full=True)
    write_json(d / "reading.json", {"status": "ok", "quick": False, "full": True})
    assert registry.is_complete(d, quick=False, full=True)
    assert registry.has_full(registry.load("embed_accuracy"))
    assert not registry.has_full(registry.load("multinode"))
    with pytest.raises(ValueError, match="exclusive"):
        registry.run_experiment("multinode", tmp_path, quick=True, full=True)


@pytest.mark.slow
def test_report_quick_end_to_end(tmp_path):
    """One test (not a shared fixture) so that pytest-xdist never runs the report twice."""
    out = tmp_path
    r = subprocess.run(MUGI + ["report", "--quick", "--out", str(out)], capture_output=True, text=True,
                       cwd=REPO, env=dict(os.environ, MPLBACKEND="Agg"))
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    md = (out / "report.md").read_text()
    have_model = fetched.smollm2_and_sotu()
    for e in EXPERIMENTS:
        assert f"### {e.name}" in md
        s = json.loads((out / e.name / "reading.json").read_text()) if (out / e.name / "reading.json").exists() else None
        if not e.in_quick:
            continue  # reported as not run
        if e.needs == "model" and not have_model:
            assert s["status"] == "unavailable" and "mugi-jax data fetch" in s["message"]
            continue
        assert s is not None and s["status"] == "ok", (e.name, s)
        assert (out / e.name / "provenance.json").exists()
        for t in s["tables"]:
            assert (out / e.name / t["file"]).exists(), (e.name, t)
        for f in s["figures"]:
            assert (out / e.name / f["file"]).stat().st_size > 1000, (e.name, f)
            assert f"]({e.name}/{f['file']})" in md  # embedded
    # the headline comparisons are computed, and the published-model ones reproduce
    assert "| Llama-2-70B GQA b8 s4096 throughput, Mugi-256x8 / SA-16 | 2.07 | 2.066 | matches |" in md
    assert "Mugi vs exact vector array, up to | 45 | 45 | matches" in md
    # progress is shown on stderr
    assert "comprehensive" in r.stderr

    # a rerun skips every present result and changes nothing
    before = {p: p.read_bytes() for p in out.glob("*/*.csv")}
    t0 = time.perf_counter()
    r2 = subprocess.run(MUGI + ["report", "--quick", "--out", str(out), "--json"], capture_output=True,
                        text=True, cwd=REPO)
    assert r2.returncode == 0, r2.stderr[-2000:]
    got = json.loads(r2.stdout)
    assert {e["status"] for e in got["experiments"]} <= {"skipped", "not-run", "unavailable"}
    assert time.perf_counter() - t0 < 120  # imports only: nothing is recomputed
    assert {p: p.read_bytes() for p in out.glob("*/*.csv")} == before


def test_rendered_report_is_deterministic(tmp_path):
    """Rendering twice from the same results gives the same bytes."""
    report.run_experiment("area_power", tmp_path, quick=True)
    a = suite.render_report(tmp_path, quick=True).read_bytes()
    b = suite.render_report(tmp_path, quick=True).read_bytes()
    assert a == b and b"### area_power" in a and b"_Not available" in a


def test_registry_discovers_scripts_by_their_record(tmp_path):
    from mugi_jax.report.registry import discover, spec_of

    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "__init__.py").write_text("")
    (tmp_path / "experiments" / "_helper.py").write_text('EXPERIMENT = {"title": "x", "section": "y"}\n')
    (tmp_path / "experiments" / "bench_x.py").write_text("def run(out_dir):\n    pass\n")
    (tmp_path / "experiments" / "b.py").write_text(
        'import math\n\nEXPERIMENT = {"title": "B", "section": "Cost", "order": 5}\n')
    (tmp_path / "experiments" / "a.py").write_text(
        'EXPERIMENT = {"title": "A", "section": "Cost", "in_quick": False, "order": 7}\n')
    found = discover(tmp_path)
    assert [e.name for e in found] == ["b", "a"]  # by order; helpers and unrecorded scripts skipped
    assert found[1].title == "A" and not found[1].in_quick and found[0].est_s == 10.0
    bad = tmp_path / "experiments" / "bad.py"
    for text in ('EXPERIMENT = {"title": "t"}\n', 'EXPERIMENT = {"title": "t", "section": "s", "colour": 1}\n',
                 'EXPERIMENT = dict(title="t", section="s")\n'):
        bad.write_text(text)
        with pytest.raises(ValueError, match="EXPERIMENT"):
            spec_of(bad)


def test_registry_matches_the_scripts():
    """The report's experiments are exactly the scripts that declare a record."""
    root = repo_root()
    declared = sorted(p.stem for p in (root / "experiments").glob("*.py")
                      if not p.name.startswith("_") and "\nEXPERIMENT = {" in p.read_text())
    assert sorted(e.name for e in EXPERIMENTS) == declared
    assert len({e.order for e in EXPERIMENTS}) == len(EXPERIMENTS)  # a definite report order
