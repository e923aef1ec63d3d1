"""Datasets for evaluation: JSONL, JSON, CSV files, lists of dicts, or dspy Examples."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tandemlm.runtime import ConfigError
from tandemlm.runtime.text_files import read_text


#: what a data file that does not decode should become
_FIX = ("re-encode the file as UTF-8, or give its encoding (e.g. --encoding latin-1 on tandem "
        "eval/compile, encoding='latin-1' in Python)")


def _parse_jsonl(path: Path, text: str) -> list[dict[str, Any]]:
    rows = []
    # newline=None splits lines as open() would (at \n, \r\n or \r), and not at the U+2028 a JSON
    # string may hold, as str.splitlines() would
    for number, line in enumerate(io.StringIO(text, newline=None), start=1):
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


def _parse_json(path: Path, text: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ConfigError(f"{path}: a .json data file must hold a list of objects")
    return data


def _parse_csv(path: Path, text: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        return [dict(row) for row in reader]
    except csv.Error as exc:  # a NUL byte, a field over csv's size limit, a quote left open
        raise ConfigError(f"{path}:{reader.reader.line_num}: not valid CSV ({exc})") from None


_PARSERS = {".jsonl": _parse_jsonl, ".json": _parse_json, ".csv": _parse_csv}


def _read_file(path: Path, encoding: str) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ConfigError(f"data file '{path}' does not exist")
    parse = _PARSERS.get(path.suffix.lower())
    if parse is None:
        raise ConfigError(f"data file '{path}': unknown format '{path.suffix.lower()}'; use "
                          f".jsonl, .json or .csv")
    return parse(path, read_text(path, encoding=encoding, what="data file", fix=_FIX))


def load_data(source: str | Path | Iterable[Any], limit: int | None = None, *,
              encoding: str = "utf-8") -> list[dict[str, Any]]:
    """Load examples as dicts from a file path or an iterable of dicts / dspy Examples.

    A file is read in `encoding` (UTF-8 by default); a byte it cannot decode, a line that is not
    JSON, or a row CSV cannot parse is a `ConfigError` naming the file and the line."""
    if isinstance(source, str | Path):
        rows = _read_file(Path(source), encoding)
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
