"""Encoder evaluation: leave-one-out k-NN, the Brown genre task, ``mugi-jax embed-eval``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mugi_jax import eval as ev


def test_knn_accuracy_by_hand():
    # two clusters on the unit circle; item 4 sits just past cluster A's edge but is labelled B
    ang = np.array([0.0, 0.1, 0.2, 0.3, 0.35, 3.0, 3.1, 3.2])
    e = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    labels = ["A", "A", "A", "A", "B", "B", "B", "B"]
    # 1-NN: item 3's nearest is item 4 (B, wrong) and item 4's is item 3 (A, wrong)
    assert ev.knn_accuracy(e, labels, k=1) == 6 / 8
    # 3-NN: item 3 sees 4, 2, 1 -> A (right); item 4 sees 3, 2, 1 -> A (wrong)
    assert ev.knn_accuracy(e, labels, k=3) == 7 / 8
    # a 1-1 vote goes to the label with the larger summed similarity, not the first label:
    # item 0's neighbours are item 1 (B, cos 0.995) and item 4 (A, cos 0.939) -> B (right)
    assert ev.knn_accuracy(e[[0, 1, 4]], ["B", "B", "A"], k=2) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="k: must be in"):
        ev.knn_accuracy(e, labels, k=8)


def test_brown_genre_task_subset_keeps_every_genre():
    texts, genres, ids = ev.brown_genre_task(60)
    assert len(texts) == len(genres) == len(ids) == 60
    assert ids[0] == "ca01" and ids[-1] == "cr09"
    assert len(set(genres)) == 15 and all(g == i[1] for g, i in zip(genres, ids))


@pytest.mark.parametrize("args,needle", [
    (["embed-eval", "--numerics", "exact,fp8"], "--numerics: unknown name 'fp8'; valid names: exact"),
    (["embed-eval", "--model", "smollm2-135m"], "not an encoder; valid: minilm-l6"),
    (["embed-eval", "--task", "sts"], "--task 'sts': not valid; valid values: brown-genre"),
    (["embed-eval", "--passages", "501"], "--passages 501: must be an integer from 2 to 500"),
    (["embed-eval", "--passages", "10", "--k", "10"], "--k 10: must be an integer from 1 to 9"),
    (["embed-eval", "--max-tokens", "300"], "--max-tokens 300: must be an integer from 2 to 256"),
    (["ppl", "--model", "minilm-l6"], "is an encoder (no next-token logits)"),
])
def test_bad_input_is_one_line(monkeypatch, capsys, args, needle):
    from mugi_jax.cli import main

    monkeypatch.setattr("sys.argv", ["mugi-jax", *args])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err and "Traceback" not in err


@pytest.mark.slow
def test_embed_eval_json_small():
    from typer.testing import CliRunner

    from mugi_jax.cli import app

    r = CliRunner().invoke(app, ["embed-eval", "--numerics", "nonlinear-only", "--passages", "30",
                                 "--max-tokens", "32", "--k", "3", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    exact, vlp = out["results"]
    assert (exact["numerics"], vlp["numerics"]) == ("exact", "nonlinear-only")
    assert exact["cosine_mean"] == 1.0 and 0.99 < vlp["cosine_min"] <= vlp["cosine_mean"] < 1.0
    assert 0.0 <= vlp["knn_accuracy"] <= 1.0 and out["max_tokens"] == 32
