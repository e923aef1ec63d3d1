"""Pass records: what lets an interrupted compile resume after its last finished pass.

Each finished pass writes `out/passes/NN-name.json`: its name and options, its report, the
pipeline state it produced (with the sha256 of the files it wrote) and two links that tie it to
this compile: `inputs`, the compile's resume key (the program, data, seed and models; see
`compile._inputs_key`), and `previous`, the sha256 of the previous pass's record as written.
With a key (`TANDEM_ARTIFACT_KEY`) the record is signed like `program.json`.

A record is used again only after the same checks as `load()`: its signature on the raw bytes
(with a key, an unsigned record is refused), strict JSON, the chain (this compile's inputs, the
record before it), the state's checksum and every file's sha256, the models against the code's,
and the types of every node's state. A record that fails any of them is not used: the pass runs
again, and the reporter says why. The final `program.json` is signed over what these checks let
through, so a key never signs a record it did not check.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tandemlm.compose import Pipeline
from tandemlm.optimizers.artifact_json import finite
from tandemlm.optimizers.artifacts import (atomic_write, parse_record, read_json, restore_state,
                                           snapshot, verify_snapshot, write_json)
from tandemlm.optimizers.passes import Pass
from tandemlm.optimizers.report import PassReport, Reporter
from tandemlm.runtime import ArtifactError, ConfigError


def start_record(out: Path, inputs: str, reporter: Reporter) -> None:
    """Keep finished passes of an interrupted compile of the same inputs; drop any other's."""
    record = out / "compile.json"
    if record.exists():
        try:
            same = read_json(record, "compile record").get("inputs") == inputs
        except ArtifactError:
            same = False
        if not same:
            reporter.note(f"{out} holds a compile of other inputs; starting over")
            for marker in (out / "passes").glob("*.json"):
                marker.unlink()
    atomic_write(record, json.dumps({"inputs": inputs}) + "\n")


@dataclass(frozen=True)
class PassRecords:
    """The pass records of one compile: `out`, its resume key `inputs`, the signing `key`."""

    out: Path
    inputs: str
    key: bytes | None

    def write(self, marker: Path, step: Pass, report: PassReport, pipeline: Pipeline,
              previous: str) -> str:
        """Record a finished pass; returns the digest the next record chains to."""
        record = {"name": step.name, "config": finite(step.config()),
                  "report": finite(report.to_dict()),
                  "inputs": self.inputs, "previous": previous,
                  "snapshot": snapshot(pipeline, self.out)}
        return hashlib.sha256(write_json(marker, record, self.key)).hexdigest()

    def resume(self, marker: Path, step: Pass, pipeline: Pipeline, previous: str,
               reporter: Reporter) -> tuple[Pipeline, PassReport, str] | None:
        """(the pipeline with the recorded state, the recorded report, this record's digest)
        when `marker` holds this very pass, finished, and passes every check; else None (the
        pass runs again). A record of a different pass (options changed) is dropped silently;
        one that fails a check is named with the reason."""
        if not marker.exists():
            return None
        try:
            raw = marker.read_bytes()
            data = parse_record(raw, marker, "pass record", self.key)
            if data.get("name") != step.name or data.get("config") != finite(step.config()):
                return None
            if data.get("inputs") != self.inputs or data.get("previous") != previous:
                raise ArtifactError(f"pass record '{marker}' does not follow from this compile's "
                                    f"inputs and the record before it (it was copied in or "
                                    f"edited)")
            verify_snapshot(data.get("snapshot"), self.out, marker)
            restored = copy.deepcopy(pipeline)  # a record failing halfway leaves `pipeline` as is
            restore_state(restored, data["snapshot"], self.out, marker)
            report = _report(data.get("report"), marker)
        except (ArtifactError, ConfigError, OSError) as exc:
            reporter.note(f"{exc}; running pass '{step.name}' again")
            return None
        return restored, report, hashlib.sha256(raw).hexdigest()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _report(data: Any, where: Path) -> PassReport:
    """The recorded `PassReport`, its fields' types checked (the reporter formats them)."""
    names = {f.name for f in fields(PassReport)}
    ok = (isinstance(data, dict) and set(data) <= names and isinstance(data.get("index"), int)
          and isinstance(data.get("name"), str) and isinstance(data.get("config"), dict)
          and all(_number(data.get(k)) for k in ("metric_before", "metric_after", "seconds"))
          and all(isinstance(data.get(k), dict)
                  and all(v is None or _number(v) for v in data[k].values())
                  for k in ("cost_before", "cost_after"))
          and isinstance(data.get("details", {}), dict))
    if not ok:
        raise ArtifactError(f"pass record '{where}': field 'report' is not a pass report this "
                            f"tandemlm wrote")
    return PassReport(**{**data, "resumed": True})
