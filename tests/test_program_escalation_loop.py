"""programs/escalation_loop.py on the real SmolLM2-135M in front of recorded APIs: the unlabeled
inputs carry no label, a round learns from the reference's answers to what the cascade escalated,
and the program reports every round and its promise. A handful of rows only: the real model is
slow on a small CPU (the figures in docs/cascades.md come from the full run)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tandemlm.runtime import ConfigError, Model
from tandemlm.runtime.backends.packaged_models import smollm2_path

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ROOT / "programs"
spec = importlib.util.spec_from_file_location("escalation_loop", PROGRAMS / "escalation_loop.py")


def _load():
    sys.path.insert(0, str(PROGRAMS))  # the program imports its sibling smollm2_finetune
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(PROGRAMS))


def test_unlabeled_inputs_carry_no_labels_and_the_splits_do_not_overlap():
    program = _load()
    labelled, inputs, test = program.rows(10, 30, 10)
    assert all(set(x) == {"id", "prompt", "question"} for x in inputs)
    assert {x["id"] for x in labelled}.isdisjoint({x["id"] for x in inputs})
    assert {x["id"] for x in test}.isdisjoint({x["id"] for x in labelled + inputs})
    stages = program.cascade(Model("recorded", "gpt-4", data=program.DATA))  # any model fits the seat
    assert [s.name for s in stages.nodes["cascade"].solvers] == ["smollm2", "gpt_3_5_turbo", "gpt_4"]


def test_one_round_learns_from_what_was_escalated_and_reports_it(tmp_path):
    try:
        smollm2_path()
    except ConfigError as exc:
        pytest.skip(f"SmolLM2-135M-Instruct is not installed ({exc})")
    done = subprocess.run(
        [sys.executable, "escalation_loop.py", "--out", str(tmp_path / "run"), "--labels", "20",
         "--unlabeled", "20", "--test", "10", "--rounds", "1", "--epochs", "1",
         "--max-examples", "6", "--threads", "1"],
        cwd=PROGRAMS, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    rounds = figures["rounds"]
    assert [r["round"] for r in rounds] == [0, 1] and rounds[0]["kept"]
    assert 0 < rounds[1]["learnt"] <= 6  # escalated inputs' reference answers, capped
    assert figures["rows"]["learn"] + figures["rows"]["certify"] == 20
    assert figures["promise"] and 0 <= figures["test_accuracy"] <= 1
    assert "round 1:" in done.stdout and "test (10 rows)" in done.stdout
