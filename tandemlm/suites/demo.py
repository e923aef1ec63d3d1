"""`tandem demo`: compile a FrugalGPT cascade over real recorded model answers and compare it with
every single model — no GPU, API key or download.

The packaged OVERRULING data (FrugalGPT's 2,160 rows, gzip-compressed in the package) is split by
row index: odd rows are the test half; of the even rows, three in four train the MiniLM judge
(`TrainScorer`) and one in four calibrates the cascade: `Calibrate(epsilon=0.03, delta=0.1)`, the
cheapest chain certified to keep GPT-4's accuracy (the best single model on the calibration rows)
within 3 points with probability at least 0.9 — on 270 calibration rows, a 1-point promise would
need about four times as many (the report says how many). Writes into `out`:

* `compiled/` — the compiled program (`program.json`, scorer weights, the calibration curve);
* `eval/results.jsonl` — every test example's answer, trace and cost; `eval/summary.json`;
* `report.json` — every single model's and the cascade's test accuracy and cost, and the promise;
* `results.json` — the same run as a one-task suite result, so `tandem report DIR` renders it;
* `cost_quality.png` — on the test half: every single model, the cost–quality curve of every
  chain and threshold (what the best choice could have been), and the compiled cascade.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tandemlm.evaluate import evaluate, packaged_data
from tandemlm.optimizers import Calibrate, Pass, TrainScorer, compile
from tandemlm.optimizers.artifacts import atomic_write
from tandemlm.runtime import CallCache, terminal, use_cache
from tandemlm.suites.overruling import STAGES, build, metric, splits
from tandemlm.suites.run import results_header, task_entry
from tandemlm.suites.suite import Task

PASSES = (TrainScorer(train_encoder=True, epochs=3), Calibrate(epsilon=0.03, delta=0.1))
DATA = "overruling_all.jsonl.gz"


def single_models(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each recorded model alone on `rows`: accuracy and total cost (its recorded answers)."""
    return {name: {"accuracy": sum(bool(r["models"][name]["correct"]) for r in rows) / len(rows),
                   "cost_usd": sum(r["models"][name]["cost_usd"] for r in rows)}
            for name in STAGES}


def run_demo(out: str | Path, *, data: str | Path | None = None, passes: list[Pass] | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Compile and evaluate the cascade (see the module docstring); returns the report.

    Args:
        data: a replay file in the same format (default: the packaged 2,160-row file).
        passes: the compile's passes (default `PASSES`); the last must be a `Calibrate`.
    """
    started = time.perf_counter()
    out = Path(out)
    data = str(data or packaged_data(DATA))
    train, val, test = splits(data)
    passes = list(passes or PASSES)
    compiled = compile(build(data), train, metric, valset=val, passes=passes,
                       out_dir=out / "compiled", source="tandemlm.suites.overruling:build",
                       progress=progress)
    compiled_s = time.perf_counter() - started
    cache = CallCache()  # the test curve below reuses the evaluation's judge calls
    with use_cache(cache):
        result = evaluate(compiled, test, metric, out=out / "eval", progress=progress)
    task = Task(name="overruling", program=f"tandemlm.suites.overruling:build(data={data!r})",
                train=train, val=val, test=test, metric=metric, passes=passes,
                description="FrugalGPT's OVERRULING cascade over five recorded APIs")
    on_test = task_entry(task, compiled, result, cache, out, compile_seconds=compiled_s,
                         progress=progress)
    on_test["seconds"]["total"] = time.perf_counter() - started
    header = results_header("demo", "tandem demo: " + task.description)
    atomic_write(out / "results.json", json.dumps({**header, "tasks": {task.name: on_test}},
                                                  indent=1) + "\n")
    singles = single_models(test)
    best = max(singles, key=lambda name: (singles[name]["accuracy"], -singles[name]["cost_usd"]))
    calibration = compiled.compile_report[-1].details["cascade"]
    (curve,) = sorted((out / "compiled" / "curves").glob("*/curve.json"))  # the one cascade's
    calibration["frontier"] = json.loads(curve.read_text())["frontier"]
    cascade = {"accuracy": result.score, "cost_usd": result.summary["total_cost_usd"],
               "cost_fraction": result.summary["total_cost_usd"] / singles[best]["cost_usd"],
               "stages": calibration["chosen"]["stages"],
               "thresholds": calibration["chosen"]["thresholds"]}
    n = len(test)
    top = singles[best]["accuracy"]
    report = {"data": data, "n_test": n, "n_train": len(train), "n_val": len(val),
              "singles": singles, "best_single": {"model": best, **singles[best],
                                                  "stderr": (top * (1 - top) / n) ** 0.5},
              "cascade": cascade, "scorer": compiled.compile_report[0].details,
              "calibration": calibration, "test_curve": on_test["test_curve"],
              "parity_cost_fraction": on_test["parity_cost_fraction"]}
    atomic_write(out / "report.json", json.dumps(report, indent=1) + "\n")
    _plot(out / "cost_quality.png", report, len(test))
    return report


def table(report: dict[str, Any]) -> Table:
    """Every single model and the compiled cascade on the test half."""
    best = report["best_single"]
    out = Table(title=f"OVERRULING, {report['n_test']} test examples (recorded answers of real APIs)")
    for column in ("model", "accuracy", "cost (USD)", f"cost vs {best['model']}"):
        out.add_column(column, justify="left" if column == "model" else "right")
    for name, figures in report["singles"].items():
        out.add_row(name, f"{figures['accuracy']:.3f}", f"{figures['cost_usd']:.4f}",
                    f"{figures['cost_usd'] / best['cost_usd']:.3f}")
    cascade = report["cascade"]
    out.add_row("[bold]compiled cascade[/bold]\n" + " -> ".join(cascade["stages"]),
                f"[bold]{cascade['accuracy']:.3f}[/bold]", f"[bold]{cascade['cost_usd']:.4f}[/bold]",
                f"[bold]{cascade['cost_fraction']:.3f}[/bold]")
    return out


def verdict(report: dict[str, Any]) -> str:
    """One line: the compiled cascade against the best single model, on the test half."""
    best, cascade = report["best_single"], report["cascade"]
    gap = cascade["accuracy"] - best["accuracy"]
    if gap >= -best["stderr"]:
        how = ("beats" if gap > 0 else "matches") + f" {best['model']}"
    else:
        how = f"falls {-gap:.3f} short of {best['model']}"
    return (f"compiled cascade {how}: accuracy {cascade['accuracy']:.3f} vs {best['accuracy']:.3f} "
            f"(± {best['stderr']:.3f}) at {cascade['cost_fraction']:.1%} of its cost")


def print_report(report: dict[str, Any], out: str | Path, console: Console | None = None) -> None:
    console = console or terminal.console()
    console.print(table(report))
    console.print(verdict(report))
    console.print(f"the promise, from the calibration rows: {report['calibration']['promise']['statement']}",
                  markup=False, soft_wrap=True)
    console.print(f"report: {out}/report.json, per-example results: {out}/eval/results.jsonl, "
                  f"plot: {out}/cost_quality.png")


def _plot(path: Path, report: dict[str, Any], n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    curve = report["test_curve"]
    ax.plot([p["cost"] for p in curve], [p["quality"] for p in curve], "-", color="tab:blue",
            alpha=0.6, label="every chain and threshold, test half (Pareto frontier)")
    for i, (name, figures) in enumerate(report["singles"].items()):
        ax.scatter(figures["cost_usd"] / n, figures["accuracy"], color="grey", s=18,
                   label="single models, test half" if i == 0 else None)
        ax.annotate(name, (figures["cost_usd"] / n, figures["accuracy"]), fontsize=7)
    cascade = report["cascade"]
    ax.scatter(cascade["cost_usd"] / n, cascade["accuracy"], marker="*", s=180, color="red",
               label="compiled cascade, test half", zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("mean cost per example (USD)")
    ax.set_ylabel("accuracy")
    ax.set_title("OVERRULING, test half: single models vs the compiled cascade")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    tmp.replace(path)
