"""The results directory of `evaluate(..., out=DIR)`: records stream to `DIR/results.jsonl` as
examples finish, so an interrupted run keeps what it computed, and a re-run resumes.

Resuming keeps a record only when it was written by the same program and metric (`DIR/run.json`
holds their fingerprint) for the very same example: its index and a hash of the example, inputs
and labels (`example_key`). Examples that changed in the data are run again; when the program
(its structure, state or models) or the metric changed, every record is stale and the run starts
over. Either way a note says so. `fresh=True` (`tandem eval --fresh`) ignores the records.

When a write fails (a full disk, the directory taken away), `OutputError` says where, why, and
how many records were kept for the re-run to resume from, instead of an `OSError` traceback.

    store = ResultsDir("runs/dev", run_info(pipe, metric))
    done = store.start(examples, fresh=False, note=print)   # index -> Record already computed
    store.append(record)                                       # one line, flushed
    store.close()
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from tandemlm.compose import Pipeline
from tandemlm.compose.state import node_paths, pipeline_state
from tandemlm.evaluate.results import EvalResult, Record, example_key
from tandemlm.runtime import Model, OutputError
from tandemlm.runtime.files import atomic_write

SCHEMA = "tandemlm.eval/1"


def _plain(value: Any) -> Any:
    """JSON stand-in for what a program's state holds besides JSON values: a model by its
    configuration (test doubles' callables by type only, never by address, so the fingerprint
    is the same in the next process)."""
    if isinstance(value, Model):
        options = value.options if value.serializable else sorted(value.options)
        return {"backend": value.backend_name, "id": value.id, "adapter": value.adapter,
                "name": value.name, "price": value.price, "options": options}
    return type(value).__name__


def program_fingerprint(pipeline: Pipeline) -> str:
    """A hash of what decides a program's outputs: its nodes and their fields, its state (demos,
    instructions, thresholds) and its models."""
    nodes = {path: [type(node).__name__, list(node.input_fields), list(node.output_fields)]
             for path, node in node_paths(pipeline).items()}
    payload = {"name": pipeline.name, "nodes": nodes, "state": pipeline_state(pipeline)}
    text = json.dumps(payload, sort_keys=True, default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()


def run_info(pipeline: Pipeline, metric: Any) -> dict[str, Any]:
    """What `DIR/run.json` records about the run that wrote the records."""
    return {"schema": SCHEMA, "program": pipeline.name,
            "program_sha256": program_fingerprint(pipeline),
            "metric": getattr(metric, "__qualname__", type(metric).__name__)}


class ResultsDir:
    """`DIR/results.jsonl` (appended as examples finish), `DIR/run.json`; see the module
    docstring. `EvalResult.write` replaces both result files when the run ends."""

    def __init__(self, out: str | Path, run: dict[str, Any]) -> None:
        self.out, self.run = Path(out), run
        self.results = self.out / "results.jsonl"
        self._handle: IO[str] | None = None
        self.kept, self.total = 0, 0  # records on disk whole; examples this run is about
        self._failed = False

    def start(self, examples: list[dict[str, Any]], *, fresh: bool = False,
              note: Callable[[str], None] = lambda _: None) -> dict[int, Record]:
        """The records a previous run left for these examples (none when `fresh`), by index;
        `summary.json` is removed until this run finishes (it describes finished runs only)."""
        self.kept, self.total = 0, len(examples)
        with self._writing(self.out):
            self.out.mkdir(parents=True, exist_ok=True)
        done = {} if fresh else self._recorded(examples, note)
        self.kept = len(done)  # in the file now, and still there should rewriting it fail
        lines = "".join(json.dumps(r.to_dict(), default=str) + "\n" for _, r in sorted(done.items()))
        with self._writing(self.out):
            (self.out / "summary.json").unlink(missing_ok=True)
            atomic_write(self.results, lines)  # only what is kept: the rest runs again
            atomic_write(self.out / "run.json", json.dumps(self.run, indent=1) + "\n")
            self._handle = self.results.open("a", encoding="utf-8")
        return done

    def append(self, record: Record) -> None:
        """Write one record and flush it, so a Ctrl-C or a crash right after keeps it."""
        if self._handle is None:
            raise RuntimeError("ResultsDir.append before start()")
        with self._writing(self.results):
            self._handle.write(json.dumps(record.to_dict(), default=str) + "\n")
            self._handle.flush()
        self.kept += 1

    def sync(self) -> None:
        """Make the records written so far durable (once per batch: fsync is slow)."""
        if self._handle is not None:
            with self._writing(self.results):
                os.fsync(self._handle.fileno())

    def finish(self, result: EvalResult) -> None:
        """Replace the streamed records with the finished run's files (`EvalResult.write`)."""
        with self._writing(self.out):
            result.write(self.out)

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
        try:
            if not self._failed:  # after a failed write, its unwritten rest would only fail again
                with self._writing(self.results):
                    handle.flush()
                    os.fsync(handle.fileno())
        finally:
            with suppress(OSError):
                handle.close()

    @contextmanager
    def _writing(self, path: Path) -> Iterator[None]:
        """An `OSError` inside (ENOSPC, EACCES, ...) as an `OutputError` saying where, why, and
        what was kept: the records appended whole before it, which a re-run resumes from."""
        try:
            yield
        except OSError as exc:
            self._failed = True
            raise OutputError(self._lost(path, exc)) from exc

    def _lost(self, path: Path, exc: OSError) -> str:
        why = exc.strerror or str(exc)
        if exc.errno in errno.errorcode:
            why += f" ({errno.errorcode[exc.errno]})"
        left = self.total - self.kept
        return (f"could not write {path}: {why}; {self.kept} of {self.total} example records are "
                f"kept in {self.results}. Free some space (or fix the directory) and run the same "
                f"evaluation again with the same --out / out=: it resumes from them"
                + (f" and runs the other {left}" if left else " and writes the summary"))

    def _recorded(self, examples: list[dict[str, Any]],
                  note: Callable[[str], None]) -> dict[int, Record]:
        if not self.results.is_file():
            return {}
        previous = _read_json(self.out / "run.json")
        same = {k: v for k, v in self.run.items() if k != "schema"}
        if previous is None or any(previous.get(k) != v for k, v in same.items()):
            why = "no run.json says what wrote them" if previous is None else ", ".join(dict.fromkeys(
                k.replace("_sha256", "") for k, v in same.items() if previous.get(k) != v)) + " differs"
            note(f"{self.results} holds results of another evaluation ({why}); starting over")
            return {}
        done, stale = {}, 0
        for data in read_records(self.results):
            index = data.get("index")
            if not isinstance(index, int) or not 0 <= index < len(examples):
                continue  # beyond this run's examples (a smaller --limit)
            try:
                if data.get("key") != example_key(examples[index]):
                    raise ValueError("another example")
                done[index] = Record.from_dict(data)
            except (TypeError, ValueError, KeyError):  # changed, or written by another version
                stale += 1
        if stale:
            note(f"{stale} example(s) recorded in {self.results} differ from the data now; "
                 f"running them again")
        if done:
            note(f"resuming from {self.results}: {len(done)} of {len(examples)} examples already "
                 f"done (--fresh / fresh=True starts over)")
        return done


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a results file (none when there is no file); a line cut short by a kill
    mid-write is skipped (its example runs again)."""
    records: list[dict[str, Any]] = []
    if not path.is_file():
        return records
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict) and "example" in data and "score" in data:
                records.append(data)
    return records
