"""An evaluation's results directory (`tandem eval --out DIR`, `evaluate(..., out=DIR)`) as one
static HTML file, in the style of the suite report: `render_eval(dir)`.

It reads `DIR/summary.json` and `DIR/results.jsonl` and shows the program, the metric ± its
standard error, failures (most common errors, and per node where the summary counts them), the
calls, tokens and cost per model, and the first examples with their outputs and scores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tandemlm.evaluate.results_dir import read_records
from tandemlm.optimizers.artifacts import atomic_write
from tandemlm.runtime import ConfigError
from tandemlm.suites.html import CSP, CSS, SCRIPT, _e, _num, _row, _table

#: how many examples the page lists
SHOWN = 50


def render_eval(results_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the HTML page of the evaluation in `results_dir` (default `DIR/report.html`)."""
    results_dir = Path(results_dir)
    summary = _summary(results_dir / "summary.json")
    records = read_records(results_dir / "results.jsonl")
    path = Path(out) if out is not None else results_dir / "report.html"
    atomic_write(path, eval_page(summary, records))
    return path


def _summary(path: Path) -> dict[str, Any]:
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path} ({exc}); it should be the summary.json that "
                          f"`tandem eval --out` writes when the evaluation finishes") from exc
    if not isinstance(summary, dict) or not isinstance(summary.get("metric"), dict):
        raise ConfigError(f"{path} is not an evaluation summary: expected an object with a "
                          f"'metric', as `tandem eval --out` writes")
    return summary


def eval_page(summary: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """The whole HTML document for one evaluation."""
    metric = summary["metric"]
    stderr = f" ± {metric['stderr']:.3f}" if metric.get("stderr") is not None else ""
    title = f"tandemlm eval: {summary.get('program', '?')}"
    rate, wall = summary.get("examples_per_s"), float(summary.get("wall_s") or 0.0)
    head = (f"<h1>{_e(title)}</h1>\n<p><b>{_e(metric.get('name', 'metric'))} = "
            f"{metric.get('mean', 0):.3f}{_e(stderr)}</b> on {_e(summary.get('n', '?'))} examples "
            f"({_e(summary.get('errors', 0))} failed) · {wall:.1f} s"
            + (f" · {rate:.2f} examples/s" if rate else "") + "</p>")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n<script>{SCRIPT}</script>\n"
            f"</head>\n<body>\n{head}\n<h2>Cost per model</h2>\n{_usage(summary)}\n"
            f"{_failures(summary)}\n<h2>Examples</h2>\n{_examples(records)}\n</body>\n</html>\n")


def _usage(summary: dict[str, Any]) -> str:
    rows = []
    for name, usage in (summary.get("usage") or {}).items():
        cost = usage.get("cost_usd")
        rows.append(_row([_e(name), _num(_e(usage.get("calls", ""))),
                          _num(_e(usage.get("tokens_in") if usage.get("tokens_in") is not None else "n/a")),
                          _num(_e(usage.get("tokens_out") if usage.get("tokens_out") is not None else "n/a")),
                          _num("—" if cost is None else f"${cost:.4f}")]))
    return _table(["Model", "Calls", "Tokens in", "Tokens out", "Cost"], rows)


def _failures(summary: dict[str, Any]) -> str:
    errors = summary.get("error_counts") or []
    if not errors:
        return "<p>No example failed.</p>"
    rows = [_row([_num(_e(e.get("count"))), _e(e.get("error"))]) for e in errors]
    out = "<h2>Failures</h2>\n" + _table(["Examples", "Error"], rows)
    per_node = summary.get("node_errors") or {}
    if per_node:
        rows = [_row([_e(node), *(_num(_e(v)) for v in counts.values())])
                for node, counts in per_node.items()]
        kinds = list(next(iter(per_node.values())).keys())
        out += "\n" + _table(["Node", *(_e(k) for k in kinds)], rows)
    return out


def _examples(records: list[dict[str, Any]]) -> str:
    if not records:
        return '<p class="muted">no per-example records (results.jsonl) in this directory</p>'
    rows = []
    for record in sorted(records, key=lambda r: r.get("index", 0))[:SHOWN]:
        outputs = json.dumps(record.get("outputs") or {}, ensure_ascii=False, default=str)
        rows.append(_row([_num(_e(record.get("index"))), _num(f"{float(record.get('score', 0)):.3g}"),
                          _e(outputs[:300]), f'<td class="error">{_e(record.get("error") or "")}</td>'],
                         "" if record.get("error") is None else "failed"))
    more = f'<p class="muted">first {SHOWN} of {len(records)} examples</p>' if len(records) > SHOWN else ""
    return _table(["#", "Score", "Outputs", "Error"], rows) + more
