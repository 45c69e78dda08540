"""The README is what a newcomer reads: short, with the two commands, and examples that run."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEXT = README.read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)
#: The README links to the rest rather than holding it (issue 24: "at most about 10,000 characters").
MAX_CHARS = 10_000


def test_readme_is_short():
    assert len(TEXT) <= MAX_CHARS, f"README.md has {len(TEXT)} characters; move detail to CONTRIBUTING.md or the book"


def test_readme_shows_the_two_commands_and_links_to_the_rest():
    for needed in ("make book", "make test", "CONTRIBUTING.md", "API reference", "LICENSE", "LICENSE-text"):
        assert needed in TEXT, f"README.md does not mention {needed!r}"
    for path in ("CONTRIBUTING.md", "CHANGELOG.md", "LICENSE", "LICENSE-text", "book/api.md", "book/results/README.md"):
        assert (ROOT / path).is_file(), f"README.md points at {path}, which does not exist"


def test_readme_examples_exercise_the_reference():
    examples = "\n".join(BLOCKS)
    for call in ("bnref.batch_norm_forward(", "bnref.batch_norm_backward(", "bnref.gradcheck("):
        assert call in examples, f"no README example calls {call}...)"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int) -> None:
    namespace: dict[str, object] = {"__name__": f"readme_example_{index}"}
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), namespace)


def test_readme_commands_exist():
    """Every `python -m bnref...` module the README names can be found."""
    import importlib.util

    for module in set(re.findall(r"python -m (bnref[\w.]*)", TEXT)):
        assert importlib.util.find_spec(module) is not None, f"README.md runs python -m {module}, which does not exist"
