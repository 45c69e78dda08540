"""The README's Python examples are documentation a user will paste: run each one."""

from __future__ import annotations

import pathlib
import re

import pytest

import bnref

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_documents_the_public_api() -> None:
    """Every name ``import bnref`` exports is named in the README, and its examples exercise the reference
    (forward, both backward passes, the gradient check), so that ``test_readme_example_runs`` below runs
    the API rather than nothing: without examples it would collect no cases at all."""
    text = README.read_text(encoding="utf-8")
    undocumented = [name for name in bnref.__all__ if not re.search(rf"\b{re.escape(name)}\b", text)]
    assert not undocumented, f"README.md does not mention {undocumented}"
    examples = "\n".join(BLOCKS)
    for call in (
        "bnref.batch_norm_forward(",
        "bnref.batch_norm_backward(",
        "bnref.batch_norm_backward_staged(",
        "bnref.gradcheck(",
    ):
        assert call in examples, f"no README example calls {call}...)"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int) -> None:
    namespace: dict[str, object] = {"__name__": f"readme_example_{index}"}
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), namespace)
