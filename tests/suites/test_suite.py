"""Suites: declaring and loading them (Python, TOML, YAML), discovering replay tasks in a data
directory, and the results `tandem suite` writes — checked on real recorded answers (the packaged
OVERRULING excerpt, and ../shared/data/replay when present)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tandemlm import load
from tandemlm.cli import app
from tandemlm.evaluate import evaluate, load_program, packaged_data
from tandemlm.runtime import ConfigError
from tandemlm.runtime.backends.recorded import read_replay_file
from tandemlm.suites.replay import discover, recorded_correct, suite
from tandemlm.suites.run import promise_cell, run_suite
from tandemlm.suites.suite import load_suite

EXCERPT = packaged_data("overruling_excerpt.jsonl")
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "replay"


def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Replay files cut from the excerpt in every naming the suite discovers."""
    root = tmp_path_factory.mktemp("replay")
    rows = read_replay_file(EXCERPT).rows
    shutil.copy(EXCERPT, root / "legal_all.jsonl")
    _write_rows(root / "split_train.jsonl", rows[:100])
    _write_rows(root / "split_test.jsonl", rows[100:160])
    _write_rows(root / "lone_train.jsonl", rows[:40])
    _write_rows(root / "orphan_test.jsonl", rows[:10])  # no training data: not a task
    _write_rows(root / "notes.jsonl", rows[:10])  # not named X_train/X_test/X_all: not a task
    fam = [{**r, "family": "odd" if i % 3 else "even", "id": f"f{i}"} for i, r in enumerate(rows[:90])]
    _write_rows(root / "fams_all.jsonl", fam)
    return root


def test_discovery_follows_the_file_names_and_families(data_dir):
    tasks = {t["name"]: t for t in discover(data_dir)}
    assert sorted(tasks) == ["fams/even", "fams/odd", "legal", "lone", "split"]
    assert tasks["split"]["train"].endswith("split_train.jsonl") and tasks["split"]["by_index"] is None
    assert tasks["lone"]["by_index"].endswith("lone_train.jsonl")
    replay = suite(data_dir, scorer=False)
    legal = replay.task("legal")
    n = len(read_replay_file(EXCERPT).rows)
    assert (len(legal.train), len(legal.test)) == ((n + 1) // 2, n // 2)  # even rows / odd rows
    assert legal.train[0]["id"] == f"legal_all.jsonl#{read_replay_file(EXCERPT).rows[0]['id']}"
    assert (len(replay.task("split").train), len(replay.task("split").test)) == (100, 60)
    even = replay.task("fams/even")
    assert len(even.train) + len(even.test) == 30
    # models are ordered by their mean recorded cost on the train split
    assert "gptj_6B" in even.description.split(": ")[1].split(", ")[0]


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"real replay data {SHARED} is not on this machine")
def test_the_shared_replay_directory_gives_one_task_per_benchmark_and_family():
    assert [t["name"] for t in discover(SHARED)] == [
        "arc_challenge", "gsm8k/llama", "gsm8k/qwen_oai", "mmlu/llama", "mmlu/qwen_oai", "overruling",
        "triviaqa/llama", "triviaqa/qwen_oai"]


def test_missing_or_empty_data_directories_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        discover(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="no replay tasks"):
        discover(tmp_path)
    with pytest.raises(ConfigError, match=r"no task\(s\) nope; its tasks: legal"):
        suite(_one_task_dir(tmp_path), scorer=False).select(["nope"])


def _one_task_dir(tmp_path: Path) -> Path:
    root = tmp_path / "one"
    root.mkdir()
    shutil.copy(EXCERPT, root / "legal_all.jsonl")
    return root


def test_recorded_correct_judges_an_answer_as_the_source_judged_that_text():
    import dspy

    example = dspy.Example(recorded={"a": {"output": "['B']", "correct": True},
                                     "b": {"output": "['C']", "correct": False},
                                     "c": {"output": "['B']", "correct": True}})
    assert recorded_correct(example, dspy.Prediction(answer="['B']"))
    assert not recorded_correct(example, dspy.Prediction(answer="['C']"))
    assert not recorded_correct(example, dspy.Prediction(answer="['D']"))  # nobody said it


# -- running a suite -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def results(data_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run")
    return out, run_suite(suite(data_dir, scorer=False), out, tasks=["legal", "split"], progress=False)


def test_results_json_has_the_promised_schema(results):
    out, got = results
    assert json.loads((out / "results.json").read_text()) == got
    assert got["schema"] == "tandemlm.suite-results/1" and got["suite"] == "replay"
    assert {"python", "tandemlm", "dspy", "torch", "transformers"} <= set(got["versions"])
    task = got["tasks"]["legal"]
    for key in ("config_hash", "metric", "cost", "singles", "best_single", "cheapest_within_1pt",
                "cascade", "parity_cost_fraction", "curve_auc", "singles_auc", "test_curve",
                "judge_features", "n_train", "n_test"):
        assert key in task, key
    assert set(task["metric"]) == {"name", "value", "stderr"} and task["metric"]["stderr"] > 0
    assert set(task["best_single"]) >= {"model", "accuracy", "cost"}
    assert set(task["cascade"]) >= {"accuracy", "cost", "cost_fraction", "stages", "thresholds"}
    assert len(task["config_hash"]) == 64
    per_example = (out / "legal" / "eval" / "results.jsonl").read_text().splitlines()
    assert len(per_example) == task["n_test"]
    assert "| legal |" in (out / "results.md").read_text()


def test_single_models_and_the_cascade_are_measured_on_the_real_recorded_answers(results):
    _, got = results
    task = got["tasks"]["legal"]
    test = read_replay_file(EXCERPT).rows[1::2]
    for model, figures in task["singles"].items():  # each model alone, from the raw file
        assert figures["accuracy"] == pytest.approx(
            sum(bool(r["models"][model]["correct"]) for r in test) / len(test))
        assert figures["cost"] == pytest.approx(sum(r["models"][model]["cost_usd"] for r in test) / len(test))
    best = max(task["singles"].values(), key=lambda f: (f["accuracy"], -f["cost"]))
    assert task["best_single"]["model"] == best["model"]
    cascade = task["cascade"]
    # the offline evaluation of the chosen configuration is what the compiled program really did
    assert cascade["accuracy"] == pytest.approx(cascade["accuracy_evaluated"])
    assert cascade["accuracy"] == pytest.approx(task["metric"]["value"])
    assert cascade["cost"] == pytest.approx(task["cost"]["per_example_usd"])
    assert cascade["cost_fraction"] == pytest.approx(cascade["cost"] / best["cost"])
    assert cascade["kind"] in ("single", "cascade", "router", "hybrid")  # the replay default routes
    assert "TrainRouter" in json.dumps(task["passes"])
    # chosen on train only, with the promise it keeps: the best single model there, or a
    # configuration certified to lose at most a point to it
    promise = task["promise"]
    assert (promise["epsilon"], promise["delta"]) == (0.01, 0.1)
    assert promise["rows"]["labelled"] == task["n_train"] and promise["statement"]
    train_best = max(task["singles"].values(), key=lambda f: (f["train_accuracy"], -f["train_cost"]))
    assert cascade["train_cost"] <= train_best["train_cost"] + 1e-12  # never dearer than it
    if not promise["certified"]:
        assert cascade["kind"] == "single" and cascade["stages"] == [train_best["model"]]
        assert promise["statement"].startswith("no saving certified")
    near = task["cheapest_within_1pt"]
    assert near["accuracy"] >= best["accuracy"] - 0.01 and near["cost"] <= best["cost"]
    if task["parity_cost_fraction"] is not None:
        parity = [p for p in task["test_curve"] if len(p["stages"]) > 1
                  and p["quality"] >= best["accuracy"] - 1e-12]
        assert parity and min(p["cost"] for p in parity) / best["cost"] \
            <= task["parity_cost_fraction"] + 1e-12
    assert 0 < task["singles_auc"] <= task["curve_auc"] <= 1


def test_the_compiled_task_loads_from_its_recorded_source_and_answers_alike(results, data_dir):
    out, got = results
    program = json.loads((out / "split" / "compiled" / "program.json").read_text())
    assert program["source"].startswith("tandemlm.suites.replay:build(")
    task = suite(data_dir, scorer=False).task("split")
    again = evaluate(load(out / "split" / "compiled", trust_source=True), task.test, task.metric,
                     progress=False)
    assert again.score == pytest.approx(got["tasks"]["split"]["metric"]["value"])


def test_a_text_scorer_is_cross_fitted_on_the_whole_train_split(data_dir, tmp_path):
    """With a text scorer the task trains it cross-fitted and calibrates on every train row (no
    quarter held back); folds=0 splits three quarters / one quarter instead. A judge of whole
    prompts cuts them from their start (their question is at the end)."""
    crossed = suite(data_dir, scorer=True).task("split")
    scorer = crossed.passes[0]
    assert type(scorer).__name__ == "TrainScorer" and scorer.folds == 2
    assert (len(crossed.train), crossed.val) == (100, None)
    held = suite(data_dir, scorer=True, folds=0).task("split")
    assert (len(held.train), len(held.val)) == (75, 25) and held.passes[0].folds == 0
    judge = load_program(crossed.program).nodes["cascade"].judge_nodes[0]
    assert judge.fields == ("question", "answer") and "truncation_side" not in judge.model.options
    rows = [{**r, "question": None} for r in read_replay_file(EXCERPT).rows[:40]]
    _write_rows(tmp_path / "bare_all.jsonl", rows)  # whole prompts only
    prompts = suite(tmp_path, scorer=True).task("bare")
    judge = load_program(prompts.program).nodes["cascade"].judge_nodes[0]
    assert judge.fields == ("prompt", "answer") and judge.model.options["truncation_side"] == "left"


def test_config_hash_follows_what_determines_the_results(data_dir):
    a, b = (suite(data_dir, scorer=False).task("legal") for _ in range(2))
    assert a.config_hash() == b.config_hash()
    b.passes[-1].max_stages = 2
    assert a.config_hash() != b.config_hash()


def test_a_failing_task_is_recorded_and_the_others_still_run(data_dir, tmp_path):
    replay = suite(data_dir, scorer=False, router=False)  # the router's fit is tested above
    broken = replay.task("lone")
    broken.program = "tandemlm.suites.replay:build(models=['no-such-model', 'gpt-4'], data=[])"
    replay.tasks["lone"] = broken
    got = run_suite(replay, tmp_path, tasks=["lone", "split"], progress=False)
    assert "error" in got["tasks"]["lone"] and "metric" in got["tasks"]["split"]


# -- suite files -------------------------------------------------------------------------------
def test_a_toml_suite_file_includes_python_suites_and_declares_tasks(data_dir, tmp_path):
    half = read_replay_file(EXCERPT).rows
    _write_rows(tmp_path / "train.jsonl", half[0:200:2])
    _write_rows(tmp_path / "test.jsonl", half[1:200:2])
    (tmp_path / "suite.toml").write_text(f"""
name = "mine"
[[include]]
suite = "replay"
tasks = ["split"]
options = {{ data = "{data_dir}", scorer = false }}

[[task]]
name = "own"
program = "tandemlm.suites.overruling:build(data='{EXCERPT}')"
train = "train.jsonl"
test = "test.jsonl"
metric = "tandemlm.suites.overruling:metric"
passes = ["Calibrate(match=1.0)"]
""")
    loaded = load_suite(str(tmp_path / "suite.toml"))
    assert loaded.name == "mine" and loaded.names() == ["split", "own"]
    own = loaded.task("own")
    assert len(own.train) == 100 and type(own.passes[0]).__name__ == "Calibrate"
    yaml_file = tmp_path / "suite.yaml"
    yaml_file.write_text(f"name: y\ninclude:\n  - suite: replay\n    tasks: [legal]\n"
                         f"    options: {{data: '{data_dir}', scorer: false}}\n")
    assert load_suite(str(yaml_file)).names() == ["legal"]


@pytest.mark.parametrize("text, message", [
    ("name = 'x'\n", "names no tasks"),
    ("name = 'x'\nbogus = 1\n", "unknown key"),
    ("name = \n", "not valid TOML"),
    ("[[task]]\nname = 'a'\n", "each \\[\\[task\\]\\] needs"),
    ("[[include]]\nsuite = 'nonesuch'\n", "unknown suite"),
])
def test_bad_suite_files_are_clear_errors(tmp_path, text, message):
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_suite(str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        load_suite(str(tmp_path / "missing.toml"))


def test_load_program_calls_a_builder_with_literal_options_only():
    pipe = load_program(f"tandemlm.suites.overruling:build(data='{EXCERPT}', max_length=64)")
    assert pipe.name == "overruling_cascade"
    with pytest.raises(ConfigError, match="not a literal"):
        load_program("tandemlm.suites.overruling:build(data=open('x'))")
    with pytest.raises(ConfigError, match="keyword arguments"):
        load_program("tandemlm.suites.overruling:build('x')")


# -- the command line -------------------------------------------------------------------------
def test_tandem_suite_and_tandem_report_on_the_command_line(data_dir, tmp_path):
    runner = CliRunner()
    listed = runner.invoke(app, ["suite", "replay", "--data", str(data_dir), "--list"])
    assert listed.exit_code == 0 and "fams/odd" in listed.output
    ran = runner.invoke(app, ["suite", "replay", "--data", str(data_dir), "--tasks", "lone",
                              "--out", str(tmp_path / "r")])
    assert ran.exit_code == 0, ran.output
    assert json.loads((tmp_path / "r" / "results.json").read_text())["tasks"]["lone"]["metric"]
    report = runner.invoke(app, ["report", str(tmp_path / "r")])
    assert report.exit_code == 0 and (tmp_path / "r" / "report.html").is_file()
    bad = runner.invoke(app, ["suite", "replay", "--data", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "does not exist" in " ".join(bad.output.split())


def test_the_overruling_suite_is_the_demo_compile_as_a_task():
    overruling = load_suite("overruling")
    task = overruling.task("overruling")
    assert overruling.names() == ["overruling"]
    assert [type(p).__name__ for p in task.passes] == ["TrainScorer", "Calibrate"]
    assert load_program(task.program).name == "overruling_cascade"
    assert len(task.train) + len(task.val) + len(task.test) == len(read_replay_file(EXCERPT).rows)
    with pytest.raises(ConfigError, match="unknown suite"):
        load_suite("nonesuch")


def test_the_chosen_point_is_never_dearer_on_train_than_the_best_single_model_there(results):
    _, got = results
    for name, task in got["tasks"].items():
        best = max(task["singles"].values(), key=lambda f: (f["train_accuracy"], -f["train_cost"]))
        assert task["cascade"]["train_cost"] <= best["train_cost"] + 1e-12, name
        passes = dict((n, c) for n, c in task["passes"])
        assert passes["Calibrate"]["delta"] == 0.1 and passes["FitJudges"]["folds"] == 5


def test_labels_keeps_some_train_labels_and_hands_the_rest_over_as_inputs(data_dir):
    full = suite(data_dir, scorer=False).task("split")
    cut = suite(data_dir, scorer=False, labels=30).task("split")
    assert len(cut.train) == 30 and len(cut.unlabeled) == len(full.train) - 30
    assert all("gold" not in x and "recorded" not in x for x in cut.unlabeled)  # inputs only
    assert {x["id"] for x in cut.train}.isdisjoint({x["id"] for x in cut.unlabeled})
    assert cut.config_hash() != full.config_hash()
    assert suite(data_dir, scorer=False, labels=30).task("split").train == cut.train  # seeded
    with pytest.raises(ConfigError, match="--labels"):
        suite(data_dir, scorer=False, labels=len(full.train)).task("split")
    with pytest.raises(ConfigError, match="does not take option"):
        load_suite("overruling", labels=30)


def test_the_promise_cell_says_what_was_certified_and_why_not():
    rows = {"labelled": 300, "unlabeled": 0}
    assert promise_cell({}) == "—"
    assert promise_cell({"promise": {"certified": True, "reference": "gpt-4", "epsilon": 0.01,
                                     "bound": 0.0062, "rows": rows}}) == "≥ gpt-4 − 1 pt (bound 0.62)"
    short = {"certified": False, "rows": rows, "rows_needed": 1200}
    assert promise_cell({"promise": short}) == "none on 300 rows (~1,200 needed)"
    missed = {**short, "rows_needed": 250}
    assert "the chosen path failed" in promise_cell({"promise": missed})
    assert promise_cell({"promise": {**short, "rows_needed": None}}) == "none on 300 rows"
