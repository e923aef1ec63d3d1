"""The console tables and messages print to: rich's own on a terminal; piped (a file, a CI log),
as wide as `COLUMNS` says or 160 columns, so tables are not squeezed to rich's 80-column default
or wrapped mid-row.

Text from data and artifacts (model, node and file names, error messages) reaches the terminal
through `safe`: a name holding "\\x1b[2J" or "\\r" shows as those characters instead of clearing
the screen or overwriting the line. The console applies it to every string it prints; call
`safe(text, markup=True)` where such text goes into a rich markup string, so "[red]" in a name
is shown, not obeyed.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

#: what the terminal acts on instead of showing: C0 and C1 control characters and DEL (escape
#: sequences, carriage return, bell), Unicode's line separators and its bidirectional controls,
#: which reorder the text shown around them
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_UNSAFE_BUT_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def safe(text: object, *, markup: bool = False, lines: bool = False) -> str:
    """`text` as the terminal should show it: each control character as a visible escape
    (ESC -> "\\x1b", U+202E -> "\\u202e"), newlines and tabs too unless `lines` (text laid out
    in lines on purpose). `markup=True` also escapes rich markup, for text put into a markup
    string.

        safe("gpt\\x1b[31mred")            # 'gpt\\\\x1b[31mred'
        f"[bold]{safe(name, markup=True)}[/bold]"
    """
    shown = (_UNSAFE_BUT_LINES if lines else _UNSAFE).sub(_visible, str(text))
    return escape(shown) if markup else shown


class _SafeConsole(Console):
    """A rich console that shows control characters in the strings it prints (messages, table
    cells and titles) as escapes; its own styling is unaffected."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(safe(text, lines=True), **kwargs)


def console(stderr: bool = False) -> Console:
    """The console to print to (stdout, or stderr for progress and notes)."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return _SafeConsole(stderr=stderr)
    return _SafeConsole(stderr=stderr, width=int(os.environ.get("COLUMNS") or 0) or 160)
