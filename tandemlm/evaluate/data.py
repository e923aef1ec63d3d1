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
