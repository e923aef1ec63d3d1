"""The grammar of an LM node's output: its adapter's format with each output field's type.

An engine that constrains decoding (`supports_constrained`) can then only produce text the node
parses, which is what makes a 135M model's output usable at all. The grammar follows the
adapter's own format exactly, so prompts, demos and fine-tuning rows stay DSPy's:

- ChatAdapter and its subclasses that keep its format (CompactChatAdapter): the fields in order,
  `[[ ## field ## ]]` then the value, blocks joined by a blank line, then `[[ ## completed ## ]]`
  (what `format_assistant_message_content` writes, which is what demos show the model).
- JSONAdapter: a JSON object with exactly the output fields (a JSON schema).
- Any other adapter (XMLAdapter, TwoStepAdapter, a custom one): no grammar (`None`).

A value is constrained by its field's type:

    str              lines of text: no blank line, no line starting with whitespace or "[",
                     no "[[" (the next marker's start)
    Literal[...]     exactly one of the options, as ChatAdapter writes them (unquoted)
    Enum             one of its members' values
    bool             True / False / true / false
    int, float       a number
    anything else    JSON matching the type's JSON schema (lists, dicts, pydantic models)

`Optional[X]` is constrained as X (the model cannot answer None). The whole ChatAdapter output is
one Lark grammar for llguidance: the fixed markers and every regex-typed value merge into a few
regex terminals, and each JSON-typed value is a `%json` rule between them.

    output_constraint(ChatAdapter(), dspy.Signature("question -> verdict: Literal['yes', 'no']"))
"""

from __future__ import annotations

import enum
import inspect
import json
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from dspy.adapters import Adapter, ChatAdapter, JSONAdapter
from pydantic import TypeAdapter

from tandemlm.runtime import ConfigError, Constraint

# A str value: lines of text, none empty, none starting with whitespace or "[", and no "[["
# anywhere. A blank line can therefore only be the separator before the next marker: a small
# model that ends its value the way demos do ("\n\n" and a bracket) is steered into the marker,
# instead of rambling on in a value that never closes.
_LINE = r"[^\[\s](?:[^\[\n]|\[[^\[\n])*"
_TEXT = f"{_LINE}(?:\\n{_LINE})*"
_INT = r"-?(?:0|[1-9][0-9]{0,17})"
_FLOAT = r"-?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]{1,17})?(?:[eE][-+]?[0-9]{1,3})?"
_BOOL = r"(?:True|False|true|false)"
# JSON values laid out as DSPy writes them (json.dumps: ", " and ": ", no newlines): llguidance
# otherwise lets whitespace run free, and a small model fills it with blank lines.
_JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def output_constraint(adapter: Adapter, signature: Any) -> Constraint | None:
    """The grammar of `signature`'s outputs as `adapter` formats them, or None when the adapter's
    format is not one this module knows."""
    fields = signature.output_fields
    if isinstance(adapter, JSONAdapter):
        return Constraint("json_schema", json.dumps(_object_schema(fields)))
    if not isinstance(adapter, ChatAdapter) or not _keeps_chat_format(adapter):
        return None  # e.g. XMLAdapter: a ChatAdapter with its own format and parse
    pieces: list[tuple[str, str]] = []  # ("regex", pattern) or ("json", schema text)
    for i, (name, info) in enumerate(fields.items()):
        pieces.append(("regex", _escape(("\n\n" if i else "") + f"[[ ## {name} ## ]]\n")))
        pieces.append(_value_piece(info.annotation, info.metadata))
    end = "\n\n[[ ## completed ## ]]"
    pieces.append(("regex", _escape(end)))
    return Constraint("lark", _lark(pieces), close=end)


def _escape(text: str) -> str:
    """`text` as a Rust regex matching it literally (Python's re.escape may emit escapes Rust
    rejects, and a raw newline would end the Lark terminal)."""
    return "".join("\\n" if c == "\n" else "\\t" if c == "\t" else "\\r" if c == "\r"
                   else "\\" + c if c in _META else c for c in text)


_META = set("\\.+*?()|[]{}^$#&-~/")


def _keeps_chat_format(adapter: ChatAdapter) -> bool:
    """True when the adapter writes and parses ChatAdapter's markers: ChatAdapter itself, or a
    subclass that changes only the prompt's wording (not `parse` or the field formatting)."""
    cls = type(adapter)  # DSPy wraps each subclass's `parse` (callbacks): compare what is wrapped
    return all(inspect.unwrap(getattr(cls, name)) is inspect.unwrap(getattr(ChatAdapter, name))
               for name in ("parse", "format_field_with_value", "format_assistant_message_content"))


def _value_piece(annotation: Any, metadata: list[Any] = ()) -> tuple[str, str]:
    """The grammar of one value. `metadata`: the field's constraints pydantic keeps apart from
    its type (e.g. a list's `Field(min_length=1)`); the JSON schema of a value holds them."""
    annotation = _strip_optional(annotation)
    if annotation is str or annotation is Any:
        return ("regex", _TEXT)
    if get_origin(annotation) is Literal:
        options = [o.value if isinstance(o, enum.Enum) else o for o in get_args(annotation)]
        return ("regex", "(?:" + "|".join(_escape(str(o)) for o in options) + ")")
    if isinstance(annotation, enum.EnumMeta):
        return ("regex", "(?:" + "|".join(_escape(str(m.value)) for m in annotation) + ")")
    if annotation is bool:
        return ("regex", _BOOL)
    if annotation is int:
        return ("regex", _INT)
    if annotation is float:
        return ("regex", _FLOAT)
    return ("json", json.dumps({**_schema(_constrained(annotation, metadata)),
                                "x-guidance": _JSON_LAYOUT}))


def _constrained(annotation: Any, metadata: list[Any]) -> Any:
    """`annotation` with the field's constraints pydantic keeps apart from it, for its schema."""
    return Annotated[(annotation, *metadata)] if metadata else annotation


def _strip_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _schema(annotation: Any) -> dict[str, Any]:
    try:
        return TypeAdapter(annotation).json_schema()
    except Exception as exc:
        raise ConfigError(f"cannot build a grammar for output type {annotation!r} (no JSON schema: "
                          f"{exc}); give the field a JSON-serialisable type or set "
                          f"constrained=False on the node") from None


def _object_schema(fields: dict[str, Any]) -> dict[str, Any]:
    """JSONAdapter's output: an object with exactly these fields, in order, all required."""
    properties, defs = {}, {}
    for name, info in fields.items():
        schema = _schema(_constrained(_strip_optional(info.annotation), info.metadata))
        defs.update(schema.pop("$defs", {}))
        properties[name] = schema
    out: dict[str, Any] = {"type": "object", "properties": properties, "required": list(fields),
                           "additionalProperties": False}
    if defs:
        out["$defs"] = defs
    return out


def _lark(pieces: list[tuple[str, str]]) -> str:
    """A Lark grammar: runs of regex pieces become one terminal each (a single regex has no
    lexing ambiguity between a free-text value and the marker after it); JSON pieces become
    `%json` rules."""
    items: list[str] = []
    terminals: list[str] = []
    rules: list[str] = []
    run: list[str] = []

    def close_run() -> None:
        if run:
            name = f"T{len(terminals)}"
            terminals.append(f"{name}: /{''.join(run)}/")
            items.append(name)
            run.clear()

    for kind, text in pieces:
        if kind == "regex":
            run.append(text)
        else:
            close_run()
            name = f"json{len(rules)}"
            rules.append(f"{name}: %json {text}")
            items.append(name)
    close_run()
    return "\n".join([f"start: {' '.join(items)}", *rules, *terminals]) + "\n"
