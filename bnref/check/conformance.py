"""Conformance: point the NumPy oracle at any Batch Normalization implementation.

``check(adapter) -> Report`` takes a BN implementation through a small adapter (``bnref.check.contract.Adapter``)
and reports, line by line,

* its **conventions, inferred from behaviour** (book, chapter "Frameworks side by side"; ``bnref.check.probes``):
  the axes it reduces, ``eps`` (and whether it sits inside ``sqrt(var + eps)`` with the biased variance), the
  running-average rule (a constant weight, the cumulative ``1/k``, a zero-debiased average, or a first batch that
  replaces the initial value: ``bnref.check.rules``) with the measured weights as its evidence, the variance fed to
  the running estimate (biased or unbiased) and the initial running statistics. With nothing declared these are
  ``INFO`` lines; an adapter that declares the ``Convention`` it claims (``adapter.convention``, and
  ``adapter.running_rule`` for a rule a convention cannot state) gets ``PASS``/``FAIL`` on each, within a tolerance
  derived from the same error model as the bounds (``bnref.testing``);
* its **float32 accuracy** against the float64 oracle run under the *measured* convention (so that the numerics are
  judged apart from the conventions; ``bnref.check.accuracy``): the training output, the gradients (if the adapter
  gives them), the running mean and variance over three steps and the inference output, each against its bound
  (derived in the book's appendix ``ch-bounds``), three seeds;
* its **edge cases**: one value per channel, a constant channel, the ``|mean|/std`` sweep from 1 to 1e4, and float16 /
  bfloat16 inputs.

An adapter that breaks its contract while being checked (an output of the wrong shape or dtype, an exception from one
of its methods) gets one ``FAIL`` line in the section "adapter contract", naming the call, the rule and what it
returned, and the check stops there. The ``Report`` renders as a text table, Markdown and JSON
(``bnref.check.report``). ``assert_conforms(adapter)`` is the same check for a pytest suite.

``adapter_for(spec)`` builds an adapter from a name: a shipped one (``NAMES``: PyTorch, Keras on any backend, Flax,
bnref's from-scratch layers, in ``bnref.check.adapters``), a planted fault (``"fault:<fault>"``, ``PlantedFault``),
an importable class or factory (``"package.module:Class"``) or one in a file (``"path/to/file.py:Class"``).
``run(spec)`` and ``run_many(specs)`` check them, Keras in a subprocess with ``KERAS_BACKEND`` set. The command line
is ``python -m bnref.conformance`` (``bnref.check.cli``).

This module imports NumPy only; each adapter imports its framework when it is created.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from bnref.check.accuracy import (
    SWEEP,
    Model,
    accuracy_lines,
    constant_channel_line,
    half_lines,
    one_value_line,
    sweep_line,
)
from bnref.check.contract import REQUIRED, Adapter, ContractError, error_text
from bnref.check.probes import convention_lines, probe_eps, probe_layout, probe_running
from bnref.check.report import FAIL, ZH, Line, Report
from bnref.check.rules import RunningRule
from bnref.conventions import PYTORCH
from bnref.reference import batch_norm_backward, batch_norm_forward

__all__ = [
    "Adapter",
    "AdapterError",
    "ContractError",
    "Line",
    "Report",
    "RunningRule",
    "check",
    "assert_conforms",
    "PlantedFault",
    "FAULTS",
    "NAMES",
    "adapter_for",
    "run",
    "run_many",
    "ZH",
    "RATIOS",
    "SEEDS",
    "SWEEP",
]

#: The |mean|/std ratios of the sweep.
RATIOS: tuple[float, ...] = (1.0, 3.0, 100.0, 1e3, 1e4)
#: Seeds behind every accuracy verdict (the project's rule: at least three).
SEEDS: tuple[int, ...] = (0, 1, 2)
#: The shipped implementations (adapters in ``bnref.check.adapters``).
NAMES: tuple[str, ...] = (
    "torch",
    "keras-tensorflow",
    "keras-jax",
    "keras-torch",
    "flax",
    "flax-exact",
    "bnref-torch",
    "bnref-keras",
    "bnref-jax",
)


class AdapterError(ValueError):
    """No adapter to check: a spec that cannot be imported or constructed, an object without the required methods,
    an invalid layout (the command line's exit status 2)."""


# ----------------------------------------------------------------------------------------------------
# check
# ----------------------------------------------------------------------------------------------------


def _validate(adapter: Any, seeds: Sequence[int], ratios: Sequence[float]) -> None:
    missing = [m for m in REQUIRED if not callable(getattr(adapter, m, None))]
    if missing:
        raise AdapterError(
            f"the adapter must have the methods {', '.join(f'{m}()' for m in missing)}; "
            "see bnref.check.contract.Adapter"
        )
    if len(seeds) < 1 or not ratios or list(ratios) != sorted(ratios):
        raise ValueError("seeds must be non-empty and ratios non-empty and increasing")
    layout = getattr(adapter, "layout", None)
    if layout is not None:
        if not (isinstance(layout, str) and layout.count("N") == 1 and layout.count("C") == 1 and layout[0] == "N"):
            raise AdapterError(f"layout must start with N and contain one C, e.g. 'NC', 'NCHW', 'NHWC'; got {layout!r}")
    elif not (isinstance(getattr(adapter, "ndim", None), int) and adapter.ndim >= 2):
        raise AdapterError(
            f"an adapter with layout None needs ndim, an int >= 2; got {getattr(adapter, 'ndim', None)!r}"
        )


def _name_and_header(adapter: Any) -> tuple[str, str]:
    name = getattr(adapter, "name", None)
    if not isinstance(name, str) or not name or (name == Adapter.name and type(adapter) is not Adapter):
        name = type(adapter).__name__
    describe = getattr(adapter, "describe", None)
    try:
        header = str(describe()) if callable(describe) else name
    except Exception as err:
        header = f"{name} (describe() raised {error_text(err)})"
    return name, header


def check(
    adapter: Any,
    *,
    seeds: Sequence[int] = SEEDS,
    ratios: Sequence[float] = RATIOS,
    half_dtypes: Sequence[str] = ("float16", "bfloat16"),
) -> Report:
    """Check one BN implementation against the NumPy oracle; see the module docstring for every line.

    Parameters
    ----------
    adapter : Adapter (or any object with its methods)
    seeds : the seeds of every accuracy line (at least three for a verdict)
    ratios : the |mean|/std values of the sweep, increasing
    half_dtypes : the half-precision input types tried

    Returns
    -------
    Report
        An adapter that breaks its contract during the check ends the report with one FAIL line, section
        "adapter contract".

    Raises
    ------
    AdapterError
        The adapter lacks a required method or declares an invalid layout (nothing could be checked).
    ValueError
        Empty seeds or ratios, ratios not increasing.
    """
    _validate(adapter, seeds, ratios)
    name, header = _name_and_header(adapter)
    lines: list[Line] = []
    measured: dict[str, Any] = {}
    try:
        layout, layout_line = probe_layout(adapter)
        lines.append(layout_line)
        measured["layout"] = layout
        eps = probe_eps(adapter, layout)
        measured.update(eps=eps.eps, eps_consistent=eps.consistent)
        running = probe_running(adapter, layout, eps.eps if eps.eps > 0 else 1e-5)
        measured.update(running.as_dict())
        declared_rule = getattr(adapter, "running_rule", None)
        conv_lines, conv, rule, init = convention_lines(
            eps, running, getattr(adapter, "convention", None), declared_rule
        )
        lines += conv_lines
        measured["eps_used"] = conv.eps
        model = Model(layout, conv.replace(axis=layout.index("C")), rule, init)
        lines += accuracy_lines(adapter, model, seeds)
        lines.append(one_value_line(adapter, model))
        lines.append(constant_channel_line(adapter, model, seeds))
        lines.append(sweep_line(adapter, model, ratios, seeds))
        for dtype in half_dtypes:
            lines += half_lines(adapter, model, dtype, seeds)
    except ContractError as broken:
        detail = {"call": broken.call, "contract": broken.contract, "got": broken.got}
        lines.append(
            Line(
                "adapter contract",
                "adapter contract",
                FAIL,
                f"{broken.call} {broken.got}",
                broken.contract,
                detail=detail,
            )
        )
    return Report(name, header, tuple(lines), measured)


def assert_conforms(adapter: Any, **kwargs: Any) -> Report:
    """``check(adapter, **kwargs)`` for a test suite: ``AssertionError`` with the failing lines if any line fails.

    ``adapter`` is an adapter object or a spec of ``adapter_for`` (a shipped name, ``"fault:<fault>"``,
    ``"package.module:Class"``, ``"path/to/file.py:Class"``). Returns the report when every line passes::

        def test_my_batch_norm_conforms():
            assert_conforms(MyAdapter(), half_dtypes=())
    """
    report = run(adapter, **kwargs) if isinstance(adapter, str) else check(adapter, **kwargs)
    if not report.passed:
        count = len(report.failures)
        raise AssertionError(
            f"{report.implementation} does not conform: {count} failing line{'s' * (count != 1)}\n"
            + report.failing_text()
        )
    return report


# ----------------------------------------------------------------------------------------------------
# Planted faults: a NumPy BN with one deliberate mistake each, for demonstration and for the tests
# ----------------------------------------------------------------------------------------------------

#: The planted faults, each with the line of the report that should catch it.
FAULTS: dict[str, str] = {
    "biased-running-var": "running variance fed",
    "momentum-backwards": "running-average weight",
    "eps-outside-sqrt": "eps inside sqrt(var + eps)",
    "one-pass-variance": SWEEP,
}


class PlantedFault(Adapter):
    """A float32 NumPy BN on (N, C) inputs that claims PyTorch's convention, with one planted fault (or none).

    ``fault=None`` is the correct layer, the control: the two-pass batch statistics, ``y = gamma (x - mean) /
    sqrt(var + eps) + beta``, ``r = (1 - 0.1) r + 0.1 b`` with the unbiased variance fed to the running estimate.
    The faults, each a mistake found in real BN code:

    * ``"biased-running-var"``: the biased batch variance feeds the running estimate (PyTorch feeds m/(m-1) times it);
    * ``"momentum-backwards"``: ``r = momentum r + (1 - momentum) b`` with PyTorch's momentum 0.1 (Keras' reading);
    * ``"eps-outside-sqrt"``: ``(x - mean) / (sqrt(var) + eps)``;
    * ``"one-pass-variance"``: ``var = mean(x^2) - mean(x)^2`` in float32 (eq-fwd-one-pass).

    The backward pass is the reference's compact formula in float32. float16 inputs are computed in float32 and
    returned as float16; NumPy has no bfloat16 (``create`` raises).
    """

    layout = "NC"
    convention = PYTORCH

    def __init__(self, fault: str | None = None) -> None:
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)} (or None for the correct layer)")
        self.fault = fault
        self.name = f"planted fault: {fault}" if fault else "planted fault: none (the control)"

    def describe(self) -> str:
        return f"NumPy {np.__version__}: bnref.conformance.PlantedFault({self.fault!r}), float32, layout NC"

    def create(self, num_features: int, dtype: str) -> None:
        if dtype not in ("float16", "float32", "float64"):
            raise ValueError(f"NumPy has no {dtype}")
        self.dtype = np.dtype(dtype)
        self.cdtype = np.result_type(self.dtype, np.float32)
        self.gamma = np.ones(num_features, self.cdtype)
        self.beta = np.zeros(num_features, self.cdtype)
        self.running_mean = np.full(num_features, PYTORCH.init_mean, self.cdtype)
        self.running_var = np.full(num_features, PYTORCH.init_var, self.cdtype)

    def set_params(self, gamma: np.ndarray, beta: np.ndarray) -> None:
        self.gamma, self.beta = gamma.astype(self.cdtype), beta.astype(self.cdtype)

    def _stats(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = np.mean(x, axis=0)
        if self.fault == "one-pass-variance":
            return mean, np.mean(x * x, axis=0) - mean * mean
        return mean, np.mean((x - mean) ** 2, axis=0)

    def train_forward(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x).astype(self.dtype).astype(self.cdtype)
        m = x.shape[0]
        if m < 2:
            raise ValueError("one value per channel: no variance")
        mean, var = self._stats(x)
        with np.errstate(invalid="ignore"):
            if self.fault == "eps-outside-sqrt":
                x_hat = (x - mean) / (np.sqrt(var) + PYTORCH.eps)
            else:
                x_hat = (x - mean) / np.sqrt(var + PYTORCH.eps)
        w = PYTORCH.momentum
        fed = var if self.fault == "biased-running-var" else var * (m / (m - 1))
        if self.fault == "momentum-backwards":
            self.running_mean = w * self.running_mean + (1 - w) * mean
            self.running_var = w * self.running_var + (1 - w) * fed
        else:
            self.running_mean = (1 - w) * self.running_mean + w * mean
            self.running_var = (1 - w) * self.running_var + w * fed
        self.running_mean = self.running_mean.astype(self.cdtype)
        self.running_var = self.running_var.astype(self.cdtype)
        return (self.gamma * x_hat + self.beta).astype(self.dtype)

    def infer_forward(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x).astype(self.dtype).astype(self.cdtype)
        y = self.gamma * (x - self.running_mean) / np.sqrt(self.running_var + PYTORCH.eps) + self.beta
        return y.astype(self.dtype)

    def running_stats(self) -> tuple[np.ndarray, np.ndarray]:
        return self.running_mean.copy(), self.running_var.copy()

    def backward(self, x: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.asarray(x).astype(self.cdtype)
        _, cache = batch_norm_forward(x, self.gamma, self.beta, PYTORCH.eps, axis=1)
        return batch_norm_backward(np.asarray(dy).astype(self.cdtype), cache)


# ----------------------------------------------------------------------------------------------------
# Adapters by spec, Keras in a subprocess with its backend
# ----------------------------------------------------------------------------------------------------

#: The framework each shipped name runs on; a Keras name needs Keras imported with that backend (fixed at import).
_FAMILY = {
    "torch": "torch",
    "bnref-torch": "torch",
    "keras-torch": "torch",
    "flax": "jax",
    "flax-exact": "jax",
    "bnref-jax": "jax",
    "keras-jax": "jax",
    "keras-tensorflow": "tensorflow",
    "bnref-keras": "tensorflow",
}
_NEEDS_KERAS = ("keras-torch", "keras-jax", "keras-tensorflow", "bnref-keras")


def _import_object(spec: str) -> Any:
    """The object ``spec`` names: ``"package.module:Name"`` or ``"path/to/file.py:Name"`` (``Name`` may be dotted)."""
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise AdapterError(
            f"unknown implementation {spec!r}: neither a shipped name ({', '.join(NAMES)}), 'fault:<fault>', "
            "'package.module:Class' nor 'path/to/file.py:Class'"
        )
    try:
        if where.endswith(".py") or os.sep in where or "/" in where:
            if not os.path.isfile(where):
                raise AdapterError(f"cannot import {spec!r}: no file {where!r}")
            module_name = "bnref_adapter_" + os.path.splitext(os.path.basename(where))[0]
            loader = importlib.util.spec_from_file_location(module_name, where)
            module = importlib.util.module_from_spec(loader)
            sys.modules[module_name] = module
            loader.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.insert(0, os.getcwd())  # as `python -m` does, for a console script too
            module = importlib.import_module(where)
    except AdapterError:
        raise
    except BaseException as err:  # the user's module: anything it raises (SystemExit included) means no adapter
        raise AdapterError(f"cannot import {where!r} for {spec!r}: {error_text(err)}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AdapterError(f"cannot import {spec!r}: {where!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def adapter_for(spec: str) -> Any:
    """The adapter ``spec`` names.

    * a shipped name of ``NAMES`` (a Keras name needs Keras importable with its backend here; ``run`` takes care);
    * ``"fault:<fault>"`` (``FAULTS``) or ``"fault:none"``, a ``PlantedFault``;
    * ``"package.module:Name"`` or ``"path/to/file.py:Name"``: an adapter class, a zero-argument factory returning an
      adapter, or an adapter object.

    Raises ``AdapterError`` when the spec cannot be imported, constructed, or gives no adapter.
    """
    if not isinstance(spec, str):
        raise AdapterError(f"an adapter spec is a string, got {type(spec).__name__}")
    if spec.startswith("fault:"):
        fault = spec.split(":", 1)[1]
        if fault != "none" and fault not in FAULTS:
            raise AdapterError(f"unknown fault {fault!r}; known: none, {', '.join(FAULTS)}")
        adapter = PlantedFault(None if fault == "none" else fault)
        adapter.name = spec
        return adapter
    if spec in NAMES:
        from bnref.check import adapters

        try:
            return adapters.make(spec)
        except (ImportError, ValueError) as err:
            raise AdapterError(f"cannot build {spec!r}: {error_text(err)}") from None
    obj = _import_object(spec)
    is_adapter = all(callable(getattr(obj, m, None)) for m in REQUIRED)
    if isinstance(obj, type) or (callable(obj) and not is_adapter):
        try:
            obj = obj()
        except BaseException as err:
            raise AdapterError(f"cannot construct {spec!r}: {error_text(err)}") from None
    missing = [m for m in REQUIRED if not callable(getattr(obj, m, None))]
    if missing:
        raise AdapterError(
            f"{spec!r} gives a {type(obj).__name__}, not an adapter: it lacks {', '.join(missing)} "
            "(see bnref.check.contract.Adapter)"
        )
    return obj


def _keras_ready(backend: str) -> bool:
    """Whether Keras is loaded here with ``backend``."""
    keras = sys.modules.get("keras")
    return keras is not None and keras.backend.backend() == backend


def _plan(specs: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Which specs run here and which in a subprocess per framework.

    A Keras name whose backend is not loaded here goes to a subprocess with ``KERAS_BACKEND`` set; the other shipped
    names of the same framework join it (the framework is imported there anyway); the rest run here.
    """
    children: dict[str, list[str]] = {}
    for spec in specs:
        if spec in _NEEDS_KERAS and not _keras_ready(_FAMILY[spec]):
            children.setdefault(_FAMILY[spec], [])
    here = []
    for spec in specs:
        family = _FAMILY.get(spec)
        if family in children:
            children[family].append(spec)
        else:
            here.append(spec)
    return here, children


def run_many(specs: Sequence[str], **kwargs: Any) -> dict[str, Report]:
    """Check each adapter ``spec`` (see ``adapter_for``), Keras ones in one subprocess per backend, started at once.

    A shipped name that needs a Keras backend this process does not have runs in ``python -m bnref.check.cli ...
    --in-process`` with ``KERAS_BACKEND`` set, together with the other names of its framework (PyTorch, JAX or
    TensorFlow); the remaining specs run here while the subprocesses work. ``kwargs`` (seeds, ratios,
    half_dtypes) go to ``check``. Raises ``AdapterError`` for a spec without an adapter (before anything runs) and
    ``RuntimeError`` when a subprocess fails.
    """
    import subprocess
    import tempfile

    here, groups = _plan(specs)
    adapters = {spec: adapter_for(spec) for spec in here}
    children = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend, group in groups.items():
            path = os.path.join(tmp, f"{backend}.json")
            cmd = [sys.executable, "-m", "bnref.check.cli", *group, "--in-process", "--quiet", "--json", path]
            cmd += ["--options", json.dumps({k: list(v) for k, v in kwargs.items()})]
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
            log = open(os.path.join(tmp, f"{backend}.log"), "w+")  # noqa: SIM115 (a file: a full pipe would stall)
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
            children.append((backend, path, proc, log))
        reports = {spec: check(adapter, **kwargs) for spec, adapter in adapters.items()}
        for backend, path, proc, log in children:
            proc.wait()
            log.seek(0)
            err = log.read()
            log.close()
            if proc.returncode not in (0, 1) or not os.path.isfile(path):  # 1: a line failed
                raise RuntimeError(f"the conformance check on the Keras {backend} backend failed:\n{err[-3000:]}")
            with open(path) as fh:
                for d in json.load(fh)["reports"]:
                    reports[d["adapter"]] = Report.from_dict(d)
    return {spec: reports[spec] for spec in specs}


def run(spec: str, **kwargs: Any) -> Report:
    """Check the adapter ``spec`` names (see ``adapter_for``), in a subprocess where Keras needs one."""
    return run_many([spec], **kwargs)[spec]
