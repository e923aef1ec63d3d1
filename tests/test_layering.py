"""Layers import downward only (DESIGN.md), and nothing inside the package imports the
top-level `tandemlm` package itself."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tandemlm"

# layer -> layers it may import
ALLOWED = {
    "runtime": {"runtime"},
    "compose": {"compose", "runtime"},
    "modules": {"modules", "compose", "runtime"},
    "evaluate": {"evaluate", "compose", "runtime"},
    "optimizers": {"optimizers", "evaluate", "modules", "compose", "runtime"},
    "suites": {"suites", "optimizers", "evaluate", "modules", "compose", "runtime"},
}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return [n for n in names if n == "tandemlm" or n.startswith("tandemlm.")]


def test_layers_import_downward_only():
    violations = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        layer = rel.parts[0] if len(rel.parts) > 1 else None
        for name in _imports(path):
            parts = name.split(".")
            if len(parts) == 1:
                violations.append(f"{rel} imports the top-level package 'tandemlm'")
                continue
            if layer in ALLOWED and len(parts) > 1 and parts[1] not in ALLOWED[layer]:
                violations.append(f"{rel} ({layer}) imports {name}")
    assert not violations, "\n".join(violations)


def test_no_relative_imports():
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if any(isinstance(n, ast.ImportFrom) and n.level > 0
                        for n in ast.walk(ast.parse(p.read_text())))]
    assert not offenders
