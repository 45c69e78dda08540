"""The conformance tool for engineers: every running-average rule found in the wild inferred with no spurious FAIL,
the adapter contract held with one line per breach, messages at the precision that decides them, the command line
(``module:Class``, ``file.py:Class``, exit statuses, ``--json``) and ``assert_conforms``.

Every adapter here is a small float32 NumPy BN (no framework needed, each check well under a second). The rules are
written as the frameworks write them (sources cited in ``bnref.check.rules``): PyTorch's ``(1 - w) r + w b`` and
``momentum=None``, Haiku's ``ExponentialMovingAverage`` (a hidden average from 0, read as ``hidden / (1 - d^k)``,
with ``d^k`` from a float32 power), Equinox's ``mode="ema"`` (the first batch replaces the statistics) and its
``mode="batch"`` (the same debiasing with a hidden variance that starts at 1).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import bnref
from bnref.check.cli import HELP, main
from bnref.check.contract import dtype_name
from bnref.check.report import decimal, ratio_text, spread_text
from bnref.check.rules import RunningRule, infer_rule
from bnref.check.truth import Diff
from bnref.conformance import (
    FAULTS,
    NAMES,
    Adapter,
    AdapterError,
    PlantedFault,
    adapter_for,
    assert_conforms,
    check,
)
from bnref.conventions import KERAS, PYTORCH

FAST = {"ratios": (1.0, 1e3), "half_dtypes": ()}
F32 = np.float32


class NumpyBN(Adapter):
    """A float32 NumPy BN on (N, C) inputs with a choice of running-average rule, written as the frameworks do.

    ``rule``: "constant" (PyTorch: ``(1 - w) r + w b``), "cumulative" (PyTorch ``momentum=None``: w = 1/k),
    "debiased" (Haiku: ``hidden = hidden * d + b * (1 - d)`` from 0, ``average = hidden / (1 - d^k)``),
    "first-replaces" (Equinox "ema": ``r = b`` at the first step, then ``(1 - m) b + m r``). ``hidden_var`` is
    the debiased variance's hidden start (Equinox "batch" starts it at 1).
    """

    layout = "NC"

    def __init__(self, rule: str = "constant", w: float = 0.1, eps: float = 1e-5, hidden_var: float = 0.0) -> None:
        self.rule, self.w, self.eps, self.hidden_var = rule, w, eps, hidden_var
        self.name = f"numpy {rule}"

    def create(self, num_features: int, dtype: str) -> None:
        if dtype != "float32":
            raise ValueError(f"float32 only, not {dtype}")
        c = num_features
        self.gamma, self.beta = np.ones(c, F32), np.zeros(c, F32)
        self.mean, self.var = np.zeros(c, F32), np.ones(c, F32)
        self.hidden_mean, self.hidden_v = np.zeros(c, F32), np.full(c, self.hidden_var, F32)
        self.k = 0
        if self.rule == "debiased":  # Haiku's averages start at zeros; inference reads them
            self.var = np.zeros(c, F32)

    def set_params(self, gamma: np.ndarray, beta: np.ndarray) -> None:
        self.gamma, self.beta = gamma.astype(F32), beta.astype(F32)

    def _update(self, mean: np.ndarray, var: np.ndarray) -> None:
        self.k += 1
        if self.rule == "constant":
            w = F32(self.w)
            self.mean, self.var = (1 - w) * self.mean + w * mean, (1 - w) * self.var + w * var
        elif self.rule == "cumulative":
            w = F32(1.0 / self.k)
            self.mean, self.var = (1 - w) * self.mean + w * mean, (1 - w) * self.var + w * var
        elif self.rule == "first-replaces":
            m = F32(1 - self.w)
            if self.k == 1:
                self.mean, self.var = mean, var
            else:
                self.mean, self.var = (1 - m) * mean + m * self.mean, (1 - m) * var + m * self.var
        else:
            d = F32(1 - self.w)
            self.hidden_mean = self.hidden_mean * d + mean * (F32(1) - d)
            self.hidden_v = self.hidden_v * d + var * (F32(1) - d)
            scale = F32(1) - np.power(d, F32(self.k), dtype=F32)
            self.mean, self.var = self.hidden_mean / scale, self.hidden_v / scale

    def _normalise(self, x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
        return self.gamma * (x - mean) / np.sqrt(var + F32(self.eps)) + self.beta

    def train_forward(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(F32)
        mean = x.mean(axis=0)
        var = ((x - mean) ** 2).mean(axis=0)
        self._update(mean, var * F32(x.shape[0] / (x.shape[0] - 1)) if self.rule == "constant" else var)
        return self._normalise(x, mean, var)

    def infer_forward(self, x: np.ndarray) -> np.ndarray:
        return self._normalise(x.astype(F32), self.mean, self.var)

    def running_stats(self) -> tuple[np.ndarray, np.ndarray]:
        return self.mean.copy(), self.var.copy()


# ----------------------------------------------------------------------------------------------------
# The running-average rules, inferred from behaviour
# ----------------------------------------------------------------------------------------------------

RULES = [
    ("constant", 0.1, "constant", "w = 0.1 (torch momentum 0.1; Keras/Flax momentum 0.9)", "unbiased"),
    ("constant", 0.01, "constant", "w = 0.01 (torch momentum 0.01; Keras/Flax momentum 0.99)", "unbiased"),
    ("cumulative", None, "cumulative", "w_k = 1/k (cumulative average)", "biased"),
    ("debiased", 0.01, "debiased", "zero-debiased average, decay 0.99: w_k = (1 - d)/(1 - d^k)", "biased"),
    ("debiased", 0.1, "debiased", "zero-debiased average, decay 0.9: w_k = (1 - d)/(1 - d^k)", "biased"),
    ("first-replaces", 0.01, "first-replaces", "first batch replaces the initial value, then w = 0.01", "biased"),
]


@pytest.mark.parametrize("rule,w,kind,text,bias", RULES, ids=[f"{r[0]}-{r[1]}" for r in RULES])
def test_each_rule_is_inferred_with_no_spurious_fail(rule, w, kind, text, bias) -> None:
    report = check(NumpyBN(rule, w if w is not None else 0.1), **FAST)
    assert report.passed, report.to_text()
    line = report.line("running-average weight")
    assert line.verdict == "INFO" and line.measured.startswith(text), line
    assert line.numbers.startswith("w_1 = ") and "w_3 = " in line.numbers  # the evidence: the measured weights
    assert report.convention["rule"] == kind
    assert report.line("running variance fed").measured.startswith(bias)
    for name in ("running mean (3 steps)", "running variance (3 steps)", "inference output"):
        assert report.line(name).verdict == "PASS", report.to_text()


def test_a_declared_rule_is_held_to() -> None:
    haiku = NumpyBN("debiased", 0.01)
    haiku.convention = KERAS.replace(eps=1e-5, init_var=0.0)
    haiku.running_rule = RunningRule("debiased", 0.01)
    report = check(haiku, **FAST)
    assert report.passed, report.to_text()
    assert report.line("running-average weight").bound == "debiased, decay 0.99"
    haiku.running_rule = RunningRule("constant", 0.01)  # Keras' rule claimed, a debiased average measured
    wrong = check(haiku, **FAST)
    assert wrong.failures == ["running-average weight"], wrong.to_text()


def test_equinox_batch_mode_variance_is_diagnosed() -> None:
    """A debiased average whose hidden variance starts at 1 (Equinox 0.13 ``mode="batch"``): after one step the
    variance read is d/(1 - d) = 99 too large; the line says so, and inference fails, as it does in Equinox."""
    report = check(NumpyBN("debiased", 0.01, hidden_var=1.0), **FAST)
    assert report.convention["rule"] == "debiased"
    fed = report.line("running variance fed")
    assert fed.verdict == "INFO"
    assert "plus an offset of 99 after step 1" in fed.measured
    assert "hidden variance starts at 1, not 0" in fed.measured
    assert {"running variance (3 steps)", "inference output"} <= set(report.failures)
    assert report.line("running mean (3 steps)").verdict == "PASS"


def test_infer_rule_tells_the_rules_apart() -> None:
    tol = [1e-6] * 3
    assert infer_rule([0.1, 0.1, 0.1], tol) == RunningRule("constant", 0.1)
    assert infer_rule([1.0, 0.5, 1 / 3], tol) == RunningRule("cumulative")
    assert infer_rule([1.0, 0.5, 0.5], tol) == RunningRule("first-replaces", 0.5)  # not cumulative: w_3 = 1/2
    assert infer_rule(RunningRule("debiased", 0.01).weights(), tol) == RunningRule("debiased", 1 - 0.99)
    assert infer_rule([1.0, 0.7, 0.2], tol) is None
    assert infer_rule([float("nan")] * 3, tol) is None
    assert RunningRule("first-replaces", 0.01).weights() == [1.0, 0.01, 0.01]
    assert RunningRule.from_convention(PYTORCH.replace(momentum=None)) == RunningRule("cumulative")
    with pytest.raises(ValueError, match="kind"):
        RunningRule("ema", 0.1)
    with pytest.raises(ValueError, match="weight"):
        RunningRule("constant", 1.5)


def test_a_layer_that_normalises_with_its_running_averages_in_training_is_named() -> None:
    """Equinox 0.13's ``mode="ema"``: the first batch replaces the statistics, and training normalises with them."""

    class EquinoxEma(NumpyBN):
        def train_forward(self, x):
            x = x.astype(F32)
            mean = x.mean(axis=0)
            self._update(mean, ((x - mean) ** 2).mean(axis=0))
            return self._normalise(x, self.mean, self.var)

    report = check(EquinoxEma("first-replaces", 0.01), **FAST)
    assert report.convention["rule"] == "first-replaces"
    y = report.line("training output y")
    assert y.verdict == "FAIL" and y.measured.endswith(
        "normalises with its running statistics (after the update), not the batch's"
    )
    assert report.line("running mean (3 steps)").verdict == "PASS"


# ----------------------------------------------------------------------------------------------------
# Messages at the precision that decides them
# ----------------------------------------------------------------------------------------------------


def test_an_eps_that_fails_reads_differently_from_the_declared_one() -> None:
    close = NumpyBN("constant", 0.1, eps=1.00003e-05)
    close.convention = PYTORCH
    line = check(close, **FAST).line("eps")
    assert line.verdict == "FAIL" and line.measured == "eps = 1.00003e-05", line
    assert line.bound.startswith("1e-05 (tolerance ")


def test_numbers_as_text() -> None:
    assert ratio_text(1.027) == "1.03" and ratio_text(0.9996) == "0.9996" and ratio_text(0.044) == "0.044"
    assert spread_text([12.0, 45.0, 397.0, 25.75, 100.0]) == "45 (12-397)"
    assert spread_text([1.0, 1.0]) == "1"
    assert decimal(0.0100000003, 1e-8) == "0.01"
    from bnref.check.accuracy import ratio_line

    line = ratio_line("float32 accuracy", "y", Diff(1e-6, 1.027e-6, 1.027, 1e-6, 1e-6))
    assert line.verdict == "FAIL" and "err/bound 1.03" in line.numbers


def test_a_factor_that_differs_by_channel_shows_its_spread() -> None:
    class PerChannel(NumpyBN):
        def _update(self, mean, var):
            super()._update(mean, var * np.arange(1, var.size + 1, dtype=F32) / F32(32 / 31))

    line = check(PerChannel(), **FAST).line("running variance fed")
    assert line.measured.startswith("factor 3 (1-5) on the biased variance"), line


def test_dtypes_are_numpy_names() -> None:
    class Fake:
        def __init__(self, dtype):
            self.dtype = dtype

    for given, name in (("Float16", "float16"), ("torch.bfloat16", "bfloat16"), ("paddle.float32", "float32")):
        assert dtype_name(Fake(given)) == name
    assert dtype_name(np.zeros(2, np.float64)) == "float64" and dtype_name([1, 2]) == "int64"


def test_unbiased_normalisation_keeps_its_axes_and_is_named() -> None:
    class Unbiased(NumpyBN):
        def train_forward(self, x):
            x = x.astype(F32)
            m = x.shape[0]
            mean = x.mean(axis=0)
            var = ((x - mean) ** 2).mean(axis=0) * F32(m / (m - 1))
            self._update(mean, var)
            return self._normalise(x, mean, var)

    report = check(Unbiased(), **FAST)
    assert report.line("reduced axes").measured == "reduces N of NC, channels on axis 1"
    eps = report.line("eps inside sqrt(var + eps)")
    assert eps.verdict == "FAIL" and "normalises with the unbiased variance" in eps.measured, eps
    assert report.line("eps").measured == "eps = 1e-05"


# ----------------------------------------------------------------------------------------------------
# The adapter contract: one line per breach, never a traceback from inside the tool
# ----------------------------------------------------------------------------------------------------


class WrongShape(NumpyBN):
    def train_forward(self, x):
        return super().train_forward(x)[:, :-1]


class WrongDtype(NumpyBN):
    def train_forward(self, x):
        return np.round(super().train_forward(x)).astype(np.int64)


class Raises(NumpyBN):
    def infer_forward(self, x):
        raise RuntimeError("inference is not wired up")


class BadStats(NumpyBN):
    def running_stats(self):
        return self.mean


class BadBackward(NumpyBN):
    def backward(self, x, dy):
        return x, np.ones(x.shape[1]), np.ones(x.shape[1] + 1)


BREACHES = [
    (WrongShape, "train_forward(x of shape (6, 3)) returned shape (6, 2)", "returns an array of shape (6, 3)"),
    (WrongDtype, "train_forward(x of shape (6, 3)) returned dtype int64", "of a floating-point dtype"),
    (Raises, "infer_forward(x of shape (32, 5)) raised RuntimeError: inference is not wired up", "raises nothing"),
    (BadStats, "running_stats() returned ndarray of shape (5,), dtype float32", "returns (mean, var)"),
    (BadBackward, "backward(x, dy of shape (32, 5))[2] returned shape (6,)", "returns an array of 5 values"),
]


@pytest.mark.parametrize("cls,measured,contract", BREACHES, ids=[b[0].__name__ for b in BREACHES])
def test_a_broken_contract_is_one_line(cls, measured, contract) -> None:
    report = check(cls(), **FAST)
    assert report.failures[-1:] == ["adapter contract"], report.to_text()
    line = report.lines[-1]
    assert line.section == "adapter contract" and line.measured == measured, line
    assert contract in line.bound
    assert report.checks.count("adapter contract") == 1


def test_an_adapter_without_its_methods_is_an_adapter_error() -> None:
    with pytest.raises(AdapterError, match="create"):
        check(object())


# ----------------------------------------------------------------------------------------------------
# assert_conforms, for a user's pytest suite
# ----------------------------------------------------------------------------------------------------


def test_assert_conforms() -> None:
    report = assert_conforms(NumpyBN(), **FAST)
    assert report.passed
    with pytest.raises(AssertionError) as caught:
        assert_conforms(PlantedFault("biased-running-var"), **FAST)
    message = str(caught.value)
    assert "does not conform: 1 failing line" in message
    assert "conventions · running variance fed · FAIL · biased (factor 1)" in message
    with pytest.raises(AssertionError, match="adapter contract"):
        assert_conforms(WrongShape(), **FAST)
    assert assert_conforms("fault:none", **FAST).passed  # a spec works too


# ----------------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------------

ADAPTER_FILE = '''
from bnref.conformance import PlantedFault


class Good(PlantedFault):
    """The correct layer, under another name."""


def make_faulty():
    return PlantedFault("momentum-backwards")


def broken():
    raise RuntimeError("no framework here")
'''


@pytest.fixture()
def adapter_module(tmp_path, monkeypatch):
    (tmp_path / "my_bn_adapter.py").write_text(textwrap.dedent(ADAPTER_FILE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_help_lists_the_forms_names_faults_and_exit_statuses(capsys) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for word in ("package.module:NAME", "path/to/file.py:NAME", "fault:none", *NAMES, *FAULTS):
        assert word in text, word
    assert "exit status:" in text and HELP.splitlines()[0] in text


def test_exit_statuses_in_process(adapter_module, tmp_path, capsys) -> None:
    assert main(["fault:none", "--quiet"]) == 0
    assert main(["my_bn_adapter:Good", "--quiet"]) == 0  # module:Class
    assert main([f"{adapter_module / 'my_bn_adapter.py'}:Good", "--quiet"]) == 0  # file.py:Class
    assert main(["my_bn_adapter:make_faulty", "--quiet"]) == 1  # a zero-argument factory, a planted fault
    for spec, why in (
        ("no_such_module:Adapter", "cannot import 'no_such_module'"),
        ("my_bn_adapter:Missing", "has no attribute 'Missing'"),
        ("my_bn_adapter:broken", "cannot construct 'my_bn_adapter:broken': RuntimeError: no framework here"),
        (f"{tmp_path / 'none.py'}:Good", "no file"),
        ("nonsense", "unknown implementation 'nonsense'"),
        ("fault:nope", "unknown fault 'nope'"),
    ):
        capsys.readouterr()
        assert main([spec]) == 2, spec
        assert why in capsys.readouterr().err, spec
    assert main(["--no-such-option", "fault:none"]) == 2


def test_json_report(adapter_module, tmp_path) -> None:
    out = tmp_path / "run.json"
    assert main(["my_bn_adapter:Good", "fault:eps-outside-sqrt", "--quiet", "--json", str(out)]) == 1
    run = json.loads(out.read_text())
    assert run["bnref"] == bnref.__version__ and run["exit_status"] == 1 and not run["passed"]
    assert [r["adapter"] for r in run["reports"]] == ["my_bn_adapter:Good", "fault:eps-outside-sqrt"]
    good, faulty = run["reports"]
    assert good["implementation"] == "planted fault: none (the control)" and good["passed"]
    fields = {"section", "check", "verdict", "measured", "bound", "numbers", "ratio", "detail"}
    assert all(set(line) == fields for line in good["lines"])
    assert "eps inside sqrt(var + eps)" in [li["check"] for li in faulty["lines"] if li["verdict"] == "FAIL"]
    assert main(["no_such_module:X", "--json", str(out)]) == 2
    error = json.loads(out.read_text())
    assert error["exit_status"] == 2 and "no_such_module" in error["error"] and error["reports"] == []


def test_python_dash_m_exit_statuses(adapter_module) -> None:
    """The statuses reach the shell: 0 for a correct outside adapter, 1 for a planted fault, 2 for a bad module."""

    def status(*args: str) -> int:
        done = subprocess.run(
            [sys.executable, "-m", "bnref.conformance", *args, "--quiet"],
            cwd=adapter_module,
            capture_output=True,
            text=True,
            check=False,
        )
        return done.returncode

    assert status("my_bn_adapter:Good") == 0
    assert status("fault:one-pass-variance") == 1
    assert status("no.such.module:Adapter") == 2


def test_adapter_for_builds_what_a_spec_names(adapter_module) -> None:
    assert isinstance(adapter_for("my_bn_adapter:Good"), PlantedFault)
    assert adapter_for("my_bn_adapter:make_faulty").fault == "momentum-backwards"
    assert adapter_for("fault:none").name == "fault:none"
    with pytest.raises(AdapterError, match="not an adapter"):
        adapter_for("math:pi")
