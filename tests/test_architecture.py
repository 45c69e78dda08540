"""The package's shape, as rules a test can hold it to (CONTRIBUTING.md, "The package's layers").

bnref is layered: the root (``bnref/*.py``, the NumPy oracle) < ``bnref.layers`` (from-scratch framework layers) <
``bnref.check`` (drivers, cases, agreement, precision, conformance) < ``bnref.mnist`` (data, models, trainers) <
``bnref.experiments`` (the book's experiments). ``bnref.conformance`` and ``bnref.train`` are thin public entry
points above all of them. Every import counts, the ones inside functions (lazy imports) included.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bnref"
MAX_LINES = 700

#: Rank of each layer: a module may import modules of its own rank or below, never above.
RANK = {"root": 0, "layers": 1, "check": 2, "mnist": 3, "experiments": 4, "conformance": 5, "train": 5}
#: What the root may import besides the standard library.
ROOT_THIRD_PARTY = {"numpy"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    if parts[1] in RANK and (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return "root"


def resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute name of what ``node`` imports from."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not MODULES[module].name == "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in ``module``, lazy ones included."""
    tree = ast.parse(MODULES[module].read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, node)
            names = [a.name for a in node.names]
            # "from bnref.layers import torch_bn" imports the module bnref.layers.torch_bn
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            if submodules:
                found += [(s, [], node.lineno) for s in submodules]
                rest = [n for n in names if f"{target}.{n}" not in MODULES]
                if rest:
                    found.append((target, rest, node.lineno))
            else:
                found.append((target, names, node.lineno))
    return found


def bnref_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for m in MODULES:
        for target, _, _ in imports_of(m):
            if target in MODULES and target != m:
                edges[m].add(target)
    return edges


def test_the_tree_has_the_layers():
    for layer in ("layers", "check", "mnist", "experiments"):
        assert (PACKAGE / layer / "__init__.py").is_file(), f"bnref/{layer}/ is missing"


def test_no_import_cycle():
    edges = bnref_edges()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n) :] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_flow_downwards():
    wrong = []
    for m in MODULES:
        for target, _, line in imports_of(m):
            if target.split(".")[0] != "bnref" or target == "bnref":
                continue
            if RANK[layer_of(target)] > RANK[layer_of(m)]:
                wrong.append(f"{m}:{line} imports {target} ({layer_of(m)} may not import {layer_of(target)})")
    assert not wrong, "\n".join(wrong)


def test_root_imports_only_numpy():
    stdlib = set(sys.stdlib_module_names)
    wrong = []
    for m in MODULES:
        if layer_of(m) != "root":
            continue
        for target, _, line in imports_of(m):
            top = target.split(".")[0]
            if top in ("", "bnref", "__future__") or top in stdlib:
                continue
            if top not in ROOT_THIRD_PARTY:
                wrong.append(f"{m}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_module_over_the_line_limit():
    long = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    over = {m: n for m, n in long.items() if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines: {over}"


def test_no_private_name_imported_across_modules():
    wrong = []
    for m in MODULES:
        tree = ast.parse(MODULES[m].read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases.update({(a.asname or a.name): a.name for a in node.names if a.name.startswith("bnref")})
            elif isinstance(node, ast.ImportFrom):
                target = resolve(m, node)
                for a in node.names:
                    if f"{target}.{a.name}" in MODULES:
                        aliases[a.asname or a.name] = f"{target}.{a.name}"
        for target, names, line in imports_of(m):
            if target.startswith("bnref"):
                wrong += [f"{m}:{line} imports {target}.{n}" for n in names if n.startswith("_") and n != "__version__"]
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                wrong.append(f"{m}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module", ["bnref", "bnref.layers", "bnref.check", "bnref.mnist", "bnref.experiments"])
def test_importing_a_package_imports_no_framework(module):
    frameworks = "('torch', 'tensorflow', 'keras', 'jax')"
    code = f"import sys, {module}; print(sorted(m for m in {frameworks} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"import {module} imported {out.strip()}"


def test_the_rules_catch_a_planted_violation(tmp_path):
    """The checks above can fail: a root module importing a subpackage is reported."""
    planted = tmp_path / "zz_planted_violation.py"
    planted.write_text("import torch\nfrom bnref.layers import torch_bn\nfrom bnref.reference import _bshape\n")
    try:
        MODULES["bnref.zz_planted_violation"] = planted
        with pytest.raises(AssertionError, match="zz_planted_violation"):
            test_imports_flow_downwards()
        with pytest.raises(AssertionError, match="zz_planted_violation"):
            test_root_imports_only_numpy()
        with pytest.raises(AssertionError, match="zz_planted_violation"):
            test_no_private_name_imported_across_modules()
    finally:
        MODULES.pop("bnref.zz_planted_violation", None)
