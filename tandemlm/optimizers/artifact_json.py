"""The JSON an artifact holds (`program.json`, pass records, the compile record), read strictly.

Someone else may have written these files, so they are parsed as standard JSON and nothing
more, after their signature or checksum was checked on the raw bytes (`artifact_trust.unseal`):

- nesting deeper than `MAX_DEPTH` is refused before parsing (a scan of the bytes), so a file of
  a million `[` is an error naming it, not a `RecursionError` from the parser;
- `NaN`, `Infinity` and `-Infinity`, and numbers too large for a float (`1e999`), are refused:
  standard JSON has no such values, and a NaN threshold compares false with every score;
- a key repeated in one object is refused: a reader (or a reviewer) seeing the first value
  must not be run with the second.

    data = parse_json(path.read_bytes(), path)
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from tandemlm.runtime import ArtifactError, ConfigError

#: deepest nesting of objects and arrays accepted (an artifact's own files stay under ~15)
MAX_DEPTH = 64

# A JSON string (with its escapes), and the brackets outside strings.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


class _Refused(ValueError):
    """A value standard JSON does not have, or a repeated key."""


def nesting(raw: bytes) -> int:
    """The deepest nesting of `[`/`{` in JSON text, brackets inside strings not counted."""
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub(b"", raw)):
        depth += 1 if bracket in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"{text} is too large for a number")
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def parse_json(raw: bytes, where: str | Path) -> Any:
    """The JSON value in `raw` (UTF-8), parsed strictly (see the module docstring); raises
    `ArtifactError` naming `where` and what is wrong."""
    depth = nesting(raw)
    if depth > MAX_DEPTH:
        raise ArtifactError(f"'{where}' nests objects and arrays {depth} deep, more than the "
                            f"{MAX_DEPTH} an artifact uses; it was not written by tandemlm")
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_object,
                          parse_constant=_constant, parse_float=_float)
    except _Refused as exc:
        raise ArtifactError(f"'{where}' is not standard JSON: {exc}; it was not written by "
                            f"tandemlm") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, an over-long integer
        raise ArtifactError(f"'{where}' is not valid JSON (truncated or corrupt): {exc}") from None


def dump_json(value: Any, where: str | Path) -> str:
    """`value` as the JSON text an artifact stores at `where` (what `parse_json` reads back). A
    NaN or infinity in it is a `ConfigError`: standard JSON has none, so the state that holds
    one must say what it means (as cascade thresholds write "inf")."""
    try:
        return json.dumps(value, indent=1, allow_nan=False) + "\n"
    except ValueError as exc:
        raise ConfigError(f"cannot write '{where}': {exc} (a NaN or infinite number in the "
                          f"program's state; JSON holds finite numbers only)") from None


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None (for reports: figures such as
    an AUC that could not be measured)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
