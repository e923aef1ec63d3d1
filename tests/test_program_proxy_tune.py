"""programs/proxy_tune.py on CPU: a small expert LoRA-tuned on a format moves a larger untuned
model's replies to that format when mixed per token (proxy-tuning)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.heavy  # minutes of work on first use: scheduled first

ROOT = Path(__file__).resolve().parents[1]


def test_a_tuned_small_expert_steers_the_large_model_to_its_format(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "programs" / "proxy_tune.py"), "--out", str(tmp_path),
                           "--train", "100", "--epochs", "8"],  # a lighter run than the default
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    rates = figures["test_rates"]
    mixed = rates[f"proxy-tuned large (alpha={figures['alpha']})"]
    assert rates["large alone"] <= 0.1
    assert rates["expert alone"] >= 0.9
    assert mixed >= rates["large alone"] + 0.5
