"""Loading user code named on the command line: `module.path:NAME` or `file.py:NAME`, and for a
program also a call with literal keyword arguments, `module.path:build(size=3, data='x.jsonl')`."""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import inspect
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from tandemlm.compose import Pipeline
from tandemlm.evaluate.metrics import Metric, check_metric
from tandemlm.runtime import ConfigError


def load_object(spec: str, what: str = "object") -> Any:
    """Load `module.path:NAME` or `path/to/file.py:NAME`."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(f"{what} '{spec}' must look like MODULE:NAME or FILE.py:NAME")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ConfigError(f"{what} file '{target}' does not exist")
        module_name = f"_tandem_user_{path.stem}_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(module_name)
        if module is None:
            spec_ = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec_)
            sys.modules[module_name] = module
            spec_.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ConfigError(f"cannot import module '{target}' for {what} '{spec}': {exc}") from None
    if not hasattr(module, attr):
        raise ConfigError(f"{what} '{spec}': '{target}' has no attribute '{attr}'")
    return getattr(module, attr)


def load_metric(spec: str) -> Metric:
    """Load the metric named by `spec` (`module:FN` or `file.py:FN`), refusing what cannot be
    one (a Pipeline, a non-callable, a function of the wrong arity) before anything runs."""
    return check_metric(load_object(spec, "metric"), spec)


def literal_keywords(spec: str, args: str, what: str) -> dict[str, Any]:
    """`k=4, nodes=['a']` -> {"k": 4, "nodes": ["a"]}: keyword arguments, literals only (read with
    `ast.literal_eval`, never run as code)."""
    try:
        call = ast.parse(f"_({args})", mode="eval").body
    except SyntaxError as exc:
        raise ConfigError(f"{what} '{spec}' is not valid: {exc.msg}; write it like "
                          f"Name(option=4, names=['a'])") from None
    if not isinstance(call, ast.Call) or call.args or any(kw.arg is None for kw in call.keywords):
        raise ConfigError(f"{what} '{spec}': give options as keyword arguments, like Name(k=4)")
    options = {}
    for kw in call.keywords:
        try:
            options[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, SyntaxError, TypeError):
            raise ConfigError(f"{what} '{spec}': option {kw.arg}={ast.unparse(kw.value)} is not "
                              f"a literal; options take numbers, strings, lists, dicts, True, "
                              f"False or None") from None
    return options


_CALL = re.compile(r"^\s*(?P<target>[^()]+?)\s*(?:\((?P<args>.*)\))?\s*$", re.S)


def load_program(spec: str) -> Pipeline:
    """Load a `Pipeline` named by `spec`: a Pipeline object, a zero-argument function returning
    one, or such a function called with literal keyword arguments (`module:build(n=3)`)."""
    match = _CALL.match(spec)
    if match is None:
        raise ConfigError(f"program '{spec}' must look like MODULE:NAME, FILE.py:NAME or "
                          f"MODULE:FUNCTION(option=literal, ...)")
    obj = load_object(match["target"], "program")
    if match["args"] is not None:
        if not callable(obj) or isinstance(obj, Pipeline):
            raise ConfigError(f"program '{spec}': '{match['target']}' is not a function to call")
        obj = _build(spec, obj, literal_keywords(spec, match["args"], "program"))
    elif callable(obj) and not isinstance(obj, Pipeline):
        obj = _build(spec, obj, {})
    if not isinstance(obj, Pipeline):
        raise ConfigError(f"program '{spec}' is a {type(obj).__name__}, not a tandemlm Pipeline")
    return obj


def _build(spec: str, builder: Any, options: dict[str, Any]) -> Any:
    """Call a program builder with `options`, checked against its signature first: a typo in
    a keyword names the parameters it accepts, while a TypeError the builder itself raises
    (a bug inside it) stays that error, with its traceback."""
    name = getattr(builder, "__name__", type(builder).__name__)
    try:
        signature = inspect.signature(builder)
    except (TypeError, ValueError):
        signature = None  # no signature to check against (a builtin): the call tells
    if signature is not None:
        try:
            signature.bind(**options)
        except TypeError as exc:
            raise ConfigError(_call_error(spec, name, signature, options, exc)) from None
    built = builder(**options)
    if not isinstance(built, Pipeline):
        raise ConfigError(f"program '{spec}': {name}() returned a {type(built).__name__}, not a "
                          f"tandemlm Pipeline; make it return the Pipeline it builds")
    return built


def _call_error(spec: str, name: str, signature: inspect.Signature, options: dict[str, Any],
                exc: TypeError) -> str:
    params = signature.parameters.values()
    accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes = f"{name}() accepts: {', '.join(accepted)}" if accepted else f"{name}() takes no options"
    unknown = [k for k in options if k not in accepted]
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in params):
        hints = [f"'{k}'" + (f" (did you mean '{close[0]}'?)" if close else "")
                 for k in unknown for close in [difflib.get_close_matches(k, accepted, n=1)]]
        return f"program '{spec}': unknown option(s) {', '.join(hints)}; {takes}"
    required = [p.name for p in params if p.default is p.empty and p.name not in options
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if required:
        example = ", ".join(f"{r}=..." for r in required)
        return (f"program '{spec}': {name}() needs option(s) {', '.join(required)}; give them "
                f"like {spec.split('(')[0].strip()}({example}) ({takes})")
    return f"program '{spec}': {name}() cannot be called with these options ({exc}); {takes}"


def packaged_data(name: str) -> Path:
    """Path of a data file shipped inside the package (see tandemlm/data/README.md)."""
    path = Path(str(resources.files("tandemlm") / "data" / name))
    if not path.is_file():
        raise ConfigError(f"no packaged data file named '{name}'")
    return path
