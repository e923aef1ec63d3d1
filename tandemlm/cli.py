"""The `tandem` command. Commands parse options and call library functions; no logic here."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from typer.core import TyperCommand, TyperGroup

# Only light modules at the top: `tandem --help` must not wait for DSPy, torch or transformers;
# each command imports what it runs.
from tandemlm.runtime import TandemError, terminal


def _as_flags(params: list) -> list:
    """Show flags as flags: typer's help gives every option a type column, and a flag such as
    `--list` or `--help` would read `--list <bool>`, as if it took a value."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _Command(TyperCommand):
    def get_params(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        return _as_flags(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        return _as_flags(super().get_params(ctx))


class _Typer(typer.Typer):
    def command(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        return super().command(*args, cls=kwargs.pop("cls", _Command), **kwargs)


app = _Typer(help="tandemlm: compile and evaluate LM pipelines in which small models help "
                  "large ones.", no_args_is_help=True, add_completion=False, cls=_Group)
console = terminal.console()


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"tandemlm {version('tandemlm')}")
        raise typer.Exit()


@app.callback()
def main(
    show_version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                      help="print tandemlm's version and exit"),
) -> None:
    """tandemlm: compile and evaluate LM pipelines in which small models help large ones."""


def _fail(exc: Exception) -> None:
    """The error as one line (its text may come from data or an artifact: shown, not obeyed as
    markup or control characters), and exit 2."""
    console.print(f"[bold red]error:[/] {terminal.safe(exc, markup=True)}", soft_wrap=True)
    raise typer.Exit(code=2)


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="where the compiled program, the "
                                                              "results and the plot go"),
) -> None:
    """Compile a FrugalGPT cascade over real recorded API answers (OVERRULING) and compare it
    with every single model: accuracy and cost on the held-out half."""
    from tandemlm.suites.demo import print_report, run_demo

    try:
        report = run_demo(out)
    except TandemError as exc:
        _fail(exc)
    print_report(report, out, console)


@app.command("suite")
def suite_command(
    suite: str = typer.Argument(..., help="a built-in suite (replay, overruling), MODULE:FUNCTION "
                                          "or a .toml/.yaml suite file"),
    tasks: list[str] = typer.Option([], "--tasks", help="run only these tasks (repeatable, or "
                                                        "comma-separated)"),
    out: Path = typer.Option(None, "--out", help="results directory (default runs/suite-NAME); "
                                                 "a re-run resumes each task's compile"),
    data: Path | None = typer.Option(None, "--data", help="the suite's data directory (replay: a "
                                                          "directory of replay .jsonl files)"),
    labels: int | None = typer.Option(None, "--labels", help="replay: keep the labels of this "
                                      "many train rows per task; the rest become unlabeled inputs"),
    list_tasks: bool = typer.Option(False, "--list", help="list the suite's tasks and exit"),
) -> None:
    """Compile and evaluate every task of a suite: results.json, per-example JSONL, a table."""
    from tandemlm.suites.run import print_results, run_suite, slug
    from tandemlm.suites.suite import load_suite

    names = [n.strip() for item in tasks for n in item.split(",") if n.strip()]
    options = {**({"data": str(data)} if data is not None else {}),
               **({"labels": labels} if labels is not None else {})}
    try:
        loaded = load_suite(suite, **options)
        if list_tasks:
            for name in loaded.names():
                console.print(name, markup=False)
            return
        out = out or Path("runs") / f"suite-{slug(loaded.name)}"
        results = run_suite(loaded, out, tasks=names or None, console=console)
    except TandemError as exc:
        _fail(exc)
    print_results(results, console)
    console.print(f"results: {out}/results.json (table: {out}/results.md, per task: "
                  f"{out}/TASK/eval/results.jsonl); HTML report: `tandem report {out}`", markup=False)
    if any("error" in t for t in results["tasks"].values()):
        raise typer.Exit(code=1)


@app.command("report")
def report_command(
    results: Path = typer.Argument(..., help="a directory written by `tandem suite`, `tandem demo` "
                                             "or `tandem eval --out`"),
    out: Path | None = typer.Option(None, "--out", help="the HTML file (default DIR/report.html)"),
) -> None:
    """Render a run's results (a suite's, the demo's or an evaluation's) as one static HTML file."""
    from tandemlm.suites.html import render_report

    try:
        path = render_report(results, out)
    except TandemError as exc:
        _fail(exc)
    console.print(f"report written to {path}", markup=False)


def _not_written(exc: OSError, out: Path) -> TandemError:
    """An OSError of a compile as one line: the file, the system's reason, and that the passes
    that finished are kept in OUT/passes, so the same command resumes after them."""
    import errno

    from tandemlm.runtime.errors import OutputError

    code = f" ({errno.errorcode[exc.errno]})" if exc.errno in errno.errorcode else ""
    return OutputError(f"could not write {exc.filename or out}: {exc.strerror or exc}{code}; the "
                       f"passes that finished are kept in {out}/passes: free the space (or fix "
                       f"the permission) and run the same command again to resume after them")


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def _ask_to_run(source: str) -> bool:
    """On a terminal, whether the user wants to run the source an artifact names."""
    return _interactive() and typer.confirm(f"the artifact was compiled from program "
                                            f"'{terminal.safe(source)}'; import and run that code?",
                                            default=False)


_ENCODING_HELP = "the text encoding of the data files, e.g. latin-1 or cp1252"

_TRUST_HELP = ("for a bare artifact DIR: run the program source its program.json records "
               "(default: refuse; name the code instead, DIR@PROGRAM)")


def _named(spec: str, what: str) -> tuple[str, str]:
    name, sep, value = spec.partition("=")
    if not sep or not name or not value:
        raise TandemError(f"{what} '{spec}' must look like NAME=VALUE")
    return name, value


@app.command("serve")
def serve_command(
    model: list[str] = typer.Option([], "--model", help="NAME=BACKEND:ID, e.g. tiny=hf:./my-model "
                                                        "(repeatable)"),
    program: list[str] = typer.Option([], "--program", help="NAME=PROGRAM.py:NAME, or a compiled "
                                                            "artifact loaded onto its code, "
                                                            "NAME=DIR@PROGRAM.py:NAME (repeatable)"),
    trust_source: bool = typer.Option(False, "--trust-source", help=_TRUST_HELP),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on; the default, a "
                                                         "loopback address, is reachable from this "
                                                         "machine only"),
    port: int = typer.Option(8000, "--port", help="TCP port to listen on"),
    window_ms: float = typer.Option(10.0, "--window-ms", help="how long a request waits for others "
                                                              "to share its batch"),
    max_batch: int = typer.Option(64, "--max-batch", min=1, help="most requests run in one backend "
                                                                 "batch"),
    api_key_env: str | None = typer.Option(None, "--api-key-env", metavar="VAR",
                                           help="require 'Authorization: Bearer <key>' on every /v1 "
                                                "route, the key read from environment variable VAR "
                                                "(the key itself is never an option)"),
    max_body_bytes: int = typer.Option(1_000_000, "--max-body-bytes", min=1,
                                       help="largest request body accepted (413 beyond)"),
    max_n: int = typer.Option(16, "--max-n", min=1, help="most choices ('n') one request may ask "
                                                         "for (400 beyond)"),
    max_tokens: int = typer.Option(16_384, "--max-tokens", min=1, help="largest 'max_tokens' a "
                                                                      "request may ask for (400 "
                                                                      "beyond)"),
) -> None:
    """Serve models and compiled pipelines behind OpenAI-compatible endpoints (micro-batched)."""
    from tandemlm.optimizers.specs import load_any_program
    from tandemlm.runtime import Model
    from tandemlm.serve import api_key_from_env, create_app, exposure_warning

    try:
        api_key = api_key_from_env(api_key_env) if api_key_env is not None else None
        models = {}
        for spec in model:
            name, target = _named(spec, "--model")
            backend, sep, model_id = target.partition(":")
            if not sep:
                raise TandemError(f"--model '{spec}': give BACKEND:ID, e.g. {name}=hf:./my-model")
            models[name] = Model(backend, model_id, name=name)
        programs = {name: load_any_program(target, trust_source=trust_source, confirm=_ask_to_run)
                    for name, target in (_named(spec, "--program") for spec in program)}
        server = create_app(models, programs, window_s=window_ms / 1000, max_batch=max_batch,
                            api_key=api_key, max_body_bytes=max_body_bytes, max_n=max_n,
                            max_tokens=max_tokens)
    except TandemError as exc:
        _fail(exc)
    import uvicorn

    warning = exposure_warning(host, api_key)
    if warning:
        console.print(f"[bold yellow]warning:[/] {warning}")
    console.print(f"serving {', '.join([*models, *programs])} at http://{host}:{port}/v1", markup=False)
    uvicorn.run(server, host=host, port=port, log_level="warning")


@app.command("eval")
def eval_command(
    program: str = typer.Argument(..., help="PROGRAM.py:NAME or module:NAME of a Pipeline, or a "
                                            "compiled artifact loaded onto its code: "
                                            "DIR@PROGRAM.py:NAME"),
    data: Path = typer.Option(..., "--data", help="examples: .jsonl, .json or .csv"),
    metric: str = typer.Option(..., "--metric", help="MODULE:FN or FILE.py:FN"),
    limit: int | None = typer.Option(None, "--limit", help="evaluate the first N examples"),
    out: Path | None = typer.Option(None, "--out", help="write results.jsonl and summary.json"),
    batch_size: int = typer.Option(64, "--batch-size", help="examples per executor batch"),
    max_errors: int | None = typer.Option(None, "--max-errors", help="abort after N failures"),
    trust_source: bool = typer.Option(False, "--trust-source", help=_TRUST_HELP),
    fresh: bool = typer.Option(False, "--fresh", help="with --out: ignore the records there and "
                                                      "run every example again (default: resume)"),
    encoding: str = typer.Option("utf-8", "--encoding", help=_ENCODING_HELP),
) -> None:
    """Evaluate a program: quality and cost per model. Exits 1 when more than half of the
    examples failed, 130 when interrupted (a re-run with the same --out resumes)."""
    from tandemlm.evaluate import EvaluationInterrupted, evaluate, load_metric
    from tandemlm.optimizers.specs import load_any_program

    try:
        pipeline = load_any_program(program, trust_source=trust_source, confirm=_ask_to_run)
        result = evaluate(pipeline, data, load_metric(metric), limit=limit, out=out,
                          batch_size=batch_size, max_errors=max_errors, fresh=fresh,
                          encoding=encoding, warn=False)  # the failure is printed below, and exits 1
    except TandemError as exc:
        _fail(exc)
    except EvaluationInterrupted as exc:
        console.print(str(exc), style="bold yellow", markup=False, soft_wrap=True)
        raise typer.Exit(code=130) from None
    result.print(console)
    if out is not None:
        console.print(f"results written to {out}/results.jsonl and {out}/summary.json",
                      markup=False)
    failure = result.failure()
    if failure is not None:
        console.print(f"[bold red]error:[/] {failure} (most common errors above); the score "
                      f"measures those failures, not the program", soft_wrap=True)
        raise typer.Exit(code=1)


@app.command("compile")
def compile_command(
    program: str = typer.Argument(..., help="PROGRAM.py:NAME or module:NAME of a Pipeline, or a "
                                            "compiled artifact loaded onto its code to compile "
                                            "further: DIR@PROGRAM.py:NAME"),
    train: Path = typer.Option(..., "--train", help="training examples: .jsonl, .json or .csv"),
    metric: str = typer.Option(..., "--metric", help="MODULE:FN or FILE.py:FN"),
    out: Path = typer.Option(..., "--out", help="artifact directory (a rerun resumes there)"),
    val: Path | None = typer.Option(None, "--val", help="validation examples: passes select on "
                                                        "them and the report measures on them"),
    unlabeled: Path | None = typer.Option(None, "--unlabeled", help="inputs without labels "
                                          "(.jsonl, .json or .csv): Calibrate(epsilon=...) "
                                          "certifies against agreement with the reference on them"),
    passes: list[str] = typer.Option(["BootstrapDemos"], "--passes",
                                     help="a pass spec, repeatable, run in order: Name, "
                                          "Name(option=literal, ...) or MODULE:Class"),
    seed: int = typer.Option(0, "--seed", help="seeds every pass's randomness"),
    batch_size: int = typer.Option(64, "--batch-size", help="examples per executor batch"),
    no_cache: bool = typer.Option(False, "--no-cache", help="do not keep model calls in "
                                                            "OUT/calls.sqlite (memory only)"),
    trust_source: bool = typer.Option(False, "--trust-source", help=_TRUST_HELP),
    encoding: str = typer.Option("utf-8", "--encoding", help=_ENCODING_HELP),
) -> None:
    """Compile a program: run passes over its traces and write a loadable artifact."""
    from tandemlm.evaluate import load_metric
    from tandemlm.optimizers import RichReporter, compile
    from tandemlm.optimizers.report import report_table
    from tandemlm.optimizers.specs import load_any_program, parse_passes, spec_source

    try:
        steps = parse_passes(passes)
        pipeline = load_any_program(program, trust_source=trust_source, confirm=_ask_to_run)
        compiled = compile(pipeline, train, load_metric(metric),
                           passes=steps, valset=val, unlabeled=unlabeled, out_dir=out,
                           source=spec_source(program), seed=seed, batch_size=batch_size,
                           reporter=RichReporter(console), cache=not no_cache, encoding=encoding)
    except TandemError as exc:
        _fail(exc)
    except OSError as exc:  # a full disk, a read-only --out: what was kept, and how to go on
        _fail(_not_written(exc, out))
    console.print(report_table(compiled.compile_report, "val" if val is not None else "train"))
    for step in compiled.compile_report:
        for path, figures in step.details.items():
            if isinstance(figures, dict) and "promise" in figures:
                console.print(f"{path}: {figures['promise']['statement']}", markup=False,
                              soft_wrap=True)
    code = spec_source(program) or program
    console.print(f"compiled program written to {out}/program.json (report: {out}/report.json); "
                  f"evaluate it with `tandem eval {out}@{code} --data FILE --metric {metric}`",
                  markup=False)


@app.command("graph")
def graph_command(
    program: str = typer.Argument(..., help="PROGRAM.py:NAME or module:NAME of a Pipeline, or a "
                                            "compiled artifact loaded onto its code: "
                                            "DIR@PROGRAM.py:NAME"),
    out: Path | None = typer.Option(None, "--out", help="write it to a file instead: .html (a page "
                                                        "that renders it), .png, .mmd or .md"),
    trust_source: bool = typer.Option(False, "--trust-source", help=_TRUST_HELP),
) -> None:
    """Print a program's graph as a Mermaid flowchart (composites drawn with their insides)."""
    from tandemlm.compose.graph_files import write_graph
    from tandemlm.optimizers.specs import load_any_program

    try:
        pipeline = load_any_program(program, trust_source=trust_source, confirm=_ask_to_run)
        if out is not None:
            console.print(f"graph written to {write_graph(pipeline, out)}", markup=False)
            return
    except TandemError as exc:
        _fail(exc)
    print(pipeline.to_mermaid())


if __name__ == "__main__":
    app()
