"""Running a suite: compile + evaluate every task, write one `results.json`, per-example JSONL and
a table in the style of lm-evaluation-harness.

For a task whose program holds a cascade, every stage also answers every test example once (the
compile's own machinery, `stage_runs`), which gives each single model's test accuracy and cost
and the test cost–quality curve of every chain and threshold, without extra model calls beyond
one per stage and example. Per task, `results.json` holds:

* `metric`: the compiled program's test metric with its bootstrap standard error;
* `cost`: test cost in all, per example and per model;
* `singles`: every stage alone on test (accuracy, mean cost per example) and on the
  calibration split;
* `best_single` (best on test), `cheapest_within_1pt` (the cheapest single model within one
  point of it);
* `cascade`: the compiled cascade on test at the operating point chosen on train data only —
  accuracy, mean cost, `cost_fraction` of the best single model's cost, stages and thresholds;
* `parity_cost_fraction`: along the test curve, the cheapest multi-stage point whose test accuracy
  reaches the best single model's, as a fraction of that model's cost (null if none does) — a
  diagnostic of the curve, not a claim;
* `curve_auc`: the area under the test cost–quality frontier, cost scaled by the dearest single
  model's (0..1); `singles_auc` is the same for single models only;
* `judge_features`: which judge features won (`FitJudges`), when the compile chose them;
* `config_hash`, `seconds`; the file also records package versions.
"""

from __future__ import annotations

import json
import platform
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tandemlm.evaluate import evaluate
from tandemlm.evaluate.loading import load_program
from tandemlm.modules.cascade import Cascade, json_threshold
from tandemlm.optimizers import Calibrate, compile
from tandemlm.optimizers.artifacts import atomic_write
from tandemlm.optimizers.calibrate import router_chances
from tandemlm.optimizers.cost_quality import Point, cost_quality_points, frontier, point_at
from tandemlm.optimizers.passes import CompileContext
from tandemlm.optimizers.report import Reporter, RichReporter
from tandemlm.optimizers.stage_runs import cascade_inputs, cascades, run_every_stage
from tandemlm.optimizers.trace_store import TraceStore
from tandemlm.runtime import CallCache, TandemError, terminal, use_cache
from tandemlm.suites.suite import Suite, Task

SCHEMA = "tandemlm.suite-results/1"
PACKAGES = ("tandemlm", "dspy", "torch", "transformers", "numpy")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def run_suite(suite: Suite, out: str | Path, *, tasks: list[str] | None = None,
              progress: bool = True, console: Console | None = None) -> dict[str, Any]:
    """Compile and evaluate each task of `suite` (or those named) into `out`; returns the results
    (also written to `out/results.json` after every task, so an interrupted run keeps what it
    finished; a re-run resumes each task's compile)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    console = console or terminal.console()
    results = results_header(suite.name, suite.description)
    for name in suite.select(tasks):
        console.rule(f"[bold]{suite.name}: {name}")
        try:
            task = suite.task(name)
            results["tasks"][name] = run_task(task, out / slug(name), progress=progress,
                                              reporter=RichReporter(console) if progress else Reporter())
        except TandemError as exc:
            results["tasks"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            console.print(f"[bold red]{terminal.safe(name, markup=True)} failed:[/] "
                          f"{terminal.safe(exc, markup=True)}", soft_wrap=True)
        except Exception as exc:  # one broken task must not lose the others' results
            results["tasks"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                      "traceback": traceback.format_exc()}
            console.print(f"[bold red]{terminal.safe(name, markup=True)} failed:[/] "
                          f"{type(exc).__name__}: {terminal.safe(exc, markup=True)}", soft_wrap=True)
        atomic_write(out / "results.json", json.dumps(results, indent=1) + "\n")
    atomic_write(out / "results.md", markdown_table(results) + "\n")
    return results


def run_task(task: Task, out: Path, *, progress: bool = True,
             reporter: Reporter | None = None) -> dict[str, Any]:
    """Compile `task` on its train (and val) split, evaluate on test; see the module docstring."""
    start = time.perf_counter()
    compiled = compile(load_program(task.program), task.train, task.metric, valset=task.val,
                       unlabeled=task.unlabeled, passes=task.passes, out_dir=out / "compiled",
                       source=task.program,
                       seed=task.seed, progress=progress, reporter=reporter)
    compiled_s = time.perf_counter() - start
    cache = CallCache()
    with use_cache(cache):
        result = evaluate(compiled, task.test, task.metric, out=out / "eval", progress=progress)
    entry = task_entry(task, compiled, result, cache, out, compile_seconds=compiled_s,
                       progress=progress, reporter=reporter)
    entry["seconds"]["total"] = time.perf_counter() - start
    atomic_write(out / "task.json", json.dumps(entry, indent=1) + "\n")
    return entry


def task_entry(task: Task, compiled: Any, result: Any, cache: CallCache, out: Path, *,
               compile_seconds: float, progress: bool = True,
               reporter: Reporter | None = None) -> dict[str, Any]:
    """A task's results entry from its compiled program and its test evaluation (`result`, run
    under `cache`): metric, cost, and for a cascade every single model and the test curve."""
    summary = result.summary
    entry: dict[str, Any] = {
        "description": task.description, "config_hash": task.config_hash(),
        "program": task.program, "passes": [[type(p).__name__, p.config()] for p in task.passes],
        "n_train": len(task.train), "n_val": len(task.val or []), "n_test": len(task.test),
        "n_unlabeled": len(task.unlabeled or []),
        "metric": {"name": summary["metric"]["name"], "value": summary["metric"]["mean"],
                   "stderr": summary["metric"]["stderr"]},
        "cost": {"total_usd": summary["total_cost_usd"],
                 "per_example_usd": (summary["total_cost_usd"] or 0.0) / max(1, summary["n"]),
                 "per_model": summary["usage"]},
        "errors": summary["errors"],
        "seconds": {"compile": compile_seconds}}
    found = cascades(compiled)
    if found:
        path, cascade = next(iter(found.items()))
        entry.update(cascade_figures(task, compiled, path, cascade, cache, out, progress, reporter))
        entry["cascade"]["accuracy_evaluated"] = summary["metric"]["mean"]
    return entry


def results_header(name: str, description: str) -> dict[str, Any]:
    """The top of a results file: schema, suite, when and with which versions."""
    return {"schema": SCHEMA, "suite": name, "description": description,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "versions": versions(),
            "tasks": {}}


def _calibration(task: Task) -> Calibrate:
    return next((p for p in task.passes if isinstance(p, Calibrate)), Calibrate(match=1.0))


def cascade_figures(task: Task, compiled: Any, path: str, cascade: Cascade, cache: CallCache,
                     out: Path, progress: bool, reporter: Reporter | None) -> dict[str, Any]:
    """Single models, the compiled cascade and the cost–quality curve, all on test."""
    store = TraceStore(task.metric, cache=cache, progress=progress)
    ctx = CompileContext(trainset=task.test, valset=[], metric=task.metric, store=store,
                         out=out / "compiled", reporter=reporter or Reporter())
    rows = cascade_inputs(store.run(compiled, task.test), path)
    runs = run_every_stage(compiled, path, rows, ctx, cross_fit=False)
    calibrate = _calibration(task)
    inputs = [values for _, values in rows]
    chances = router_chances(cascade, inputs, runs, cross_fit=False)
    routing = cascade.router.costs(inputs) if chances is not None else None
    table, points = cost_quality_points(runs, cascade.judges, max_stages=calibrate.max_stages,
                                        grid=calibrate.grid, order=calibrate.order,
                                        cross_fit=False, chances=chances, router_cost=routing)
    names = [s.name for s in cascade.solvers]
    models = [compiled.resolve(s.model).name if getattr(s, "model", None) is not None else s.name
              for s in cascade.solvers]
    singles = {p.chain[0]: p for p in points if len(p.chain) == 1}
    best = max(singles.values(), key=lambda p: (p.quality, -p.cost))
    near = min((p for p in singles.values() if p.quality >= best.quality - 0.01 - 1e-12),
               key=lambda p: (p.cost, -p.quality))
    chosen = point_at(table, cascade.order, cascade.thresholds, cascade.router_threshold)
    parity = [p for p in points if len(p.chain) > 1 and p.quality >= best.quality - 1e-12]
    top_cost = max(p.cost for p in singles.values()) or 1.0
    report = {r.name: r for r in compiled.compile_report}
    calib = report["calibrate"].details.get(path, {}) if "calibrate" in report else {}
    train_singles = {p["stages"][0]: p for p in calib.get("singles", [])}

    def single(p: Point) -> dict[str, Any]:
        s = p.chain[0]
        return {"model": models[s], "stage": names[s], "accuracy": p.quality, "cost": p.cost,
                "train_accuracy": train_singles.get(names[s], {}).get("quality"),
                "train_cost": train_singles.get(names[s], {}).get("cost")}

    figures = {
        "cost_unit": table.unit,
        "singles": {models[s]: single(p) for s, p in sorted(singles.items())},
        "best_single": single(best), "cheapest_within_1pt": single(near),
        "cascade": {"accuracy": chosen.quality, "cost": chosen.cost,
                    "cost_fraction": chosen.cost / best.cost if best.cost else None,
                    "kind": chosen.kind, "router_threshold": chosen.router,
                    "stages": [models[s] for s in chosen.chain], "order": list(chosen.chain),
                    "thresholds": [json_threshold(cascade.thresholds[s]) if s != chosen.chain[-1]
                                   else None for s in chosen.chain],
                    "train_accuracy": (calib.get("chosen") or {}).get("quality"),
                    "train_cost": (calib.get("chosen") or {}).get("cost"),
                    "train_target": calib.get("target")},
        "promise": _promise(calib),
        "parity_cost_fraction": (min(p.cost for p in parity) / best.cost if parity and best.cost
                                 else None),
        "curve_auc": curve_auc(points, top_cost),
        "singles_auc": curve_auc(list(singles.values()), top_cost),
        "test_curve": [{"stages": [models[s] for s in p.chain], "kind": p.kind, "cost": p.cost,
                        "quality": p.quality}
                       for p in frontier(points)],
    }
    if "fit_judges" in report:
        details = report["fit_judges"].details
        figures["judge_features"] = {
            "won": details.get(path, {}).get("features_won", {}),
            "stages": {k.rsplit("/", 1)[-1]: v for k, v in details.items() if k != path}}
    return figures


def _promise(calibration: dict[str, Any]) -> dict[str, Any] | None:
    """What `Calibrate(epsilon=...)` certified on train data, as the results file keeps it."""
    promise = calibration.get("promise")
    if promise is None:
        return None
    keep = ("epsilon", "delta", "reference", "certified", "bound", "test", "rows", "statement")
    return {**{k: promise[k] for k in keep},
            "rows_needed": (promise.get("needed") or {}).get("rows")}


def curve_auc(points: list[Point], top_cost: float) -> float:
    """Area under the cost–quality frontier of `points`, cost scaled to [0, 1] by `top_cost`:
    quality at cost c is the best quality of any point costing at most c (0 below the cheapest)."""
    area, best, last = 0.0, 0.0, 0.0
    for p in frontier(points):
        x = min(p.cost / top_cost, 1.0) if top_cost else 0.0
        area += best * (x - last)
        best, last = max(best, p.quality), x
    return area + best * (1.0 - last)


# -- tables ----------------------------------------------------------------------------------------
def pct(x: float | None) -> str:
    """A fraction as a percentage with one decimal ("—" when missing)."""
    return "—" if x is None else f"{100 * x:.1f}"


def frac(x: float | None) -> str:
    """A fraction with three decimals ("—" when missing)."""
    return "—" if x is None else f"{x:.3f}"


def promise_cell(task: dict[str, Any]) -> str:
    """What `Calibrate(epsilon=...)` certified on train data, in a few words ("—" without a
    promise): "≥ REF − 1 pt (bound 0.62)" or "none on 300 rows (~1,200 needed)"; when the rows
    would usually do, the walk failed on its certification rows and the cell says so."""
    promise = task.get("promise")
    if not promise:
        return "—"
    if promise["certified"]:
        return (f"≥ {promise['reference']} − {100 * promise['epsilon']:g} pt "
                f"(bound {100 * promise['bound']:.2f})")
    rows = promise["rows"]["labelled"] + promise["rows"]["unlabeled"]
    needed = promise.get("rows_needed")
    if needed and needed <= rows:
        return f"none on {rows} rows (the chosen path failed; ~{needed:,} usually do)"
    return f"none on {rows} rows" + (f" (~{needed:,} needed)" if needed else "")


def markdown_table(results: dict[str, Any]) -> str:
    """One row per task, in the style of lm-evaluation-harness's results table."""
    head = ("| Task | n | Metric | Value | | Stderr | Best single (acc, $/ex) | Cheapest within 1 pt "
            "| Cascade chosen on train | Promise certified on train | Cost fraction "
            "| Parity cost fraction | Curve AUC |")
    lines = [head, "|" + "|".join(["---"] * 13) + "|"]
    for name, t in results["tasks"].items():
        if "error" in t:
            lines.append(f"| {name} | | error | | | | {t['error'][:80]} | | | | | | |")
            continue
        m = t["metric"]
        best, near, cas = t.get("best_single"), t.get("cheapest_within_1pt"), t.get("cascade")
        lines.append(
            f"| {name} | {t['n_test']} | {m['name']} | {pct(m['value'])} | ± | {pct(m['stderr'])} | "
            + (f"{best['model']} ({pct(best['accuracy'])}, {best['cost']:.2e}) | "
               f"{near['model']} ({pct(near['accuracy'])}) | "
               f"{' → '.join(cas['stages'])} ({pct(cas['accuracy'])}, {cas['cost']:.2e}) | "
               f"{promise_cell(t)} | {frac(cas['cost_fraction'])} | "
               f"{frac(t['parity_cost_fraction'])} | {frac(t['curve_auc'])} |" if best
               else "| | | | | | |"))
    return "\n".join(lines)


def results_table(results: dict[str, Any]) -> Table:
    """The terminal version of `markdown_table`."""
    out = Table(title=f"suite {results['suite']}: test split, cascade chosen on train data only")
    left = ("task", "best single", "cascade (chosen on train)", "promise")
    for column in ("task", "n", "metric ± stderr", "best single", "cascade (chosen on train)",
                   "promise", "cost fraction", "parity", "AUC"):
        out.add_column(column, justify="left" if column in left else "right")
    for name, t in results["tasks"].items():
        if "error" in t:
            out.add_row(name, "", "[red]error[/red]", terminal.safe(t["error"][:60], markup=True),
                        "", "", "", "", "")
            continue
        m, best, cas = t["metric"], t.get("best_single"), t.get("cascade")
        value = f"{pct(m['value'])} ± {pct(m['stderr'])}"
        if not best:
            out.add_row(name, str(t["n_test"]), value, "", "", "", "", "", "")
            continue
        out.add_row(name, str(t["n_test"]), value, f"{best['model']} {pct(best['accuracy'])}",
                    " → ".join(cas["stages"]), promise_cell(t), frac(cas["cost_fraction"]),
                    frac(t["parity_cost_fraction"]), frac(t["curve_auc"]))
    return out


def print_results(results: dict[str, Any], console: Console | None = None) -> None:
    (console or terminal.console()).print(results_table(results))
