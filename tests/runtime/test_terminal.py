"""`terminal.safe` and the console: text from data or artifacts is shown, never obeyed."""

from __future__ import annotations

import pytest

from tandemlm.runtime import terminal


@pytest.mark.parametrize(("text", "shown"), [
    ("gpt\x1b[31mred", "gpt\\x1b[31mred"),        # an escape sequence: recolours the terminal
    ("done\rfake", "done\\x0dfake"),               # carriage return: overwrites the line
    ("a\x07\x00\x7f\x9bb", "a\\x07\\x00\\x7f\\x9bb"),  # bell, NUL, DEL, C1 CSI
    ("abc\u202edef", "abc\\u202edef"),             # right-to-left override: reorders what follows
    ("two\nlines\tand a tab", "two\\x0alines\\x09and a tab"),
    ("café ünïcode, spaces and [brackets]", "café ünïcode, spaces and [brackets]"),
])
def test_safe_shows_control_characters_as_escapes(text, shown):
    assert terminal.safe(text) == shown


def test_safe_keeps_lines_when_asked_and_escapes_markup_when_asked():
    assert terminal.safe("a\nb\tc\x1b", lines=True) == "a\nb\tc\\x1b"
    assert terminal.safe("[bold]x\x1b[/bold]", markup=True) == "\\[bold]x\\x1b\\[/bold]"
    assert terminal.safe(ValueError("bad\x1b")) == "bad\\x1b"


def test_the_console_shows_control_characters_in_whatever_it_prints(monkeypatch):
    from rich.table import Table

    monkeypatch.setenv("COLUMNS", "100")
    console = terminal.console()
    table = Table(title="title\x1b[2J")
    table.add_column("model")
    table.add_row("gpt\x1b[31mred")
    with console.capture() as captured:
        console.print("[bold]note[/bold]: \x1b]0;retitled\x07\nsecond line")
        console.print(table)
    text = captured.get()
    assert "\x1b" not in text and "\x07" not in text
    assert "note: \\x1b]0;retitled\\x07\nsecond line" in text  # its own markup still applies
    assert "title\\x1b[2J" in text and "gpt\\x1b[31mred" in text
