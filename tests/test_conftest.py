"""Tests of tests/conftest.py: the shared helpers, and the switch BNREF_REQUIRE_FRAMEWORKS=1 proved on small
pytest runs in a temporary folder (a copy of conftest.py beside planted test files), with and without it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from conftest import EPS64, cond

CONFTEST = Path(__file__).with_name("conftest.py")

PLANTED = """
import pytest

def test_numpy_only():
    assert True

def test_needs_a_framework():
    pytest.importorskip("bnref_no_such_framework")

def test_needs_a_newer_numpy():
    pytest.importorskip("numpy", minversion="999")

def test_skipped_for_another_reason():
    pytest.skip("not relevant on this machine")

@pytest.mark.xfail(reason="a known failure", strict=True)
def test_expected_to_fail():
    assert False
"""


def run_pytest(folder: Path, files: dict[str, str], require: bool, extra_conftest: str = "") -> dict[str, str]:
    """Run pytest on ``files`` beside a copy of conftest.py; return {test name: outcome}, "rc" -> exit code."""
    shutil.copy(CONFTEST, folder / "conftest.py")
    if extra_conftest:
        with open(folder / "conftest.py", "a") as f:
            f.write("\n" + extra_conftest + "\n")
    for name, text in files.items():
        (folder / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "BNREF_REQUIRE_FRAMEWORKS"}
    if require:
        env["BNREF_REQUIRE_FRAMEWORKS"] = "1"
    report = folder / "report.xml"
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", str(folder)]
    done = subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    outcomes = {"rc": str(done.returncode)}
    for case in ET.parse(report).getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[case.get("name")] = kinds[0] if kinds else "passed"
    return outcomes


def test_without_the_switch_a_missing_framework_is_a_skip(tmp_path):
    out = run_pytest(tmp_path, {"test_planted.py": PLANTED}, require=False)
    assert out["rc"] == "0"
    assert out["test_numpy_only"] == "passed"
    assert out["test_needs_a_framework"] == out["test_needs_a_newer_numpy"] == "skipped"
    assert out["test_skipped_for_another_reason"] == "skipped"
    assert out["test_expected_to_fail"] == "skipped"  # junit writes an xfail as skipped


def test_with_the_switch_a_missing_framework_fails(tmp_path):
    out = run_pytest(tmp_path, {"test_planted.py": PLANTED}, require=True)
    assert out["rc"] == "1"
    assert out["test_numpy_only"] == "passed"
    assert out["test_needs_a_framework"] == out["test_needs_a_newer_numpy"] == "failure"
    assert out["test_skipped_for_another_reason"] == "skipped"  # not a framework: still a skip
    assert out["test_expected_to_fail"] == "skipped"  # an xfail is left alone


def test_with_the_switch_a_module_level_importorskip_fails_collection(tmp_path):
    module_level = 'import pytest\n\npytest.importorskip("bnref_no_such_framework")\n\ndef test_a():\n    pass\n'
    files = {"test_module_level.py": module_level, "test_fine.py": "def test_fine():\n    pass\n"}
    out = run_pytest(tmp_path, files, require=False)
    assert out["rc"] == "0" and out["test_fine"] == "passed"
    out = run_pytest(tmp_path, files, require=True)
    assert out["rc"] != "0" and "test_module_level" in out and out["test_module_level"] == "error"


def test_with_the_switch_any_skip_in_the_native_suites_fails_unless_listed(tmp_path):
    native = 'import pytest\n\ndef test_gpu_only():\n    pytest.skip("needs CUDA")\n'
    files = {"test_native_suites.py": native}
    assert run_pytest(tmp_path, files, require=False)["test_gpu_only"] == "skipped"
    assert run_pytest(tmp_path, files, require=True)["test_gpu_only"] == "failure"
    listed = 'NATIVE_SUITE_SKIPS_ALLOWED["needs CUDA"] = "planted: the machine has no GPU"'
    assert run_pytest(tmp_path, files, require=True, extra_conftest=listed)["test_gpu_only"] == "skipped"


def test_ci_sets_the_switch():
    ci = (Path(__file__).parents[1] / ".ci" / "run").read_text()
    assert "export BNREF_REQUIRE_FRAMEWORKS=1" in ci


def test_helpers():
    assert EPS64 == 2.0**-52
    assert cond(np.array([4.0, 1.0]), np.array([2.0, -1.0])) == 2.0
    assert cond(np.array([1.0]), np.array([3.0])) == 1.0  # at least 1
    assert cond(np.array([1.0]), np.array([0.0])) == 1.0  # an all-zero result
