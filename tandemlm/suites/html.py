"""A suite's results as one static HTML file: `render_report(results_dir)`.

The report reads the `results.json` that `run_suite` writes (its schema is in the docstring of
`tandemlm.suites.run`) and shows:

* a header: the suite's name and description, when it ran, and the package versions;
* a summary table, one row per task: the compiled program's test metric ± its standard error, the
  best single model, the cheapest single model within one point of it, the compiled cascade
  (stages, accuracy, cost per example), its cost fraction of the best single model, the parity cost
  fraction, the area under the test cost–quality curve (and under single models only), and which
  judge features won; a task that failed shows its error instead;
* per task: every single model on test and on the calibration split with the cascade's row
  highlighted, a cost–quality plot (single models as labelled points, the test frontier as a line,
  the compiled cascade as a red star, cost on a log axis), and per cascade stage the judge features
  chosen with the held-out AUC of every feature subset tried.

The file stands alone: CSS and a tiny script are inline, plots are embedded as `data:` URIs, and a
Content-Security-Policy forbids any network access. Once the page has loaded, the script sets
`document.body.dataset.rendered` to "ok" when every image decoded and a table exists (else
"broken"), so a headless browser can check that the page rendered.

    >>> render_report("runs/suite-replay")          # doctest: +SKIP
    PosixPath('runs/suite-replay/report.html')
"""

from __future__ import annotations

import base64
import io
import json
from html import escape
from pathlib import Path
from typing import Any

from tandemlm.optimizers.artifacts import atomic_write
from tandemlm.runtime import ConfigError
from tandemlm.suites.run import frac, pct, promise_cell, slug

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em;
       color: #222; background: #fff; line-height: 1.4; }
h1, h2, h3 { font-weight: 600; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.cascade td { background: #fff1d6; font-weight: 600; }
td.error, p.error { color: #a00; }
.muted { color: #777; }
img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: 12px; }
"""

# Sets body[data-rendered] once everything has loaded, so a headless browser can check the page.
SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var decoded = images.every(function (i) { return i.complete && i.naturalWidth > 0; });
  var tables = document.getElementsByTagName("table").length > 0;
  document.body.dataset.rendered = decoded && tables ? "ok" : "broken";
});
"""

# Inline style, inline script and data: images only: the page never reaches the network.
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'")


def render_report(results_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the HTML report of the results in `results_dir` to `out` (default
    `results_dir/report.html`) and return its path: a suite's or the demo's (`results.json`; see
    the module docstring for what it shows), or an evaluation's (`summary.json`, see
    `tandemlm.suites.eval_html`)."""
    results_dir = Path(results_dir)
    if not (results_dir / "results.json").is_file() and (results_dir / "summary.json").is_file():
        from tandemlm.suites.eval_html import render_eval

        return render_eval(results_dir, out)
    results = load_results(results_dir / "results.json")
    path = Path(out) if out is not None else results_dir / "report.html"
    atomic_write(path, page(results))
    return path


def load_results(path: Path) -> dict[str, Any]:
    """The parsed `results.json` at `path`; a ConfigError naming the file when it is missing, not
    JSON, or not a suite results file."""
    if not path.is_file():
        raise ConfigError(f"no results file at {path}: `tandem report` renders a directory "
                          f"that `tandem suite` or `tandem demo` wrote (results.json) or that "
                          f"`tandem eval --out` wrote (summary.json)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); it should be the results.json that "
                          f"`tandem suite` writes") from exc
    if not isinstance(results, dict) or not isinstance(results.get("tasks"), dict):
        raise ConfigError(f"{path} is not a suite results file: expected an object with a 'tasks' "
                          f"mapping, as `tandem suite` writes")
    return results


def page(results: dict[str, Any]) -> str:
    """The whole HTML document for `results`."""
    title = f"tandemlm suite: {results.get('suite', '?')}"
    sections = "\n".join(task_section(name, task) for name, task in results["tasks"].items())
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n<script>{SCRIPT}</script>\n"
            f"</head>\n<body>\n{header(results)}\n<h2>Summary</h2>\n{summary_table(results)}\n"
            f"{sections}\n</body>\n</html>\n")


# -- formatting ------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return escape(str(value))


def _cost(x: float | None) -> str:
    return "—" if x is None else f"{x:.2e}"


def _row(cells: list[str], cls: str = "") -> str:
    """A table row of already-escaped cells; a cell starting with '<td' is used as is."""
    tds = "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in cells)
    return f'<tr class="{cls}">{tds}</tr>' if cls else f"<tr>{tds}</tr>"


def _num(text: str) -> str:
    return f'<td class="num">{text}</td>'


def _table(head: list[str], rows: list[str]) -> str:
    ths = "".join(f"<th>{h}</th>" for h in head)
    return f"<table>\n<thead><tr>{ths}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"


# -- header and summary ----------------------------------------------------------------------------
def header(results: dict[str, Any]) -> str:
    """Suite name, description, creation time and package versions."""
    versions = ", ".join(f"{_e(k)} {_e(v)}" for k, v in (results.get("versions") or {}).items())
    return (f"<h1>Suite: {_e(results.get('suite', '?'))}</h1>\n"
            f"<p>{_e(results.get('description') or '')}</p>\n"
            f'<p class="muted">created {_e(results.get("created", "?"))} · {versions}</p>')


SUMMARY_HEAD = ["Task", "n test", "Metric", "Value ± stderr (%)", "Best single (acc %, cost/ex)",
                "Cheapest within 1 pt (acc %, cost/ex)", "Compiled cascade (acc %, cost/ex)",
                "Promise certified on train", "Cost fraction", "Parity cost fraction",
                "Curve AUC (singles)", "Judge features won"]


def summary_table(results: dict[str, Any]) -> str:
    """One row per task, in the spirit of `tandemlm.suites.run.markdown_table`."""
    return _table(SUMMARY_HEAD, [summary_row(name, task) for name, task in results["tasks"].items()])


def summary_row(name: str, task: dict[str, Any]) -> str:
    link = f'<a href="#{_anchor(name)}">{_e(name)}</a>'
    if "error" in task:
        return _row([link, f'<td class="error" colspan="{len(SUMMARY_HEAD) - 1}">'
                           f"{_e(task['error'])}</td>"])
    metric = task.get("metric") or {}
    cells = [link, _num(_e(task.get("n_test", "—"))), _e(metric.get("name", "—")),
             _num(f"{pct(metric.get('value'))} ± {pct(metric.get('stderr'))}")]
    cascade = task.get("cascade")
    if not cascade:  # a program without a cascade has only its metric
        return _row(cells + [""] * (len(SUMMARY_HEAD) - len(cells)))
    best, near = task["best_single"], task["cheapest_within_1pt"]
    return _row(cells + [
        f"{_e(best['model'])} ({pct(best['accuracy'])}, {_cost(best['cost'])})",
        f"{_e(near['model'])} ({pct(near['accuracy'])}, {_cost(near['cost'])})",
        f"{_stages(cascade['stages'])} ({pct(cascade['accuracy'])}, {_cost(cascade['cost'])})",
        _e(promise_cell(task)),
        _num(frac(cascade.get("cost_fraction"))), _num(frac(task.get("parity_cost_fraction"))),
        _num(f"{frac(task.get('curve_auc'))} ({frac(task.get('singles_auc'))})"),
        _won(task.get("judge_features"))])


def _anchor(name: str) -> str:
    return f"task-{_e(slug(name))}"


def _stages(stages: list[str]) -> str:
    return " → ".join(_e(s) for s in stages)


def _won(judge_features: dict[str, Any] | None) -> str:
    won = (judge_features or {}).get("won") or {}
    return ", ".join(f"{_e(k)} ×{_e(v)}" for k, v in won.items()) or "—"


# -- per task --------------------------------------------------------------------------------------
def task_section(name: str, task: dict[str, Any]) -> str:
    """A task's section: its single models and cascade, the cost–quality plot, the judge features."""
    head = f'<h2 id="{_anchor(name)}">{_e(name)}</h2>'
    if "error" in task:
        trace = f"<details><summary>traceback</summary><pre>{_e(task['traceback'])}</pre></details>" \
            if task.get("traceback") else ""
        return f'{head}\n<p class="error">{_e(task["error"])}</p>\n{trace}'
    parts = [head, f"<p>{_e(task.get('description') or '')}</p>"]
    if task.get("singles"):
        parts += ["<h3>Single models and the compiled cascade</h3>", singles_table(task),
                  "<h3>Cost–quality on test</h3>",
                  f'<img alt="cost–quality plot of {_e(name)}" src="data:image/png;base64,'
                  f'{plot_png(name, task)}">']
    else:
        parts.append('<p class="muted">This program holds no cascade: only its metric is reported.</p>')
    stages = (task.get("judge_features") or {}).get("stages")
    if stages:
        parts += ["<h3>Judge features per stage</h3>", judge_table(stages)]
    return "\n".join(parts)


def singles_table(task: dict[str, Any]) -> str:
    """Every single model on test and on the calibration split, then the cascade, highlighted."""
    unit = _e(task.get("cost_unit", "usd"))
    head = ["Model", "Test accuracy (%)", f"Test cost/example ({unit})", "Train accuracy (%)",
            f"Train cost/example ({unit})"]
    rows = [_row([_e(s["model"]), _num(pct(s["accuracy"])), _num(_cost(s["cost"])),
                  _num(pct(s.get("train_accuracy"))), _num(_cost(s.get("train_cost")))])
            for s in task["singles"].values()]
    cascade = task["cascade"]
    rows.append(_row([f"cascade: {_stages(cascade['stages'])}", _num(pct(cascade["accuracy"])),
                      _num(_cost(cascade["cost"])), _num(pct(cascade.get("train_accuracy"))),
                      _num(_cost(cascade.get("train_cost")))], cls="cascade"))
    return _table(head, rows)


def judge_table(stages: dict[str, Any]) -> str:
    """Per cascade stage: the features chosen, training rows, held-out AUC per feature subset."""
    def aucs(scores: dict[str, float | None]) -> str:
        return ", ".join(f"{_e(k or '(none)')} {frac(v)}" for k, v in scores.items()) or "—"

    rows = [_row([_e(stage), _e(" + ".join(d.get("features") or []) or "(none)"),
                  _num(_e(d.get("rows", "—"))), aucs(d.get("held_out_auc") or {})])
            for stage, d in stages.items()]
    return _table(["Stage", "Chosen features", "Rows", "Held-out AUC per feature subset"], rows)


def plot_png(name: str, task: dict[str, Any]) -> str:
    """The task's cost–quality plot as base64 PNG: single models, test frontier, compiled cascade."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    curve = task.get("test_curve") or []
    ax.plot([p["cost"] for p in curve], [p["quality"] for p in curve], "-o", ms=3, color="tab:blue",
            alpha=0.7, label="test frontier (every chain and threshold)")
    for s in task["singles"].values():
        ax.scatter(s["cost"], s["accuracy"], color="grey", s=18, zorder=2)
        ax.annotate(s["model"], (s["cost"], s["accuracy"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    cascade = task["cascade"]
    ax.scatter(cascade["cost"], cascade["accuracy"], marker="*", s=200, color="red", zorder=3,
               label="compiled cascade (chosen on train)")
    _log_x(ax, [s["cost"] for s in task["singles"].values()] + [p["cost"] for p in curve])
    ax.set_xlabel(f"mean cost per example ({task.get('cost_unit', 'usd')})")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{name}: cost–quality on test")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _log_x(ax: Any, costs: list[float]) -> None:
    # A free model (cost 0) has no place on a log axis; symlog keeps it, linear below the cheapest
    # paid cost.
    positive = [c for c in costs if c > 0]
    if len(positive) == len(costs):
        ax.set_xscale("log")
    else:
        ax.set_xscale("symlog", linthresh=min(positive, default=1.0))
