"""Text files users give tandemlm (data, replay files), decoded in a named encoding, UTF-8 by
default. A byte the encoding cannot decode is a `ConfigError` naming the file, the line and the
byte, not a `UnicodeDecodeError` that names neither.

    text = read_text(Path("dev.csv"), encoding="latin-1", what="data file")
"""

from __future__ import annotations

import codecs
from pathlib import Path

from tandemlm.runtime.errors import ConfigError

#: what a decode error tells the user to do when the caller has no better advice
REENCODE = "re-encode the file as UTF-8"


def check_encoding(encoding: str) -> str:
    """The codec's canonical name ("latin-1" -> "iso8859-1"), or a `ConfigError` for a name
    Python does not know."""
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise ConfigError(f"unknown encoding '{encoding}'; give a Python codec name, e.g. utf-8, "
                          f"latin-1 or cp1252") from None


def decode(raw: bytes, path: str | Path, *, encoding: str = "utf-8", what: str = "file",
           fix: str = REENCODE) -> str:
    """`raw` decoded, or a `ConfigError`: "data file 'd.csv', line 3: byte 41 (0xe9) is not valid
    utf-8; <fix>". A UTF-8 byte-order mark (spreadsheets write one) is dropped, so it does not
    end up in the first column's name or fail the first JSON line."""
    codec = check_encoding(encoding)
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].decode(codec, errors="replace").count("\n") + 1
        raise ConfigError(f"{what} '{path}', line {line}: byte {exc.start} (0x{raw[exc.start]:02x}) "
                          f"is not valid {encoding}; {fix}") from None
    return text[1:] if codec == "utf-8" and text.startswith("\ufeff") else text


def read_text(path: Path, *, encoding: str = "utf-8", what: str = "file",
              fix: str = REENCODE) -> str:
    """The file's text, decoded as `decode` does."""
    return decode(path.read_bytes(), path, encoding=encoding, what=what, fix=fix)
