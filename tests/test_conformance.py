"""bnref.check.conformance: conventions inferred from behaviour, planted faults caught by their lines, every framework.

The tool for engineers (the command line, ``assert_conforms``, the running-average rules, the adapter contract) is
tested with pure-NumPy fake adapters in ``tests/test_conformance_tool.py``.

The planted faults (``bnref.check.conformance.PlantedFault``) are float32 NumPy layers that claim PyTorch's convention
and get one thing wrong each; the control (no fault) must pass every line. The framework reports are computed
once per session (``reports``): the in-process ones here, Keras in one subprocess per backend (its backend is
fixed at import), all started together.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from bnref.check import conformance
from bnref.check.cases import to_2d, to_layout
from bnref.check.conformance import FAULTS, NAMES, SWEEP, Adapter, PlantedFault, Report, check
from bnref.check.report import snap
from bnref.conventions import PYTORCH

# What each installed framework's report fails, as measured; each entry is explained by a line of the framework's
# source (versions in the report headers):
# - keras-torch: Keras 3.15.1's torch backend computes moments as mean(x^2) - mean(x)^2
#   (keras/src/backend/torch/nn.py, `moments`), so its error grows like (|mean|/std)^2; far from zero the variance
#   can come out negative and sqrt(var + eps) NaN.
# - flax: flax.linen.BatchNorm's default use_fast_variance=True computes E[x^2] - E[x]^2
#   (flax/linen/normalization.py, `_compute_stats`, Flax 0.12.8) and clips it at 0, so no NaN but the same growth.
EXPECTED_FAILURES: dict[str, set[str]] = {
    "torch": set(),
    "bnref-torch": set(),
    "keras-tensorflow": set(),
    "keras-jax": set(),
    "keras-torch": {SWEEP},
    "flax": {SWEEP},
    "flax-exact": set(),
    "bnref-keras": set(),
    "bnref-jax": set(),
}


@pytest.fixture(scope="module")
def reports() -> dict[str, Report]:
    return conformance.run_many(NAMES)


@pytest.fixture(scope="module")
def control() -> Report:
    return check(PlantedFault(None))


# ----------------------------------------------------------------------------------------------------
# The control and the planted faults
# ----------------------------------------------------------------------------------------------------


def test_control_passes_every_line(control: Report) -> None:
    assert control.passed, control.to_text()
    measured = control.convention
    assert measured["rule"] == "constant" and measured["bias"] == "unbiased"
    assert control.line("eps").measured == "eps = 1e-05"
    assert control.line("running-average weight").measured.startswith("w = 0.1 ")


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_fault_is_caught_by_its_line(fault: str, control: Report) -> None:
    report = check(PlantedFault(fault))
    line = FAULTS[fault]
    assert report.line(line).verdict == "FAIL", report.to_text()
    assert control.line(line).verdict == "PASS"
    if fault != "eps-outside-sqrt":
        # the other three faults change nothing else: only their line fails
        assert report.failures == [line], report.to_text()
    else:
        # the eps estimates depend on the spread: s/(s + eps) instead of s/sqrt(s^2 + eps)
        estimates = report.line(line).detail["estimates"]
        assert max(estimates) / min(estimates) > 5  # 2 s eps + eps^2 at s = 1e-3 and 1e-4


def test_fault_values_are_read_correctly() -> None:
    backwards = check(PlantedFault("momentum-backwards"))
    assert backwards.line("running-average weight").measured.startswith("w = 0.9 ")
    biased = check(PlantedFault("biased-running-var"))
    assert biased.line("running variance fed").measured == "biased (factor 1)"
    one_pass = check(PlantedFault("one-pass-variance")).line(SWEEP)
    ratios = dict(zip(one_pass.detail["ratios"], one_pass.detail["err_over_bound"], strict=True))
    assert ratios[1.0] <= 1.0 < ratios[100.0]  # near zero it is fine; at |mean|/std = 100 it is not


# ----------------------------------------------------------------------------------------------------
# Conventions from behaviour alone, and an adapter written in a few lines
# ----------------------------------------------------------------------------------------------------


class ChannelsLast(PlantedFault):
    """The control as a (N, L, C) layer that declares nothing: check must find its axis and its convention."""

    layout = None
    ndim = 3
    convention = None

    def train_forward(self, x):
        return super().train_forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)

    def infer_forward(self, x):
        return super().infer_forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)

    def backward(self, x, dy):
        dx, dgamma, dbeta = super().backward(x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1]))
        return dx.reshape(x.shape), dgamma, dbeta


def test_undeclared_layout_and_convention_are_inferred() -> None:
    report = check(ChannelsLast(None))
    assert report.passed
    assert report.line("reduced axes").measured == "reduces 01 of 012, channels on axis 2"
    conv = {li.check: (li.verdict, li.measured) for li in report.lines if li.section == "conventions"}
    assert conv["eps"] == ("INFO", "eps = 1e-05")
    assert conv["running variance fed"][1].startswith("unbiased")
    assert conv["running-average weight"][0] == "INFO"
    assert report.convention["layout"] == "NLC"


def test_a_minimal_adapter_without_optional_methods() -> None:
    class Minimal(Adapter):
        name, layout = "minimal", "NC"

        def create(self, num_features, dtype):
            self.bn = PlantedFault(None)
            self.bn.create(num_features, dtype)

        def train_forward(self, x):
            return self.bn.train_forward(x)

        def infer_forward(self, x):
            return self.bn.infer_forward(x)

        def running_stats(self):
            return self.bn.running_stats()

    report = check(Minimal(), half_dtypes=())
    assert report.passed
    assert report.line("gradients").verdict == "INFO"
    assert "gradient dx" not in report.checks


def test_torch_settings_are_measured() -> None:
    from bnref.check.adapters import TorchAdapter

    custom = check(TorchAdapter("native", layout="NC", eps=1e-3, momentum=0.3), half_dtypes=())
    assert custom.passed
    assert custom.line("eps").measured == "eps = 0.001"
    assert custom.line("running-average weight").measured.startswith("w = 0.3 ")
    cumulative = check(TorchAdapter("native", layout="NC", momentum=None), half_dtypes=(), ratios=(1.0,))
    assert cumulative.line("running-average weight").measured == "w_k = 1/k (cumulative average)"
    assert cumulative.line("running-average weight").verdict == "PASS"
    # a layer built with eps 1e-3 that claims PyTorch's default fails the eps line, and only it
    wrong = TorchAdapter("native", layout="NC", eps=1e-3)
    wrong.convention = PYTORCH
    assert check(wrong, half_dtypes=(), ratios=(1.0,)).failures == ["eps"]


# ----------------------------------------------------------------------------------------------------
# Every installed framework
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_framework_report(name: str, reports: dict[str, Report]) -> None:
    report = reports[name]
    assert set(report.failures) == EXPECTED_FAILURES[name], report.to_text()
    # every convention line holds the framework to its documented convention
    for li in report.lines:
        if li.section in ("layout", "conventions"):
            assert li.verdict == "PASS", li
    # the header names the versions (and the Keras backend)
    assert re.search(r"\d+\.\d+\.\d+", report.header)
    if name.startswith("keras-"):
        assert f"on the {name.split('-', 1)[1]} backend" in report.header
    sweep = report.line(SWEEP)
    if SWEEP in EXPECTED_FAILURES[name]:
        assert sweep.detail["largest_within"] < 100  # one-pass variance: lost before |mean|/std = 100
    else:
        assert sweep.detail["largest_within"] == 1e4


def test_half_precision_outputs(reports: dict[str, Report]) -> None:
    torch_report, keras_report = reports["torch"], reports["keras-tensorflow"]
    assert torch_report.line("float16 input: output dtype").measured == "float16"
    assert torch_report.line("bfloat16 input: output dtype").measured == "bfloat16"
    assert keras_report.line("float16 input: output dtype").measured == "float32"  # the layer's float32 policy
    for report in reports.values():
        assert report.line("float16 training output").verdict == "PASS"


def test_one_value_per_channel(reports: dict[str, Report]) -> None:
    assert reports["torch"].line("one value per channel").measured.startswith("raises ValueError")
    assert reports["keras-tensorflow"].line("one value per channel").measured.startswith("returns beta")
    assert reports["flax"].line("one value per channel").measured.startswith("returns beta")


# ----------------------------------------------------------------------------------------------------
# The report and the command line
# ----------------------------------------------------------------------------------------------------


def test_report_renders_and_round_trips(control: Report) -> None:
    text = control.to_text()
    assert control.header in text and "max rel err" in text
    stable = control.to_text(numbers=False)
    assert "max rel err" not in stable and "PASS" in stable
    md = control.to_markdown()
    assert md.count("\n| ") == len(control.lines) + 1
    assert Report.from_dict(json.loads(control.to_json())) == control
    with pytest.raises(ValueError, match="schema"):
        Report.from_dict({"schema": "other"})
    assert control.line("eps").verdict_zh == "通过"


def test_command_line(tmp_path) -> None:
    out = tmp_path / "r.json"
    done = subprocess.run(
        [sys.executable, "-m", "bnref.conformance", "fault:one-pass-variance", "--json", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1, done.stderr  # a line failed
    assert f"FAILED: {SWEEP}" in done.stdout
    saved = json.loads(out.read_text())["reports"][0]
    assert saved["implementation"] == "fault:one-pass-variance" and not saved["passed"]
    bad = subprocess.run([sys.executable, "-m", "bnref.conformance", "nonsense"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown implementation" in bad.stderr


def test_import_needs_numpy_only() -> None:
    code = (
        "import sys, bnref.conformance, bnref.check.conformance, bnref.check.adapters, bnref.check.cli\n"
        "print(sorted(m for m in ('torch', 'jax', 'flax', 'keras', 'tensorflow') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="create"):
        check(object())
    with pytest.raises(ValueError, match="unknown fault"):
        PlantedFault("nope")
    bad = PlantedFault(None)
    bad.layout = "CN"
    with pytest.raises(ValueError, match="layout"):
        check(bad)
    with pytest.raises(ValueError, match="increasing"):
        check(PlantedFault(None), ratios=(10.0, 1.0))
    with pytest.raises(ValueError, match="unknown implementation"):
        conformance.run("nonsense")


def test_snap_and_layouts() -> None:
    assert snap(0.010000001, 1e-8) == 0.01
    assert snap(0.0123456789, 1e-12) == 0.0123456789
    x = np.arange(2 * 3 * 2 * 2.0).reshape(8, 3)
    for layout in ("NC", "NCHW", "NHWC", "NCL"):
        a = to_layout(x, layout)
        assert a.shape[layout.index("C")] == 3
        np.testing.assert_array_equal(to_2d(a, layout.index("C")), x)
