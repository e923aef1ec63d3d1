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


def test_the_cli_and_the_bare_package_start_without_dspy_or_heavy_libraries():
    """`tandem --help` and `import tandemlm` wait for none of them; a name loads its module."""
    for code in ("import tandemlm.cli", "import tandemlm"):
        loaded = _loaded(code)
        assert not [m for m in (*HEAVY, "dspy") if m in loaded], code
    loaded = _loaded("import tandemlm\ntandemlm.Pipeline")
    assert "dspy" in loaded and "tandemlm.compose.pipeline" in loaded


def test_every_public_name_resolves_and_an_unknown_one_is_an_attribute_error():
    import pytest

    import tandemlm

    for name in tandemlm.__all__:
        assert getattr(tandemlm, name) is not None
    assert set(tandemlm.__all__) <= set(dir(tandemlm))
    with pytest.raises(AttributeError, match="has no attribute 'Pipelin'"):
        tandemlm.Pipelin  # noqa: B018


def test_a_model_loads_torch_and_transformers_on_use():
    loaded = _loaded("import tandemlm.runtime.backends.hf")
    assert "torch" in loaded and "transformers" in loaded


def test_a_public_name_shared_with_a_subpackage_stays_the_public_object_in_any_import_order():
    """`tandemlm.evaluate` is a subpackage and the `evaluate` function: importing the
    subpackage first (as `compile` does) must not turn `from tandemlm import evaluate` into it."""
    probe = ("import types, tandemlm.evaluate, tandemlm.optimizers\n"
             "from tandemlm import compile, evaluate, load_data\n"
             "import tandemlm\n"
             "modules = [n for n in tandemlm.__all__ if isinstance(getattr(tandemlm, n), types.ModuleType)]\n"
             "assert not modules, modules\n"
             "assert callable(evaluate) and callable(compile) and callable(load_data)\n"
             "assert tandemlm.evaluate is evaluate\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
