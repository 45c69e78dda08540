"""bnref.experiments.survey: the conformance survey of frameworks the project does not install.

None of these tests needs PaddlePaddle, MindSpore, Jittor, Haiku or Equinox: the adapters must import without their
framework, the command line and the record writer are plain Python, and the runner path (a subprocess that runs
``check`` on an adapter and answers in JSON, then the record) is proved with a tiny fake framework written here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bnref import records
from bnref.experiments import survey
from bnref.experiments.survey_adapters import ADAPTERS, Output

FRAMEWORK_MODULES = ("paddle", "mindspore", "jittor", "haiku", "equinox", "jax", "torch", "tensorflow")


def test_the_adapters_import_without_their_frameworks():
    """Every adapter module imports, and every adapter instantiates, with NumPy alone: no framework is imported."""
    code = textwrap.dedent(
        f"""
        import importlib, sys
        from bnref.experiments.survey_adapters import ADAPTERS
        for spec in ADAPTERS.values():
            module, cls = spec.split(":")
            adapter = getattr(importlib.import_module("bnref.experiments.survey_adapters." + module), cls)()
            assert adapter.layout in ("NCHW", "NHWC"), adapter.layout
            assert callable(adapter.running_stats) and callable(adapter.backward)
        print(sorted(m for m in {FRAMEWORK_MODULES!r} if m in sys.modules))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing the adapters imported {out.strip()}"


def test_every_adapter_is_surveyed_and_every_framework_has_an_adapter():
    adapters = {fw.adapter for fw in survey.FRAMEWORKS.values()}
    assert len(adapters) == len(ADAPTERS) == len(survey.FRAMEWORKS)
    for fw in survey.FRAMEWORKS.values():
        module, cls = fw.adapter.split(":")
        assert module.startswith("bnref.experiments.survey_adapters.") and cls.endswith("Adapter")
        assert fw.requirements[0].startswith("numpy") and any("==" in r for r in fw.requirements)


def test_output_carries_values_and_a_dtype_name():
    out = Output([1.5, -2.0], "bfloat16")
    assert out.dtype == "bfloat16" and out.shape == (2,)
    assert [float(v) for v in __import__("numpy").array(out, dtype="float64")] == [1.5, -2.0]


# ----------------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------------


def test_select_expands_groups_and_keeps_the_survey_order():
    names = [fw.name for fw in survey.select("equinox,paddle")]
    assert names == ["paddle", "equinox-ema", "equinox-batch"]
    assert [fw.name for fw in survey.select(None)] == list(survey.FRAMEWORKS)
    with pytest.raises(ValueError, match="unknown framework 'caffe'"):
        survey.select("paddle,caffe")


def test_parse_args(tmp_path):
    args = survey.parse_args(["--out", str(tmp_path), "--frameworks", "haiku,jittor", "--seeds", "0,1"])
    assert [fw.name for fw in args.frameworks] == ["jittor", "haiku"]
    assert args.out == tmp_path and args.seeds == [0, 1] and not args.no_install
    assert survey.parse_args(["--list"]).list


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--frameworks", "paddle"], "--out is required"),
        (["--out", "x", "--frameworks", "caffe"], "unknown framework"),
        (["--out", "x", "--seeds", "a,b"], "comma-separated integers"),
    ],
)
def test_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        survey.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_list_names_every_framework_and_installs_nothing(tmp_path, capsys):
    assert survey.main(["--list", "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in survey.FRAMEWORKS:
        assert name in out
    assert "not yet made" in out and list(tmp_path.iterdir()) == []


def test_no_install_without_an_environment_fails_with_status_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(records, "code_version", lambda: "0" * 40)  # a clean tree: the command may write records
    status = survey.main(
        ["--out", str(tmp_path / "out"), "--frameworks", "paddle", "--cache", str(tmp_path), "--no-install"]
    )
    assert status == 1
    assert "no environment" in capsys.readouterr().err


def test_writing_records_refuses_a_dirty_tree(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(records, "code_version", lambda: "0" * 40 + "+dirty")
    status = survey.main(["--out", str(tmp_path / "out"), "--frameworks", "paddle", "--cache", str(tmp_path)])
    assert status == 2 and "--allow-dirty" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing installed, nothing written


def test_ensure_venv_makes_the_environment_then_installs_the_pins(tmp_path):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    fw = survey.FRAMEWORKS["mindspore"]
    exe, seconds = survey.ensure_venv(fw, tmp_path, python="/usr/bin/python3", run=fake_run)
    assert exe == tmp_path / "mindspore" / "bin" / "python" and seconds >= 0
    assert calls[0] == ["/usr/bin/python3", "-m", "venv", str(tmp_path / "mindspore")]
    assert calls[1][:4] == [str(exe), "-m", "pip", "install"] and calls[1][-2:] == list(fw.requirements)


def test_ensure_venv_reports_a_failing_install(tmp_path):
    def failing(cmd, stdout=None, **kwargs):
        stdout.write("ERROR: No matching distribution found for paddlepaddle==3.3.*\n")
        return subprocess.CompletedProcess(cmd, 1)

    with pytest.raises(RuntimeError, match="No matching distribution"):
        survey.ensure_venv(survey.FRAMEWORKS["paddle"], tmp_path, run=failing)


def test_the_jittor_environment_runs_offline(tmp_path):
    env = survey.child_environment(survey.FRAMEWORKS["jittor"], tmp_path, source=Path("/src"))
    assert env["use_mkl"] == "0" and env["nvcc_path"] == "" and env["JITTOR_HOME"] == str(tmp_path / "jittor-home")
    assert env["PYTHONPATH"].split(":")[0] == "/src"


# ----------------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------------


def fake_result() -> dict:
    line = {"section": "conventions", "check": "eps", "verdict": "FAIL", "measured": "eps = 0.001", "bound": "1e-05"}
    return {
        "report": {
            "schema": "s",
            "implementation": "paddle",
            "header": "h",
            "passed": False,
            "convention": {"eps": 1e-3},
            "lines": [line, {**line, "check": "layout", "verdict": "PASS"}],
        },
        "text": ["h", "section check ..."],
        "versions": {"paddlepaddle": "3.3.1"},
        "python": "3.11.7",
        "machine": {"cpu": "Some CPU (2 logical CPUs)"},
        "seconds": 1.5,
    }


def test_make_and_write_record(tmp_path):
    fw = survey.FRAMEWORKS["paddle"]
    record = survey.make_record(fw, fake_result(), install_seconds=12.0, run_seconds=3.0, code="abc")
    assert record["schema"] == survey.SCHEMA and record["version"] == "3.3.1" and record["framework"] == "PaddlePaddle"
    assert record["passed"] is False and record["failures"] == ["eps"]
    assert record["seconds"] == {"install": 12.0, "check": 1.5, "run": 3.0}
    assert record["device"] == {"type": "cpu", "name": "Some CPU (2 logical CPUs)"}
    path = survey.write_record(record, tmp_path / "results")
    assert path == tmp_path / "results" / "conformance-paddle.cpu.json"
    assert json.loads(path.read_text()) == record
    with pytest.raises(ValueError, match="not a bnref.survey/1 record"):
        survey.write_record({"schema": "other"}, tmp_path)


# ----------------------------------------------------------------------------------------------------
# The runner path, with a fake framework
# ----------------------------------------------------------------------------------------------------

FAKE_FRAMEWORK = '''
"""fakebn: a "framework" with one BN layer in NumPy (two-pass, PyTorch's convention), for the survey's test."""
import numpy as np

__version__ = "0.0.1"


class BatchNorm:
    def __init__(self, channels, eps=1e-5, momentum=0.1):
        self.eps, self.momentum = eps, momentum
        self.weight, self.bias = np.ones(channels, np.float32), np.zeros(channels, np.float32)
        self.running_mean, self.running_var = np.zeros(channels, np.float32), np.ones(channels, np.float32)

    def __call__(self, x, training):
        x = np.asarray(x, np.float32)
        if training:
            mean, var = x.mean(axis=0), ((x - x.mean(axis=0)) ** 2).mean(axis=0)
            m, w = x.shape[0], self.momentum
            self.running_mean = ((1 - w) * self.running_mean + w * mean).astype(np.float32)
            self.running_var = ((1 - w) * self.running_var + w * var * m / (m - 1)).astype(np.float32)
        else:
            mean, var = self.running_mean, self.running_var
        return (self.weight * (x - mean) / np.sqrt(var + self.eps) + self.bias).astype(np.float32)
'''

FAKE_ADAPTER = """
from bnref.check.conformance import Adapter


class FakeAdapter(Adapter):
    name, layout = "fake", "NC"

    def versions(self):
        import fakebn

        return {"fakebn": fakebn.__version__}

    def create(self, num_features, dtype):
        import fakebn

        if dtype != "float32":
            raise ValueError(f"fakebn takes float32 only, not {dtype}")
        self.bn = fakebn.BatchNorm(num_features)

    def train_forward(self, x):
        return self.bn(x, training=True)

    def infer_forward(self, x):
        return self.bn(x, training=False)

    def running_stats(self):
        return self.bn.running_mean.copy(), self.bn.running_var.copy()
"""


def test_the_runner_checks_in_a_subprocess_and_writes_the_record(tmp_path):
    """A fake framework importable only through ``extra_path``: the check runs in a subprocess of this interpreter,
    finds ``bnref`` through PYTHONPATH, and the record holds every line of its report."""
    (tmp_path / "fakebn.py").write_text(FAKE_FRAMEWORK)
    (tmp_path / "fake_adapter.py").write_text(FAKE_ADAPTER)
    fw = survey.Framework(
        "fake", "FakeBN", "fakebn.BatchNorm", "fakebn", ("numpy",), "fake_adapter:FakeAdapter", "fake"
    )
    options = {"seeds": [0], "ratios": [1.0, 1e4], "half_dtypes": ["float16"]}
    path = survey.survey_one(
        fw, tmp_path / "out", sys.executable, cache=tmp_path / "cache", extra_path=[tmp_path], options=options
    )
    record = json.loads(path.read_text())
    assert path.name == "conformance-fake.cpu.json"
    assert record["version"] == "0.0.1" and record["python"] == sys.version.split()[0]
    checks = {li["check"]: li for li in record["lines"]}
    assert checks["reduced axes"]["verdict"] == "PASS"
    assert checks["running variance fed"]["measured"].startswith("unbiased")
    assert checks["float16 input"]["verdict"] == "INFO" and "float32 only" in checks["float16 input"]["measured"]
    assert record["passed"] and record["failures"] == []
    assert any("no line failed" in t for t in record["text"])
    assert record["code"] and record["seconds"]["check"] > 0


def test_a_failing_check_raises_with_its_output(tmp_path):
    (tmp_path / "broken_adapter.py").write_text("raise ImportError('this adapter cannot be imported')\n")
    fw = survey.Framework("broken", "Broken", "-", "-", (), "broken_adapter:Nothing", "broken")
    with pytest.raises(RuntimeError, match="this adapter cannot be imported"):
        survey.run_check(fw, sys.executable, cache=tmp_path, extra_path=[tmp_path])


# ----------------------------------------------------------------------------------------------------
# The committed records
# ----------------------------------------------------------------------------------------------------

RESULTS = Path(__file__).resolve().parents[1] / "book" / "results"

# What each surveyed implementation fails, as recorded; each entry is explained from the framework's source (the
# adapters' docstrings cite file and version):
# - jittor: jittor/nn.py (1.3.11.0) computes the batch variance as mean(x*x) - mean(x)^2 (clamped at 0): its error
#   grows like (|mean|/std)^2, outside the bound from |mean|/std = 100.
# - haiku: haiku/_src/batch_norm.py (0.0.17) computes mean_of_squares - mean^2, not clamped, so far from zero the
#   variance can be negative and the output NaN; and a float16 layer holds scale and offset in float16
#   (w_dtype = inputs.dtype), 1.03 times the bound (Haiku's ImageNet example keeps BN in float32 under float16).
# - equinox-ema: equinox/nn/_batch_norm.py (0.13.8), mode "ema", normalises in training with the running
#   statistics after the update (documented), so from the second step its output and gradients are not BN's.
# - equinox-batch: mode "batch" starts its hidden variance at 1 and divides it by 1 - 0.99^k at inference: a bug
#   (book/results/equinox-batchnorm-report.md).
EXPECTED_FAILURES: dict[str, set[str]] = {
    "paddle": set(),
    "mindspore": set(),
    "jittor": {"|mean|/std sweep"},
    "haiku": {"|mean|/std sweep", "float16 training output"},
    "equinox-ema": {"training output y", "gradient dx", "gradient dgamma"},
    "equinox-batch": {"running variance fed", "running variance (3 steps)", "inference output"},
}


def test_every_framework_has_a_committed_record_with_its_explained_failures():
    assert set(EXPECTED_FAILURES) == set(survey.FRAMEWORKS)
    for name, fw in survey.FRAMEWORKS.items():
        path = survey.record_path(RESULTS, name)
        record = json.loads(path.read_text())
        assert record["schema"] == survey.SCHEMA and record["name"] == name
        pin = next(r for r in fw.requirements if r.startswith(fw.distribution))
        assert record["version"].startswith(pin.split("==")[1].rstrip("*")), (name, record["version"], pin)
        verdicts = {li["check"]: li["verdict"] for li in record["lines"]}
        assert record["failures"] == [c for c, v in verdicts.items() if v == "FAIL"]
        assert set(record["failures"]) == EXPECTED_FAILURES[name], name
        assert len(record["text"]) == len(record["lines"]) + 3  # header, column names, the closing verdict
