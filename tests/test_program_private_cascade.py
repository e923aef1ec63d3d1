"""programs/private_split.py and programs/cascade_replay.py from the command line, each building
its models into a fresh cache on first use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tandemlm.cli import app

pytestmark = pytest.mark.heavy  # minutes of work on first use: scheduled first

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tandem_cache")


def _eval(program: str, data: str, out: Path, *extra: str):
    path = str(ROOT / "programs" / program)
    return CliRunner().invoke(app, ["eval", f"{path}:program", "--data", str(ROOT / data), "--metric",
                                    f"{path}:metric", "--out", str(out), *extra])


def test_private_split_completes_letters_and_keeps_secrets_local(cache, monkeypatch, tmp_path):
    monkeypatch.setenv("TANDEM_CACHE", str(cache))
    result = _eval("private_split.py", "programs/data/private_split.jsonl", tmp_path, "--limit", "12")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["errors"] == 0 and summary["metric"]["mean"] >= 0.5
    assert set(summary["usage"]) == {"remote-tiny", "local-tiny"}
    for line in (tmp_path / "results.jsonl").read_text().splitlines():
        record = json.loads(line)
        (split,) = record["trace"]
        sketch_call = split["children"][0]
        assert sketch_call["model"] == "remote-tiny"
        secrets = [record["example"]["name"], record["example"]["condition"]]
        assert not any(s in json.dumps(sketch_call["inputs"]) for s in secrets)


def test_cascade_replay_escalates_by_the_minilm_judge(cache, monkeypatch, tmp_path):
    monkeypatch.setenv("TANDEM_CACHE", str(cache))
    result = _eval("cascade_replay.py", "programs/data/overruling_test.jsonl", tmp_path, "--limit", "60")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["errors"] == 0 and summary["usage"]["j1-large"]["calls"] == 60
    for record in records:
        info = record["trace"][0]["info"]
        stage = info["answered_by"]
        # escalated exactly where the judge's score fell below the stage threshold
        for s, score in enumerate(info["scores"][:stage]):
            assert score < [0.95, 0.6][s]
        if stage < 2:
            assert info["scores"][stage] >= [0.95, 0.6][stage]
        assert len(info["stage_costs"]) == stage + 1
    answered = summary["usage"]
    assert answered["gpt-3.5-turbo"]["calls"] < 60  # the cascade did stop some at stage 0 or 1
