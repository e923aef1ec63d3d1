"""Data files for the CLI tests: question/answer rows whose answer is the question shouted."""

from __future__ import annotations

import json


def rows(path, questions):
    path.write_text("".join(json.dumps({"question": q, "answer": q.upper()}) + "\n"
                            for q in questions))
    return str(path)
