"""Write the book's API reference (book/api.md) from the docstrings of bnref's public modules.

    .venv/bin/python tools/api_reference.py          # rewrite book/api.md
    .venv/bin/python tools/api_reference.py --check  # exit 1 if book/api.md is not what the code says

The page is generated, never edited by hand: tests/test_api_reference.py fails when it differs from what this script
writes, and when a public name has no docstring. A module's public names are its ``__all__`` or, without one, the
functions and classes it defines whose names do not start with an underscore. Docstrings are shown as written (numpydoc
style) in literal blocks, so the page needs no Sphinx extension and renders the same in both editions.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "book" / "api.md"

#: The public modules, grouped as the package is layered; each heading is followed by its modules.
SECTIONS: dict[str, list[str]] = {
    "The oracle (NumPy only): `import bnref`": [
        "bnref",
        "bnref.conventions",
        "bnref.reference",
        "bnref.normalization",
        "bnref.batch_variants",
        "bnref.folding",
        "bnref.finite_differences",
        "bnref.testing",
        "bnref.records",
        "bnref.exercises",
    ],
    "From-scratch framework layers: `bnref.layers`": [
        "bnref.layers.torch_bn",
        "bnref.layers.keras_bn",
        "bnref.layers.jax_bn",
        "bnref.layers.sync_bn",
        "bnref.layers.ghost_renorm",
        "bnref.layers.transfer",
        "bnref.layers.precise_bn",
    ],
    "Checks against the oracle: `bnref.check` and `bnref.conformance`": [
        "bnref.conformance",
        "bnref.check.agreement",
        "bnref.check.precision",
    ],
    "The article's MNIST model: `bnref.mnist` and `bnref.train`": [
        "bnref.mnist.data",
        "bnref.mnist.models",
        "bnref.mnist.verdicts",
        "bnref.train",
    ],
    "The book's experiments: `bnref.experiments`": [
        "bnref.experiments.registry",
        "bnref.experiments.diagnostics",
    ],
}


def public_names(module) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            n
            for n, obj in vars(module).items()
            if not n.startswith("_")
            and (inspect.isfunction(obj) or inspect.isclass(obj))
            and getattr(obj, "__module__", None) == module.__name__
        ]
    return list(names)


def documented(obj) -> bool:
    return bool(inspect.getdoc(obj)) and not (inspect.isclass(obj) and inspect.getdoc(obj) == inspect.getdoc(object))


def signature(name: str, obj) -> str:
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        try:
            # a default that is a function prints with its memory address, different in every process
            return re.sub(r"<function (\S+) at 0x[0-9a-f]+>", r"\1", f"{name}{inspect.signature(obj)}")
        except (TypeError, ValueError):
            return name
    if inspect.isclass(obj):
        return f"class {name}"
    return name


def missing_docstrings() -> list[str]:
    """Public functions and classes of the documented modules without a docstring."""
    missing = []
    for modules in SECTIONS.values():
        for name in modules:
            module = importlib.import_module(name)
            if not inspect.getdoc(module):
                missing.append(name)
            for attr in public_names(module):
                obj = getattr(module, attr)
                if (inspect.isfunction(obj) or inspect.isclass(obj)) and not documented(obj):
                    missing.append(f"{name}.{attr}")
    return missing


def render() -> str:
    out = [
        "(ch-api)=",
        "# API reference",
        "",
        "Generated from the docstrings by `tools/api_reference.py`; a test fails when this page and the code disagree,",
        "so it cannot drift. Each section is one public module; constants are listed with their values' types.",
        "The reference stays in English in both editions.",
        "",
    ]
    for title, modules in SECTIONS.items():
        out += [f"## {title}", ""]
        for name in modules:
            module = importlib.import_module(name)
            summary = (inspect.getdoc(module) or "").split("\n\n")[0].replace("\n", " ")
            out += [f"### `{name}`", "", summary, ""]
            for attr in public_names(module):
                obj = getattr(module, attr)
                if inspect.isfunction(obj) or inspect.isclass(obj):
                    doc = inspect.getdoc(obj) or ""
                    out += [f"#### `{attr}`", "", "```text", signature(attr, obj), "", doc, "```", ""]
                else:
                    out += [f"- `{attr}`: {type(obj).__name__}", ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if book/api.md differs from the code")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not PAGE.exists() or PAGE.read_text() != text:
            print("book/api.md is out of date: run .venv/bin/python tools/api_reference.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
