"""How long the front door takes to open: `tandem --help`, `import tandemlm`, and what a pipeline
needs (`from tandemlm import Pipeline, Model`), each against `import dspy` in the same run.

Every figure is the median wall time of `--repeats` fresh interpreters, in interleaved rounds
after one that warms the OS file cache. Prints one line per command and their ratios; the last line is one JSON object.

    python benchmarks/startup.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python (bare interpreter)": [sys.executable, "-c", "pass"],
    "import dspy": [sys.executable, "-c", "import dspy"],
    "import tandemlm": [sys.executable, "-c", "import tandemlm"],
    "from tandemlm import Pipeline, Model": [sys.executable, "-c",
                                             "from tandemlm import Pipeline, Model"],
    "tandem --help": [shutil.which("tandem") or "tandem", "--help"],
    "tandem eval --help": [shutil.which("tandem") or "tandem", "eval", "--help"],
}


def _wall_s(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def measure(repeats: int) -> dict[str, float]:
    """Median seconds per command over `repeats` interleaved rounds (so a load that comes and
    goes hits every command alike), after one round that warms the file cache."""
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for round_ in range(repeats + 1):
        for name, command in COMMANDS.items():
            seconds = _wall_s(command)
            if round_:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="fresh interpreters per command")
    args = parser.parse_args()
    if shutil.which("tandem") is None:
        sys.exit("the `tandem` command is not on PATH: install the package (pip install -e .) "
                 "in the environment you run this from")
    figures = measure(args.repeats)
    dspy_s = figures["import dspy"]
    for name, seconds in figures.items():
        print(f"{name:<40} {seconds:6.2f} s   ({seconds / dspy_s:4.2f}x import dspy)")
    print(json.dumps({"repeats": args.repeats, "seconds": figures,
                      "tandem_help_s": figures["tandem --help"],
                      "pipeline_import_over_dspy_s": figures["from tandemlm import Pipeline, Model"]
                      - dspy_s}))


if __name__ == "__main__":
    main()
