"""The Python examples of README.md and of every docs/*.md page run, so they never go stale; the
README's first commands are the ones CI runs; every relative link points to a file that exists."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]

# A block is shown but not run only when the line right before its opening fence says why.
NOT_RUN = re.compile(r"<!-- not run: (?P<reason>\S.*?) -->")
FENCE = re.compile(r"^```(?P<lang>\S*)\s*$")


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """(line of the opening fence, code, reason it is not run or None) for each ```python block."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise AssertionError(f"line {i + 1}: a code fence that never closes")
        if opening["lang"] == "python":
            marker = NOT_RUN.fullmatch(lines[i - 1].strip()) if i else None
            blocks.append((i + 1, "\n".join(lines[i + 1:end]) + "\n",
                           marker["reason"] if marker else None))
        i = end + 1
    return blocks


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_python_examples_run(page, tmp_path, monkeypatch):
    """A page's blocks run in order in one fresh namespace, as a reader would paste them into
    one session, from a directory of their own (so whatever they write lands there)."""
    text = page.read_text()
    for line, marker in ((n + 1, m) for n, m in enumerate(text.splitlines()) if "<!-- not run" in m):
        following = text.splitlines()[line] if line < len(text.splitlines()) else ""
        assert NOT_RUN.fullmatch(marker.strip()) and following.startswith("```python"), (
            f"{_name(page)}:{line}: write `<!-- not run: REASON -->` on the line right before a "
            f"```python fence")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    for line, code, reason in python_blocks(text):
        if reason is None:
            exec(compile(code, f"{_name(page)}:{line}", "exec"), namespace)


def test_readme_carries_runnable_examples():
    runnable = [b for b in python_blocks(README) if b[2] is None]
    assert len(runnable) >= 2, "the README should carry runnable Python examples"


def test_not_run_marker_is_read():
    """The convention the page test relies on: a marker skips its block, and only its block."""
    text = ("```python\nx = 1\n```\n\n<!-- not run: needs a GPU -->\n```python\ny = 2\n```\n\n"
            "<!-- not run: needs a GPU -->\n\n```python\nz = 3\n```\n")
    assert [(code, reason) for _, code, reason in python_blocks(text)] == [
        ("x = 1\n", None), ("y = 2\n", "needs a GPU"), ("z = 3\n", None)]


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _outside_code(text: str) -> str:
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_point_to_files(page):
    missing = []
    for target in LINK.findall(_outside_code(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor on the same page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            missing.append(target)
    assert not missing, f"{_name(page)} links to files that do not exist: {missing}"


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    main_job, tests = commands[0], commands[1]
    assert "tandem " in main_job and "torch==2.13.0" in main_job
    assert tests.strip() in (ROOT / ".ci" / "run").read_text()
