"""Datasets for evaluation: JSONL, JSON, CSV files, lists of dicts, or dspy Examples."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tandemlm.runtime import ConfigError


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{number}: each line must be a JSON object")
            rows.append(row)
    return rows


def _read_file(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ConfigError(f"data file '{path}' does not exist")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ConfigError(f"{path}: a .json data file must hold a list of objects")
        return data
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            return [dict(row) for row in csv.DictReader(handle)]
    raise ConfigError(f"data file '{path}': unknown format '{suffix}'; use .jsonl, .json or .csv")


def load_data(source: str | Path | Iterable[Any], limit: int | None = None) -> list[dict[str, Any]]:
    """Load examples as dicts from a file path or an iterable of dicts / dspy Examples."""
    if isinstance(source, str | Path):
        rows = _read_file(Path(source))
    else:
        rows = []
        for item in source:
            if hasattr(item, "toDict"):
                item = item.toDict()
            if not isinstance(item, dict):
                raise ConfigError(f"examples must be dicts or dspy.Example, got {type(item).__name__}")
            rows.append(dict(item))
    return rows[:limit] if limit is not None else rows


def describe_source(source: Any, what: str = "data") -> str:
    """How messages name a data source: "data file 'dev.jsonl'" or "the data (a list)"."""
    if isinstance(source, str | Path):
        return f"{what} file '{source}'"
    return f"the {what} (a {type(source).__name__})"


def require_examples(rows: list[dict[str, Any]], source: Any, *, what: str = "data",
                     limit: int | None = None, hint: str = "") -> list[dict[str, Any]]:
    """`rows`, or a `ConfigError` naming `source` when there are none: running on no examples
    would report a metric of 0 that measures nothing."""
    if rows:
        return rows
    if limit is not None and limit <= 0:
        raise ConfigError(f"limit={limit} leaves no examples of {describe_source(source, what)}; "
                          f"give a limit of at least 1")
    raise ConfigError(f"{describe_source(source, what)} has no examples; give at least one"
                      + (f" {hint}" if hint else ""))


def check_input_fields(rows: list[dict[str, Any]], fields: Iterable[str], source: Any,
                       program: str = "the pipeline") -> None:
    """Refuse data none of whose examples supply a field the pipeline reads (a misnamed column):
    every example would fail the same way. Single examples lacking a field still fail alone."""
    present = {key for row in rows for key in row}
    missing = [f for f in fields if f not in present]
    if not missing:
        return
    have = ", ".join(sorted(present)) or "none"
    names = ", ".join(f"'{f}'" for f in missing)
    raise ConfigError(f"{describe_source(source)} lacks the input field(s) {names} that {program} "
                      f"reads; its columns are: {have}. Rename the column(s) in the data to match, "
                      f"or evaluate a program whose inputs match")
