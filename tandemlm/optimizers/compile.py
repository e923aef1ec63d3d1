"""`compile(pipeline, trainset, metric, passes=[...], out_dir=...)`: run passes in order, each on the
traces of the pipeline the previous pass returned, and write a loadable artifact.

Each finished pass records, atomically, the pipeline state it produced (`out/passes/NN-name.json`,
with checksums of the files it wrote, chained to this compile's inputs and the record before it,
signed with `TANDEM_ARTIFACT_KEY` when set; see `pass_records`); model calls go through a sqlite
call cache in `out/`. So a compile killed mid-pass and run again with the same `out_dir` resumes
after the last finished pass, once its record passes the checks `load()` makes, and re-pays no
model call; `program.json` and `report.json` appear only when every pass finished.

    compiled = compile(pipe, "train.jsonl", exact_match, valset="dev.jsonl",
                       passes=[BootstrapDemos(k=4), Finetune(nodes=["decompose"])], out_dir="out/")
    compiled.compile_report      # one PassReport per pass
    tandemlm.load("out/", program=pipe)   # the same program, later
"""

from __future__ import annotations

import copy
import hashlib
import json
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tandemlm.compose import Pipeline
from tandemlm.evaluate import load_data
from tandemlm.evaluate.data import require_examples
from tandemlm.evaluate.metrics import Metric
from tandemlm.optimizers.artifact_trust import artifact_key
from tandemlm.optimizers.artifacts import atomic_write, save_program, snapshot
from tandemlm.optimizers.pass_records import PassRecords, start_record
from tandemlm.optimizers.passes import CompileContext, Pass
from tandemlm.optimizers.report import PassReport, Reporter, RichReporter
from tandemlm.optimizers.trace_store import TraceStore
from tandemlm.runtime import CallCache, ConfigError


def _inputs_key(pipeline: Pipeline, out: Path, train: list, val: list, metric: Metric, seed: int,
                unlabeled: list | None = None) -> str:
    """What a resumed compile must share with the interrupted one: the program's state, the data,
    and the content of every model it calls (a model retrained at the same path is another
    input: its fingerprint covers the weights' identity and the adapter's files)."""
    payload = {"state": snapshot(pipeline, out)["state"], "train": train, "val": val, "seed": seed,
               **({"unlabeled": unlabeled} if unlabeled else {}),
               "metric": getattr(metric, "__qualname__", type(metric).__name__),
               "models": {name: model.fingerprint for name, model in pipeline.models_used().items()}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=repr).encode()).hexdigest()


def _as_passes(passes: Iterable[Pass]) -> list[Pass]:
    passes = list(passes)
    bad = [p for p in passes if not isinstance(p, Pass)]
    if bad:
        raise ConfigError(f"passes must be Pass objects (BootstrapDemos(...), Finetune(...), ...), "
                          f"got {type(bad[0]).__name__}")
    return passes


def compile(pipeline: Pipeline, trainset: Any, metric: Metric, *, passes: Sequence[Pass],
            valset: Any = None, unlabeled: Any = None, out_dir: str | Path | None = None,
            source: str | None = None,
            seed: int = 0, threshold: float | None = None, batch_size: int = 64,
            progress: bool = True, reporter: Reporter | None = None, cache: bool = True,
            encoding: str = "utf-8") -> Pipeline:
    """Compile `pipeline`; see the module docstring.

    Args:
        trainset, valset: examples (a path, a list of dicts or `dspy.Example`s); passes learn
            from the trainset and select on the valset; the report measures on the valset when
            given, else on the trainset.
        metric: `metric(example, prediction, trace=None)` -> bool or float.
        passes: the passes, run in order.
        unlabeled: inputs without labels (a path or a list), for passes that can use them:
            `Calibrate(epsilon=...)` certifies against agreement with the reference model on
            them. Their labels, if any, are never read.
        out_dir: artifact directory (a temporary one when omitted: no resume).
        source: how to rebuild the program ("file.py:NAME"), recorded for the user (who may run
            it: `load(out_dir, trust_source=True)`).
        seed: seeds every pass's randomness.
        threshold: metric value from which an example passes (default: truthy).
        cache: keep model calls in `out_dir/calls.sqlite` (a re-run pays no call twice); False
            keeps them in memory for this run only.
        encoding: the text encoding of the data files given by path.
    """
    steps = _as_passes(passes)
    train = require_examples(load_data(trainset, encoding=encoding), trainset, what="training data")
    # An empty valset given on purpose is a mistake, not "no valset": passes would select on
    # the trainset while the report claims to measure on the valset.
    val = (require_examples(load_data(valset, encoding=encoding), valset, what="validation data",
                            hint="or leave the valset out (no --val) to select and report on the "
                                 "trainset") if valset is not None else [])
    extra = (require_examples(load_data(unlabeled, encoding=encoding), unlabeled, what="unlabeled inputs",
                              hint="or leave them out (no --unlabeled)")
             if unlabeled is not None else [])
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="tandem-compile-"))
    out.mkdir(parents=True, exist_ok=True)
    reporter = reporter or (RichReporter() if progress else Reporter())
    inputs = _inputs_key(pipeline, out, train, val, metric, seed, extra)
    start_record(out, inputs, reporter)
    records = PassRecords(out, inputs, artifact_key())
    calls = CallCache(out / "calls.sqlite" if cache else None)
    store = TraceStore(metric, cache=calls, threshold=threshold, batch_size=batch_size,
                       progress=progress)
    split = "val" if val else "train"
    current = copy.deepcopy(pipeline)
    reports: list[PassReport] = []
    resuming = True  # once a pass runs afresh, later records describe another history
    chain = ""  # the digest of the last record: each record names the one before it
    try:
        for index, step in enumerate(steps, 1):
            ctx = CompileContext(train, val, metric, store, out, index=index, seed=seed,
                                 reporter=reporter, unlabeled=extra)
            marker = out / "passes" / f"{index:02d}-{step.name}.json"
            resumed = records.resume(marker, step, current, chain, reporter) if resuming else None
            if resumed is None:
                resuming = False
                for stale in (out / "passes").glob("*.json"):
                    if int(stale.name.split("-", 1)[0]) >= index:
                        stale.unlink()
                current, report = _run_pass(step, current, ctx, split)
                chain = records.write(marker, step, report, current, chain)
            else:
                current, report, chain = resumed
            reports.append(report)
            reporter.pass_done(report)
        save_program(current, out, source=source, passes=[r.to_dict() for r in reports])
    finally:
        store.cache.close()
    _write_report(out, reports, split, current)
    current.compile_report = reports
    return current


def _run_pass(step: Pass, pipeline: Pipeline, ctx: CompileContext,
              split: str) -> tuple[Pipeline, PassReport]:
    started = time.perf_counter()
    train_traces = ctx.traces(pipeline, "train")
    before = train_traces if split == "train" else ctx.traces(pipeline, split)
    new = step.apply(pipeline, train_traces, ctx)
    if not isinstance(new, Pipeline):
        raise ConfigError(f"pass '{step.name}' returned a {type(new).__name__}; apply() must "
                          f"return a Pipeline")
    after = ctx.traces(new, split)
    report = PassReport(ctx.index, step.name, step.config(), before.score, after.score,
                        before.cost(), after.cost(), time.perf_counter() - started,
                        details=dict(ctx.details))
    return new, report


def _write_report(out: Path, reports: list[PassReport], split: str, pipeline: Pipeline) -> None:
    summary = {"program": pipeline.name, "split": split,
               "metric_before": reports[0].metric_before if reports else None,
               "metric_after": reports[-1].metric_after if reports else None,
               "cost_before": reports[0].cost_before if reports else None,
               "cost_after": reports[-1].cost_after if reports else None,
               "passes": [r.to_dict() for r in reports]}
    atomic_write(out / "report.json", json.dumps(summary, indent=1) + "\n")
