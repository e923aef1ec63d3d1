"""programs/verify_rectify.py: its shipped corpus is what `make_corpus` generates and makes
retrieval errors happen; `tandem eval` runs it on real tiny models, and the loop re-retrieves,
re-verifies and beats the single pass.

The first run trains the program's two tiny models into its cache (`$TANDEM_CACHE`, default
~/.cache/tandemlm; about a minute on 2 CPU cores); later runs load them.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tandemlm import evaluate
from tandemlm.cli import app
from tandemlm.evaluate import load_object
from tandemlm.modules.retrieve import Retrieve

pytestmark = pytest.mark.heavy  # minutes of work on first use: scheduled first

PROGRAM = Path(__file__).resolve().parents[1] / "programs" / "verify_rectify.py"


def _load(name: str):
    return load_object(f"{PROGRAM}:{name}")


def test_shipped_corpus_is_generated_and_makes_retrieval_errors():
    passages, questions = _load("load_corpus")()
    assert (passages, questions) == _load("make_corpus")()
    assert len(passages) == 40 and len(questions) == 32
    retrieve = Retrieve([p["text"] for p in passages], k=3)
    ranks = Counter()
    for q in questions:
        holding = [p["id"] for p in passages if q["answer"] in p["text"] and p["kind"] != "distractor"]
        assert holding == [q["gold"]]  # one passage states the answer's fact
        ranked = [passages[i]["id"] for i, _ in retrieve.search(q["question"])]
        ranks[ranked.index(q["gold"])] += 1  # always in the top 3
    assert ranks == {0: 24, 1: 8}  # a distractor ranks first for 8 questions


def test_eval_rectifies_on_real_tiny_models(tmp_path):
    data, metric = str(PROGRAM.parent / "data" / "qa_corpus.jsonl"), f"{PROGRAM}:metric"
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["eval", f"{PROGRAM}:program", "--data", data,
                                      "--metric", metric, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "tiny-solver-2x64" in result.output and "tiny-verifier-2x64" in result.output
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert summary["n"] == 32 and summary["errors"] == 0
    passages = {p["text"]: p for p in _load("load_corpus")()[0]}
    for record in records:
        rectify = record["trace"][0]
        verdicts = [c for c in rectify["children"] if c["node"] == "verify"]
        solves = [c for c in rectify["children"] if c["node"] == "solve"]
        assert len(verdicts) == len(solves) == record["outputs"]["turns"]
        assert all(v["info"]["scoring"] == "logprobs" for v in verdicts)  # option probabilities
        ranked = rectify["children"][0]["outputs"]["passages"]
        for turn, rank in enumerate(rectify["info"]["evidence_rank"]):
            assert solves[turn]["inputs"]["evidence"] == ranked[rank]
            assert verdicts[turn]["inputs"]["answer"] == solves[turn]["outputs"]["answer"]
        if rectify["info"]["verdicts"][0] == "retrieval_error" and len(solves) > 1:
            assert solves[1]["inputs"]["evidence"] == ranked[1]  # the next passage
    # The distractor-first questions were caught and answered from the next passage.
    rescued = [r for r in records if passages[r["trace"][0]["children"][0]["outputs"]["passages"][0]]
               ["kind"] == "distractor" and r["score"] == 1.0]
    assert len(rescued) >= 6
    usage = summary["usage"]
    assert usage["tiny-solver-2x64"]["calls"] == sum(r["outputs"]["turns"] for r in records)
    baseline = evaluate(_load("single_pass")(), data, _load("metric"), progress=False)
    assert baseline.summary["usage"]["tiny-solver-2x64"]["calls"] == 32
    assert summary["metric"]["mean"] > baseline.score
    assert baseline.score == pytest.approx(24 / 32)  # the solver reads the top passage right
