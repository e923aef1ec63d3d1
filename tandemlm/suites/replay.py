"""The replay suite: one cascade task per recorded benchmark in a directory of replay files.

Every `*.jsonl` in the directory named like `X_train.jsonl`, `X_test.jsonl` or `X_all.jsonl`
(rows in the replay format: see `tandemlm.runtime.backends.recorded`) is discovered:

* `X_train.jsonl` + `X_test.jsonl` form task X with those splits;
* `X_all.jsonl`, or an `X_train.jsonl` without a test file, is split by row index: even rows
  train, odd rows test;
* rows carrying several model families (`family`) give one task per family, `X/family`.

A task's program is a cascade over every model recorded for it, cheapest first (by mean recorded
cost on the train split), each stage judged by a `FeatureJudge`: the model's recorded confidence
where the data has one, agreement with earlier stages' answers, and — where the rows have a bare
question and the train split has at least `SCORER_MIN_ROWS` rows — a MiniLM cross-encoder on
(question, answer) (`scorer=True` also judges rows that have only a whole prompt, cut from its
start so its question stays: on ARC it trained for 16 minutes and added nothing per stage, see
docs/suites.md). The cross-encoder is cross-fitted (`TrainScorer(folds=2)`), so everything fits on
the whole train split with out-of-fold scores: `FitJudges` picks the judge features
(cross-fitted), `TrainRouter` fits the router and `Calibrate(epsilon=0.01, delta=0.1)` picks the
stages (cheap to dear, up to four) and their thresholds: the cheapest configuration certified to
keep the best single model's accuracy within one point with probability ≥ 0.9, scored with the
judges' out-of-fold models — the best single model itself when nothing cheaper is certified.
`labels=N` keeps the labels of N train rows only; the rest are unlabeled inputs the calibration
certifies against agreement with that model on. Nothing depends on the files shipped today: any
file in that format is a task.

An answer is right when the source judged the model that gave exactly that text right
(`recorded_correct`), which also covers benchmarks without a gold answer.
"""

from __future__ import annotations

import os
import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from tandemlm.compose import Pipeline
from tandemlm.modules import Score, Solve
from tandemlm.modules.cascade import Cascade, Stage
from tandemlm.modules.feature_judge import FeatureJudge
from tandemlm.modules.router import TextRouter
from tandemlm.optimizers import Calibrate, FitJudges, TrainRouter, TrainScorer
from tandemlm.runtime import ConfigError, Model
from tandemlm.runtime.backends.hf_classifier import minilm_path
from tandemlm.runtime.backends.recorded import read_replay_file
from tandemlm.suites.suite import Suite, Task

#: train rows from which a task with bare questions also gets a text scorer: on fewer it learns
#: too little to pay for its training
SCORER_MIN_ROWS = 500
_NAME = re.compile(r"^(?P<stem>.+)_(?P<split>train|test|all)\.jsonl$")


def default_dir() -> Path | None:
    """The directory named by `TANDEM_REPLAY_DIR`, if set."""
    env = os.environ.get("TANDEM_REPLAY_DIR")
    return Path(env) if env else None


def recorded_correct(example: Any, prediction: Any, trace: Any = None) -> bool:
    """The source's own judgement of the answer: right when most models that gave exactly this
    text were judged right (a tie is wrong)."""
    said = str(prediction.answer).strip()
    votes = [bool(m["correct"]) for m in example.recorded.values()
             if str(m["output"]).strip() == said and m["correct"] is not None]
    return sum(votes) * 2 > len(votes)


def _example(row: dict[str, Any], file: str) -> dict[str, Any]:
    """What the pipeline and metric see of a row: its key (FILE#ID: ids are unique within a file
    only), the prompt and question, and each model's recorded output and judgement (the metric's
    answer key), not costs or confidences."""
    prompt = row.get("prompt") or ""
    if not isinstance(prompt, str):  # a multi-turn prompt, as a list of turns
        prompt = "\n\n".join(map(str, prompt))
    return {"id": f"{Path(file).name}#{row['id']}", "prompt": prompt,
            "question": row.get("question") or prompt, "gold": row.get("gold"),
            "recorded": {name: {"output": m.get("output") or "", "correct": m.get("correct")}
                         for name, m in row["models"].items()}}


def discover(data: str | Path) -> list[dict[str, Any]]:
    """The tasks in `data`: one dict per task with its name, files and how to split them."""
    root = Path(data)
    if not root.is_dir():
        raise ConfigError(f"replay data directory '{root}' does not exist; pass --data DIR (a "
                          f"directory of X_train/X_test/X_all.jsonl replay files)")
    groups: dict[str, dict[str, Path]] = defaultdict(dict)
    for path in sorted(root.glob("*.jsonl")):
        match = _NAME.match(path.name)
        if match:
            groups[match["stem"]][match["split"]] = path
    found = []
    for stem, files in sorted(groups.items()):
        if "train" in files and "test" in files:
            split = {"train": str(files["train"]), "test": str(files["test"]), "by_index": None}
        elif "all" in files or "train" in files:
            split = {"train": None, "test": None, "by_index": str(files.get("all") or files["train"])}
        else:
            continue  # a test file without training data cannot be compiled
        rows = _rows(split["train"] or split["by_index"])
        families = sorted({r.get("family") for r in rows}, key=lambda f: (f is not None, str(f)))
        for family in families:
            found.append({"name": stem if family is None else f"{stem}/{family}", "family": family,
                          **split})
    if not found:
        raise ConfigError(f"no replay tasks in '{root}': expected files named X_train.jsonl + "
                          f"X_test.jsonl, X_all.jsonl or X_train.jsonl")
    return found


def _rows(path: str) -> list[dict[str, Any]]:
    return read_replay_file(path).rows


def splits(spec: dict[str, Any]) -> tuple[list[tuple[dict, str]], list[tuple[dict, str]]]:
    """(train, test) rows of one discovered task, restricted to its family, each with its file."""
    def rows(path: str) -> list[tuple[dict, str]]:
        return [(r, path) for r in _rows(path) if r.get("family") == spec["family"]]
    if spec["by_index"]:
        both = rows(spec["by_index"])
        train, test = both[0::2], both[1::2]
    else:
        train, test = rows(spec["train"]), rows(spec["test"])
    if not train or not test:
        raise ConfigError(f"replay task '{spec['name']}' has {len(train)} train and {len(test)} "
                          f"test rows; it needs both")
    return train, test


def models_by_cost(rows: list[dict[str, Any]]) -> list[str]:
    """Models recorded on every row, cheapest first (mean recorded cost; unknown cost last)."""
    names = [m for m in rows[0]["models"] if all(m in r["models"] for r in rows)]
    def mean_cost(name: str) -> float:
        costs = [r["models"][name].get("cost_usd") for r in rows]
        known = [c for c in costs if c is not None]
        return sum(known) / len(known) if known else float("inf")
    return sorted(names, key=lambda m: (mean_cost(m), m))


def build(data: list[str], models: list[str], *, scorer: bool = True, confidence: bool = True,
          text_field: str = "question", max_length: int = 128, router: bool = False,
          name: str = "replay_cascade") -> Pipeline:
    """The uncompiled cascade over `models` (cheapest first) answering from the replay files
    `data`; see the module docstring."""
    # a whole prompt (few-shot examples, then the question) keeps its end: its question
    cut = {"truncation_side": "left"} if text_field == "prompt" else {}
    text = Model("hf-classifier", str(minilm_path()), name="minilm-judge", max_length=max_length,
                 **cut) if scorer else None
    stages = []
    for i, model in enumerate(models):
        solver = Solve("prompt -> answer", model=Model("recorded", model, data=list(data)),
                       name=f"s{i}_" + re.sub(r"[^A-Za-z0-9]+", "_", model).strip("_").lower(),
                       prompt_field="prompt", key_field="id")
        judge = None
        if i < len(models) - 1:
            score = Score(text, fields=(text_field, "answer"), name=f"judge_{i}") if text else None
            judge = FeatureJudge(score, confidence=confidence)
        stages.append(Stage(solver, judge=judge, threshold=0.5))
    routing = TextRouter(field="prompt", encoder=Model("hf-classifier", str(minilm_path()),
                                                      name="minilm-router", max_length=256)) \
        if router else None
    return Pipeline([Cascade(stages, router=routing)], name=name)


def task(spec: dict[str, Any], *, scorer: bool | None = None, epochs: int = 3, folds: int = 2,
         epsilon: float = 0.01, delta: float = 0.1, router: bool = True, labels: int | None = None,
         seed: int = 0) -> Task:
    """The suite task for one discovered replay benchmark.

    Args:
        scorer: judge with a MiniLM cross-encoder too; None: where the rows have a bare question
            (a long few-shot prompt would be cut before the question) and the train split has at
            least `SCORER_MIN_ROWS` rows.
        epochs: the cross-encoder's training epochs.
        folds: cross-fit the cross-encoder in this many folds (`TrainScorer(folds=...)`), so the
            judges and the calibration see out-of-fold scores on the whole train split; 0: train
            it on three quarters of the split and fit the rest on the other quarter.
        epsilon, delta: `Calibrate`'s promise: the chosen configuration keeps the best single
            model's train accuracy within `epsilon`, with probability ≥ 1 − `delta`.
        router: give the cascade a `TextRouter` on the prompt (hashed words and a MiniLM
            sentence embedding; `TrainRouter` fits it) so the calibration also weighs routers
            and hybrids. On the eight shared recorded tasks no chosen point was worse than with
            cascades alone and three were cheaper (docs/suites.md); False: cascades only, faster.
        labels: keep the labels of only this many train rows (drawn with `seed`); the others
            become unlabeled inputs (their gold answers and judgements dropped), which
            `Calibrate` certifies against agreement with the reference model on.
    """
    train_pairs, test_pairs = splits(spec)
    train_rows = [r for r, _ in train_pairs]
    models = models_by_cost(train_rows)
    if len(models) < 2:
        raise ConfigError(f"replay task '{spec['name']}' records {len(models)} model(s) on every "
                          f"row; a cascade needs at least two")
    has_confidence = any(r["models"][m].get("confidence") is not None for r in train_rows for m in models)
    bare = all(r.get("question") for r in train_rows)
    if scorer is None:
        scorer = bare and len(train_rows) >= SCORER_MIN_ROWS
    files = sorted({f for f in (spec["train"], spec["test"], spec["by_index"]) if f})
    options = {"data": [str(Path(f).resolve()) for f in files], "models": models, "scorer": scorer,
               "confidence": has_confidence, "text_field": "question" if bare else "prompt",
               "router": router}
    train = [_example(r, f) for r, f in train_pairs]
    unlabeled = None
    if labels is not None:
        train, unlabeled = _hide_labels(train, labels, seed, spec["name"])
    fit, val = [x for i, x in enumerate(train) if i % 4 != 0], [x for i, x in enumerate(train) if i % 4 == 0]
    calibrate = Calibrate(epsilon=epsilon, delta=delta, order="cost", max_stages=4)
    passes = [FitJudges(), *([TrainRouter()] if router else []), calibrate]
    if scorer:
        passes.insert(0, TrainScorer(train_encoder=True, epochs=epochs, folds=folds))
    split = scorer and not folds  # the scorer learns from train and the rest fits on val
    program = f"tandemlm.suites.replay:build({', '.join(f'{k}={v!r}' for k, v in options.items())})"
    return Task(name=spec["name"], program=program,
                train=fit if split else train, val=val if split else None,
                test=[_example(r, f) for r, f in test_pairs], metric=recorded_correct, passes=passes,
                seed=seed, unlabeled=unlabeled,
                description=f"{len(models)} recorded models, cheapest first: {', '.join(models)}"
                            + (f"; {len(train)} labelled + {len(unlabeled)} unlabeled train rows"
                               if unlabeled is not None else ""))


def _hide_labels(train: list[dict[str, Any]], labels: int, seed: int,
                 name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(`labels` train rows drawn at random, the others as inputs only)."""
    if not 0 < labels < len(train):
        raise ConfigError(f"replay task '{name}': --labels {labels} must be between 1 and its "
                          f"{len(train) - 1} train rows minus one (to leave some unlabeled)")
    order = random.Random(f"{seed}:{name}:labels").sample(range(len(train)), len(train))
    kept = sorted(order[:labels])
    hidden = [{k: v for k, v in train[i].items() if k not in ("gold", "recorded")}
              for i in sorted(order[labels:])]
    return [train[i] for i in kept], hidden


def suite(data: str | Path | None = None, *, scorer: bool | None = None, epochs: int = 3,
          folds: int = 2, epsilon: float = 0.01, delta: float = 0.1, router: bool = True,
          labels: int | None = None) -> Suite:
    """Every replay task in `data` (default: `default_dir()`); options as `task`'s."""
    root = data or default_dir()
    if root is None:
        raise ConfigError("the replay suite needs its data: pass --data DIR (a directory of "
                          "replay .jsonl files) or set TANDEM_REPLAY_DIR")
    specs = discover(root)
    options = {"scorer": scorer, "epochs": epochs, "folds": folds, "epsilon": epsilon,
               "delta": delta, "router": router, "labels": labels}
    return Suite(name="replay", tasks={s["name"]: (lambda s=s: task(s, **options)) for s in specs},
                 description=f"cascades over recorded real models, from {root}")
