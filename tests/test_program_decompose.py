"""programs/decompose_solve.py from the command line: tiny local models (trained into the cache
on first use), Decompose → Map → final solve, with honest accuracy and per-model usage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tandemlm.cli import app
from tandemlm.evaluate import load_object

pytestmark = pytest.mark.heavy  # minutes of work on first use: scheduled first

ROOT = Path(__file__).resolve().parents[1]
PROGRAM = str(ROOT / "programs" / "decompose_solve.py")
DATA = ROOT / "programs" / "data" / "decompose_arith.jsonl"


def test_shipped_data_is_what_the_seeded_generator_writes(tmp_path):
    write_data = load_object(f"{PROGRAM}:write_data")
    make_data = load_object(f"{PROGRAM}:make_data")
    assert write_data(tmp_path / "d.jsonl").read_text() == DATA.read_text()
    train, evals = make_data()
    assert not {r["question"] for r in train} & {r["question"] for r in evals}
    facts = {s for r in train for s in r["subquestions"]}
    assert all(s in facts for r in evals for s in r["subquestions"])  # every needed fact was taught


def test_cli_eval_runs_decompose_map_solve_on_tiny_models(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["eval", f"{PROGRAM}:program", "--data", str(DATA),
                                      "--metric", f"{PROGRAM}:metric", "--limit", "16",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert summary["n"] == len(records) == 16
    usage = summary["usage"]
    assert set(usage) == {"tiny-small-2x64", "tiny-large-4x128"}
    assert usage["tiny-small-2x64"]["calls"] == 16
    # Every parsed sub-question cost one large-model call, plus one final call per example.
    elements = [t["info"]["elements"] for r in records for t in r["trace"] if t["node"] == "map_solve_sub"]
    finals = [t for r in records for t in r["trace"] if t["node"] == "final"]
    assert sum(elements) >= 24 and usage["tiny-large-4x128"]["calls"] >= sum(elements) + len(finals)
    # The small model learned to decompose: most examples get exactly the gold sub-questions.
    gold = [json.loads(line) for line in DATA.read_text().splitlines()[:16]]
    decomposed = sum(r["outputs"].get("subquestions") == g["subquestions"]
                     for r, g in zip(records, gold, strict=True))
    assert decomposed >= 12, [r["outputs"].get("subquestions") for r in records]
    # The reported accuracy is the exact-match rate of the answers actually produced.
    right = sum(r["outputs"].get("answer") == g["answer"] for r, g in zip(records, gold, strict=True))
    assert summary["metric"]["mean"] == right / 16
