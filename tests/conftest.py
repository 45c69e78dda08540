"""Shared test helpers, and the switch that makes a missing framework a failure.

Helpers, imported as ``from conftest import EPS64, cond, synthetic_mnist``:

* ``EPS64``: float64's machine epsilon, 2**-52 (about 2.2e-16);
* ``cond(scale, expected)``: the condition factor of ``bnref.testing.check_close`` for a result whose
  condition scale (the sum of the absolute values it is computed from, appendix ``ch-bounds``) is ``scale``.

Fixture ``torch``: PyTorch, or a skip where it is not installed, for the tests that need it (so that NumPy-only
tests in the same file never sit behind a module-level ``importorskip``).

``BNREF_REQUIRE_FRAMEWORKS=1`` (set by ``.ci/run``) turns every skip caused by a missing framework into a
failure: every ``pytest.importorskip`` in this suite guards a framework (torch, tensorflow, keras, jax, flax,
onnx, onnxruntime), so a skip whose reason is an ``importorskip`` that failed ("could not import ...", or a
version below the one required), at collection or in a test, fails. Under the switch a skip in the frameworks'
own suites (``tests/test_native_suites.py``) fails too, whatever its reason, unless the reason is one of
``NATIVE_SUITE_SKIPS_ALLOWED`` (none today: every check there runs on CPU). Without the switch a missing
framework is a skip, as on a machine that has only NumPy.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

EPS64 = float(np.finfo(np.float64).eps)

REQUIRE_FRAMEWORKS = "BNREF_REQUIRE_FRAMEWORKS"

#: The skips of tests/test_native_suites.py that do not count as "not passed" under the switch: a regular
#: expression matched against the skip's reason -> why the skip is acceptable. Empty: nothing there may skip.
NATIVE_SUITE_SKIPS_ALLOWED: dict[str, str] = {}

NATIVE_SUITES = "test_native_suites.py"

#: What pytest.importorskip says when the module is missing or too old.
_IMPORTORSKIP = re.compile(r"could not import '([\w.]+)'|module '([\w.]+)' has __version__ .*, required is")


def cond(scale: np.ndarray, expected: np.ndarray) -> float:
    """``max S / max |expected|``, at least 1: the cond of check_close for a result with condition scale S."""
    top = float(np.max(np.abs(expected)))
    return max(1.0, float(np.max(scale)) / top) if top > 0 else 1.0


def synthetic_mnist(n: int, n_test: int, seed: int = 0):
    """Ten Gaussian blobs in 784 dimensions, values in [0, 1], as MNIST-shaped features: ``(x_train, y_train,
    x_test, y_test)``, float32 features and int64 labels, every class in turn, for the experiments' tiny runs."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.2, 0.8, size=(10, 784))
    y = np.arange(n + n_test) % 10
    x = np.clip(centres[y] + 0.1 * rng.standard_normal((n + n_test, 784)), 0, 1).astype(np.float32)
    return x[:n], y[:n].astype(np.int64), x[n:], y[n:].astype(np.int64)


@pytest.fixture(scope="module")
def torch():
    """PyTorch, or a skip (a failure under BNREF_REQUIRE_FRAMEWORKS=1) where it is not installed."""
    return pytest.importorskip("torch")


# ----------------------------------------------------------------------------------------------------
# BNREF_REQUIRE_FRAMEWORKS=1: a skip for a missing framework is a failure
# ----------------------------------------------------------------------------------------------------


def _skip_reason(longrepr: object) -> str:
    """The reason of a skip report: pytest keeps it as (path, line, "Skipped: reason")."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _not_allowed(reason: str, path: str) -> str | None:
    """Why a skip with ``reason`` in the file ``path`` fails under the switch, or None if it may skip."""
    missing = _IMPORTORSKIP.search(reason)
    if missing:
        module = missing.group(1) or missing.group(2)
        return f"{REQUIRE_FRAMEWORKS}=1: the framework {module!r} is missing or too old ({reason})"
    if os.path.basename(path) == NATIVE_SUITES and not any(re.search(p, reason) for p in NATIVE_SUITE_SKIPS_ALLOWED):
        return f"{REQUIRE_FRAMEWORKS}=1: a skip in the frameworks' own suites counts as not passed ({reason})"
    return None


def _switch_on() -> bool:
    return os.environ.get(REQUIRE_FRAMEWORKS) == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """A module skipped at collection (a module-level importorskip) fails to collect under the switch."""
    outcome = yield
    report = outcome.get_result()
    if _switch_on() and report.skipped:
        why = _not_allowed(_skip_reason(report.longrepr), str(collector.path))
        if why:
            report.outcome = "failed"
            report.longrepr = why


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A test skipped in setup or in its body fails under the switch (xfail is left alone)."""
    outcome = yield
    report = outcome.get_result()
    if _switch_on() and report.skipped and not hasattr(report, "wasxfail"):
        why = _not_allowed(_skip_reason(report.longrepr), str(item.path))
        if why:
            report.outcome = "failed"
            report.longrepr = why
