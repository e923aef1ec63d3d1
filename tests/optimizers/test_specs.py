"""Pass specs from the command line: literal options only, clear errors, user passes by path."""

from __future__ import annotations

import pytest

from tandemlm.optimizers import BootstrapDemos
from tandemlm.optimizers.specs import known_passes, parse_pass, parse_passes, program_source
from tandemlm.runtime import ConfigError

USER_PASSES = '''
from dataclasses import dataclass
from tandemlm.optimizers import Pass


@dataclass
class Tidy(Pass):
    level: int = 1
    name = "tidy"

    def apply(self, pipeline, traces, ctx):
        return pipeline


class NotAPass:
    pass
'''


def test_builtin_pass_with_literal_options():
    step = parse_pass("BootstrapDemos(k=2, nodes=['solve'], teacher={'small': 'large'}, "
                      "candidates=3)")
    assert step == BootstrapDemos(k=2, nodes=["solve"], teacher={"small": "large"}, candidates=3)
    assert parse_pass("  BootstrapDemos ") == BootstrapDemos()
    assert parse_passes(["BootstrapDemos(k=1)", "BootstrapDemos()"]) == [BootstrapDemos(k=1),
                                                                          BootstrapDemos()]
    assert "BootstrapDemos" in known_passes()


def test_user_pass_from_a_file(tmp_path):
    (tmp_path / "my_passes.py").write_text(USER_PASSES)
    step = parse_pass(f"{tmp_path / 'my_passes.py'}:Tidy(level=3)")
    assert type(step).__name__ == "Tidy" and step.level == 3 and step.config() == {"level": 3}
    with pytest.raises(ConfigError, match="not a Pass class"):
        parse_pass(f"{tmp_path / 'my_passes.py'}:NotAPass")


def test_user_pass_from_a_module():
    step = parse_pass("tandemlm.optimizers.bootstrap_demos:BootstrapDemos(k=5)")
    assert step == BootstrapDemos(k=5)


def test_options_are_never_run_as_code(tmp_path):
    marker = tmp_path / "ran"
    spec = f"BootstrapDemos(k=open({str(marker)!r}, 'w').write('x'))"
    with pytest.raises(ConfigError, match="is not a literal"):
        parse_pass(spec)
    assert not marker.exists()


@pytest.mark.parametrize("spec, message", [
    ("Bootstrap", r"unknown pass 'Bootstrap'; built-in passes: .*BootstrapDemos.*MODULE:Class"),
    ("BootstrapDemos(kk=2)", "has no option kk; its options: k, teacher, nodes"),
    ("BootstrapDemos(2)", "give options as keyword arguments"),
    ("BootstrapDemos(k=)", "is not valid"),
    ("BootstrapDemos(k=-1)", "expected an integer >= 0"),
    ("BootstrapDemos(**{'k': 1})", "give options as keyword arguments"),
    ("nowhere.module:Pass", "cannot import module 'nowhere.module'"),
])
def test_bad_specs_are_clear_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_pass(spec)


def test_program_source_makes_file_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert program_source("programs/x.py:build") == f"{tmp_path.resolve()}/programs/x.py:build"
    assert program_source("mypkg.programs:build") == "mypkg.programs:build"
