"""The book's API reference (book/api.md) is generated from the docstrings and cannot drift from the code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("api_reference", ROOT / "tools" / "api_reference.py")
api_reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(api_reference)


def test_every_public_name_has_a_docstring():
    missing = api_reference.missing_docstrings()
    assert not missing, f"public names without a docstring: {missing}"


def test_the_page_is_what_the_code_says():
    assert api_reference.PAGE.read_text() == api_reference.render(), (
        "book/api.md is out of date: run .venv/bin/python tools/api_reference.py"
    )


def test_every_public_name_of_bnref_is_on_the_page():
    import bnref

    page = api_reference.PAGE.read_text()
    assert not [n for n in bnref.__all__ if f"`{n}`" not in page]


def test_a_missing_docstring_is_caught(monkeypatch):
    """The docstring check can fail: a public function without a docstring is reported."""
    import bnref.folding

    def undocumented(x):
        return x

    undocumented.__module__ = "bnref.folding"
    monkeypatch.setattr(bnref.folding, "undocumented", undocumented, raising=False)
    names = [*getattr(bnref.folding, "__all__", []), "undocumented"]
    monkeypatch.setattr(bnref.folding, "__all__", names, raising=False)
    assert "bnref.folding.undocumented" in api_reference.missing_docstrings()
