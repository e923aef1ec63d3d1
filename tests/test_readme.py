"""The README's Python examples run, so they never go stale; its first commands are the ones
CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_python_examples_run():
    """Blocks run in order in one namespace, as a reader would paste them into one session;
    blocks naming placeholder paths (/path/to/...) are shown, not run."""
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    runnable = [b for b in blocks if "/path/to/" not in b]
    assert len(runnable) >= 3, "the README should carry runnable Python examples"
    namespace: dict = {}
    for block in runnable:
        exec(compile(block, "README.md", "exec"), namespace)


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    main_job, tests = commands[0], commands[1]
    assert "tandem " in main_job and "torch==2.13.0" in main_job
    assert tests.strip() in (ROOT / ".ci" / "run").read_text()
