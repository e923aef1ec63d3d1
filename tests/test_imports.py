"""`import tandemlm` and the `tandem` command load no heavy library: torch, transformers and
matplotlib load when a backend, a training pass or a plot needs them. Checked in a fresh
interpreter by what it has imported, not by the clock."""

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "matplotlib", "peft", "llguidance")


def _loaded(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_tandemlm_loads_no_heavy_library():
    loaded = _loaded("import tandemlm\nfrom tandemlm import Pipeline, Model, compile, evaluate")
    assert "dspy" in loaded  # signatures and modules are DSPy's: that much is needed
    assert not [m for m in HEAVY if m in loaded]


def test_the_cli_starts_without_heavy_libraries_and_a_model_loads_them_on_use():
    assert not [m for m in HEAVY if m in _loaded("import tandemlm.cli")]
    loaded = _loaded("import tandemlm.runtime.backends.hf")
    assert "torch" in loaded and "transformers" in loaded
