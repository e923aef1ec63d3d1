"""The `recorded` backend: replays real outputs of real models, never makes one up.

Checked against the real replay file others recorded, as the package ships it, and against small
replay files written here, so each lookup rule and each error is pinned down exactly.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from tandemlm.evaluate import packaged_data
from tandemlm.runtime import ConfigError, GenRequest, Model
from tandemlm.runtime.backends.recorded import RecordedBackend

# The real OVERRULING rows others recorded, shipped in the package (gzip), so these tests run on
# a fresh clone. ../shared/data/ next to the repository holds the same rows uncompressed, when
# it is there (DESIGN.md).
REAL = packaged_data("overruling_all.jsonl.gz")
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "replay" / "overruling_all.jsonl"


def _real_rows(path: Path = REAL) -> list[dict]:
    """The rows of a replay file, read here without the backend's own reader."""
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8")
    return [json.loads(line) for line in text.split("\n") if line.strip()]


@pytest.fixture(scope="module")
def real_rows() -> list[dict]:
    return _real_rows()


def _write(path: Path, rows: list[dict | str]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _row(row_id: str, prompt: str, **models: str | dict) -> dict:
    entries = {}
    for name, value in models.items():
        entries[name] = value if isinstance(value, dict) else {"output": value, "cost_usd": None}
    return {"id": row_id, "prompt": prompt, "gold": None, "models": entries}


@pytest.fixture
def small_file(tmp_path: Path) -> Path:
    return _write(tmp_path / "small.jsonl", [
        _row("r1", "What is 2+2?", big={"output": "4", "cost_usd": 0.002, "tokens_in": 11,
                                        "tokens_out": 1, "latency_ms": 250}, tiny="5"),
        _row("r2", "Capital of France?", big={"output": "Paris. Final.", "cost_usd": 0.003},
             tiny="Lyon"),
        _row("r3", "Same prompt", big="first answer", tiny="x"),
        _row("r4", "Same prompt", big="second answer", tiny="x"),
        _row("r5", "Twice, same answer", big="agreed", tiny="y"),
        _row("r6", "Twice, same answer", big="agreed", tiny="y"),
    ])


# -- real recorded data ------------------------------------------------------------------------

@pytest.mark.parametrize("model_name", ["gpt-4", "j1-large", "gpt-3.5-turbo"])
def test_real_lookup_by_id_returns_exactly_the_recorded_output_and_cost(real_rows, model_name):
    # Rows spread over the file, plus every row where this model answered something long,
    # so a lookup that returned a neighbour's or another model's answer would show.
    picks = [real_rows[0], real_rows[len(real_rows) // 2], real_rows[-1]]
    picks += [r for r in real_rows if len(r["models"][model_name]["output"]) > 3][:3]
    model = Model("recorded", model_name, data=str(REAL))
    # The prompt is deliberately not the row's prompt: the key must win.
    requests = [GenRequest(prompt="not the recorded prompt", key=str(r["id"])) for r in picks]
    results = model.generate(requests)
    for row, result in zip(picks, results, strict=True):
        entry = row["models"][model_name]
        assert result.ok, result.error
        assert result.texts == [entry["output"]]
        assert result.cost_usd == entry["cost_usd"]
        assert model.cost(result).usd == pytest.approx(entry["cost_usd"])


def test_real_lookup_by_exact_prompt_and_by_chat_message(real_rows):
    row = real_rows[7]
    entry = row["models"]["text-davinci-002"]
    model = Model("recorded", "text-davinci-002", data=str(REAL))
    by_prompt, by_message = model.generate([
        GenRequest(prompt=row["prompt"]),
        GenRequest(messages=[{"role": "system", "content": "ignored"},
                             {"role": "user", "content": row["prompt"]}]),
    ])
    assert by_prompt.texts == [entry["output"]] and by_prompt.cost_usd == entry["cost_usd"]
    assert by_message.texts == [entry["output"]] and by_message.cost_usd == entry["cost_usd"]


def test_real_stop_string_truncates_a_long_recorded_answer(real_rows):
    row, name = next((r, m) for r in real_rows for m, e in r["models"].items()
                     if " (" in e["output"])
    full = row["models"][name]["output"]
    model = Model("recorded", name, data=str(REAL))
    (cut,) = model.generate([GenRequest(prompt="x", key=row["id"], stop=(" (",))])
    assert cut.text == full[: full.index(" (")]
    assert cut.text != full


def test_real_pipeline_replays_recorded_answers_and_costs(real_rows):
    from tandemlm.compose import LMNode, Pipeline

    rows = real_rows[100:105]
    model = Model("recorded", "gpt-4", data=str(REAL))
    pipe = Pipeline([LMNode("prompt -> answer", model=model, prompt_field="prompt", name="ask")])
    results = pipe.batch([{"prompt": r["prompt"]} for r in rows])
    for row, result in zip(rows, results, strict=True):
        entry = row["models"]["gpt-4"]
        assert result.ok, result.error
        assert result.outputs["answer"] == entry["output"].strip()
        assert result.trace[0].cost_usd == pytest.approx(entry["cost_usd"])
        assert result.trace[0].model == "gpt-4"


# -- small replay files ------------------------------------------------------------------------

def test_lookup_by_id_returns_output_cost_tokens_and_latency(small_file):
    model = Model("recorded", "big", data=str(small_file))
    first, second = model.generate([GenRequest(prompt="?", key="r1"),
                                    GenRequest(prompt="?", key="r2")])
    assert (first.text, first.cost_usd, first.tokens_in, first.tokens_out) == ("4", 0.002, 11, 1)
    assert first.latency_s == pytest.approx(0.25)
    assert (second.text, second.cost_usd) == ("Paris. Final.", 0.003)


def test_each_model_replays_its_own_answer(small_file):
    big = Model("recorded", "big", data=str(small_file))
    tiny = Model("recorded", "tiny", data=str(small_file))
    request = GenRequest(prompt="Capital of France?")
    assert big.generate([request])[0].text == "Paris. Final."
    assert tiny.generate([request])[0].text == "Lyon"


def test_unknown_id_and_unknown_prompt_fail_alone(small_file):
    model = Model("recorded", "big", data=str(small_file))
    results = model.generate([
        GenRequest(prompt="?", key="r1"),
        GenRequest(prompt="?", key="no-such-row"),
        GenRequest(prompt="What is 2+2?"),
        GenRequest(prompt="A prompt nobody recorded"),
    ])
    assert [r.ok for r in results] == [True, False, True, False]
    assert results[0].text == "4" and results[2].text == "4"
    assert "no-such-row" in results[1].error and "ReplayMiss" in results[1].error
    assert "no recording for this prompt" in results[3].error
    assert "A prompt nobody recorded" in results[3].error


def test_prompt_recorded_with_two_answers_asks_for_the_id(small_file):
    model = Model("recorded", "big", data=str(small_file))
    ambiguous, agreed, by_id = model.generate([GenRequest(prompt="Same prompt"),
                                               GenRequest(prompt="Twice, same answer"),
                                               GenRequest(prompt="Same prompt", key="r4")])
    assert not ambiguous.ok
    assert "2 different answers" in ambiguous.error
    assert "r3" in ambiguous.error and "r4" in ambiguous.error
    assert "row id as the request key" in ambiguous.error
    assert agreed.text == "agreed"  # same answer twice is not ambiguous
    assert by_id.text == "second answer"  # the key disambiguates


def test_model_absent_from_the_file_lists_the_recorded_models(small_file):
    model = Model("recorded", "gpt-5", data=str(small_file))
    with pytest.raises(ConfigError) as info:
        model.generate([GenRequest(prompt="What is 2+2?")])
    message = str(info.value)
    assert "gpt-5" in message and "big, tiny" in message and str(small_file) in message


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [_row("a", "p", big="x"), "", '{"id": "b", "models": {'])
    model = Model("recorded", "big", data=str(path))
    with pytest.raises(ConfigError, match=rf"{path}:3: not valid JSON"):
        model.generate([GenRequest(prompt="p")])


def test_row_without_models_object_names_file_and_line(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [_row("a", "p", big="x"), {"id": "b", "prompt": "q"}])
    with pytest.raises(ConfigError, match=rf"{path}:2: a replay row needs an 'id' and a 'models'"):
        Model("recorded", "big", data=str(path)).generate([GenRequest(prompt="p")])


def test_a_byte_that_is_not_utf8_names_file_line_and_byte(tmp_path):
    path = tmp_path / "bad.jsonl"
    rows = [_row("a", "p", big="x"), _row("b", "caf\u00e9", big="y")]
    raw = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("latin-1")
    path.write_bytes(raw)  # as an editor saving in latin-1 would
    with pytest.raises(ConfigError, match=rf"recorded data file '{path}', line 2: byte "
                                          rf"{raw.index(0xE9)} \(0xe9\) is not valid utf-8; "
                                          rf"re-encode the file as UTF-8"):
        Model("recorded", "big", data=str(path)).generate([GenRequest(prompt="p")])


def test_n_greater_than_one_fails_alone(small_file):
    model = Model("recorded", "big", data=str(small_file))
    sampled, plain = model.generate([GenRequest(prompt="?", key="r1", n=2),
                                     GenRequest(prompt="?", key="r1")])
    assert not sampled.ok and "n=2" in sampled.error
    assert plain.text == "4"


def test_stop_strings_cut_at_the_earliest_match(small_file):
    model = Model("recorded", "big", data=str(small_file))
    (cut,), (uncut,) = (model.generate([GenRequest(prompt="?", key="r2", stop=(" Final", "."))]),
                        model.generate([GenRequest(prompt="?", key="r2", stop=("zzz",))]))
    assert cut.text == "Paris"
    assert uncut.text == "Paris. Final."


def test_several_data_files_are_read_together(tmp_path):
    one = _write(tmp_path / "one.jsonl", [_row("a", "pa", big="A")])
    two = _write(tmp_path / "two.jsonl", [_row("b", "pb", big="B")])
    model = Model("recorded", "big", data=[str(one), str(two)])
    assert [r.text for r in model.generate([GenRequest(prompt="pa"), GenRequest(prompt="pb")])] \
        == ["A", "B"]


def test_an_id_in_two_files_is_named_by_file_and_a_bare_id_asks_for_that(tmp_path):
    one = _write(tmp_path / "x_train.jsonl", [_row("q1", "pa", big="A"), _row("q2", "pc", big="C")])
    two = _write(tmp_path / "x_test.jsonl", [_row("q1", "pb", big="B")])
    model = Model("recorded", "big", data=[str(one), str(two)])
    got = model.generate([GenRequest(prompt="?", key="x_train.jsonl#q1"),
                          GenRequest(prompt="?", key="x_test.jsonl#q1"),
                          GenRequest(prompt="?", key="q2"), GenRequest(prompt="?", key="q1")])
    assert [r.text for r in got[:3]] == ["A", "B", "C"]
    assert not got[3].ok and "x_train.jsonl#q1" in got[3].error and "several data files" in got[3].error


def test_recorded_confidence_reaches_the_result_and_the_trace(tmp_path):
    from tandemlm import Pipeline
    from tandemlm.modules import Solve

    path = _write(tmp_path / "c.jsonl", [
        _row("r1", "p1", big={"output": "yes", "cost_usd": 0.1, "confidence": -0.25}),
        _row("r2", "p2", big={"output": "no", "cost_usd": 0.1})])
    model = Model("recorded", "big", data=str(path))
    assert [r.confidence for r in model.generate([GenRequest(prompt="p1"), GenRequest(prompt="p2")])] \
        == [-0.25, None]
    pipe = Pipeline([Solve("prompt -> answer", model=model, prompt_field="prompt", key_field="id")])
    traces = [r.trace[0] for r in pipe.batch([{"prompt": "p1", "id": "r1"},
                                                       {"prompt": "p2", "id": "r2"}])]
    assert traces[0].info["confidence"] == -0.25 and "confidence" not in traces[1].info


def test_a_line_separator_inside_a_json_string_is_not_a_line_break(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_text(json.dumps(_row("r1", "a\u2028b", big="x\u2029y"), ensure_ascii=False) + "\n",
                    encoding="utf-8")
    assert Model("recorded", "big", data=str(path)).generate(
        [GenRequest(prompt="?", key="r1")])[0].text == "x\u2029y"


def test_unknown_option_and_missing_data_are_config_errors(small_file):
    with pytest.raises(ConfigError, match="needs data="):
        RecordedBackend("big")
    with pytest.raises(ConfigError, match="unknown recorded backend options: colour"):
        RecordedBackend("big", data=str(small_file), colour="red")


def test_recorded_models_are_remote_and_lack_logprobs(small_file):
    model = Model("recorded", "big", data=str(small_file))
    assert model.remote
    assert not model.supports("logprobs")


def test_fingerprint_changes_when_the_data_file_content_changes(tmp_path):
    path = _write(tmp_path / "r.jsonl", [_row("a", "p", big="old")])
    before = Model("recorded", "big", data=str(path)).fingerprint
    assert Model("recorded", "big", data=str(path)).fingerprint == before  # stable
    _write(path, [_row("a", "p", big="new answer")])
    after = Model("recorded", "big", data=str(path)).fingerprint
    assert after != before
    # The model id is part of it too: another model of the same file is another fingerprint.
    assert Model("recorded", "tiny", data=str(path)).fingerprint != after


def test_changed_data_file_is_replayed_by_a_new_handle(tmp_path):
    path = _write(tmp_path / "r.jsonl", [_row("a", "p", big="old")])
    assert Model("recorded", "big", data=str(path)).generate([GenRequest(prompt="p")])[0].text \
        == "old"
    _write(path, [_row("a", "p", big="new answer")])
    fresh = Model("recorded", "big", data=str(path))
    assert fresh.generate([GenRequest(prompt="p")])[0].text == "new answer"


def test_fingerprint_of_an_existing_handle_follows_the_data_file(tmp_path):
    path = _write(tmp_path / "r.jsonl", [_row("a", "p", big="old")])
    model = Model("recorded", "big", data=str(path))
    before = model.fingerprint
    _write(path, [_row("a", "p", big="new answer")])
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert model.fingerprint != before


def test_the_packaged_gzip_file_replays_the_full_overruling_data_and_a_corrupt_one_is_refused(tmp_path):
    from tandemlm.runtime.backends.recorded import read_replay_file

    packed = read_replay_file(packaged_data("overruling_all.jsonl.gz")).rows
    assert len(packed) == 2160 and {"gpt-4", "gptj_6B"} <= set(packed[0]["models"])
    assert packed == _real_rows()
    if SHARED.is_file():  # the packaged copy is the shared file, row for row
        assert packed == _real_rows(SHARED)
    row = packed[7]
    model = Model("recorded", "gpt-4", data=str(packaged_data("overruling_all.jsonl.gz")))
    (got,) = model.generate([GenRequest(prompt=row["prompt"], key=row["id"])])
    assert got.text == row["models"]["gpt-4"]["output"]
    broken = tmp_path / "rows.jsonl.gz"
    broken.write_bytes(packaged_data("overruling_all.jsonl.gz").read_bytes()[:5000])
    with pytest.raises(ConfigError, match="not a readable gzip file"):
        read_replay_file(broken)
