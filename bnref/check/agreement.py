"""Every implementation of Batch Normalization on one case, compared with the float64 NumPy reference.

``run_case(case)`` draws ``case.steps`` fresh training batches (and one inference batch), runs them through

* the NumPy reference in the case dtype,
* ``bnref.layers.torch_bn.BatchNorm`` (from scratch) and ``torch.nn.BatchNorm1d/2d/3d`` (native),
* ``bnref.layers.keras_bn.BatchNormalization`` (from scratch) and ``keras.layers.BatchNormalization`` (native),

and compares each with the NumPy reference run in float64 *under that implementation's own convention*
(PyTorch's for the torch rows, Keras' for the Keras rows): the output ``y``, the gradients ``dx``,
``dgamma``, ``dbeta`` (for the upstream gradient ``dy`` drawn with each batch), the running mean and
variance after every step, and the inference output ``y_inference``. A missing framework gives rows that
say "not installed". ``cross_convention`` measures what the two frameworks' *defaults* change.

The frameworks are driven through the shipped adapters (``bnref.check.adapters``: ``TorchAdapter`` with the case's
layout and device, ``KerasAdapter``), the same drivers the conformance tool checks; ``adapter_trace`` runs any
adapter through a case.

Keras on every backend. Keras fixes its backend when it is imported, so ``run_cases(cases)`` adds the rows
"keras-tensorflow", "keras-jax" and "keras-torch": ``on_keras_backends`` (``bnref.check.backends``) starts one
fresh process per backend, all at once, each running ``keras.layers.BatchNormalization`` on every case
(``keras_backend_rows``; gradients by the backend's own autodiff) and any other job given to it
(``bnref.check.precision.keras_sweep``), so the cost is one import per backend. Each row's ``version`` names Keras
and the backend, e.g. "Keras 3.15.1 on JAX 0.10.2". Measured on Keras 3.15.1 (``tests/test_frameworks.py``):
TensorFlow passes every case; JAX and torch compute a float64 layer in float32 (``keras.backend.result_type`` maps
float64 to float32 on every backend but TensorFlow); torch's one-pass variance fails float32 cases at
``|mean|/std = 1e3``.

Every cell is checked against a bound derived from the precision, not tuned to the data: the error model of
``bnref.testing`` (``training_bounds``, ``running_mean_bound``, ``running_var_bound``, ``inference_bound``),
derived in the book's appendix "How the checks are bounded" (``ch-bounds``; applied in ``bnref.check.truth``). A
cell passes when ``error / bound <= 1`` at every step. The bounds leave room for any summation order (CPU, GPU,
another library), yet a convention slip fails them by orders of magnitude (``tests/test_frameworks.py``).

The cases are in ``bnref.check.cases``, the truth and the comparison in ``bnref.check.truth``, the tables in
``bnref.check.tables``; this module names them all. Weight transfer between the frameworks lives in
``bnref.layers.transfer``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bnref.check.adapters import KerasAdapter, TorchAdapter
from bnref.check.backends import KERAS_BACKENDS, BackendRun, on_keras_backends
from bnref.check.cases import (
    Batches,
    Case,
    NotApplicable,
    framework_convention,
    make_batches,
    target_convention,
)
from bnref.check.contract import Adapter, as_float64
from bnref.check.tables import (
    IMPLEMENTATIONS,
    AgreementTable,
    ConventionRow,
    ConventionTable,
    Row,
    Status,
    summary_table,
)
from bnref.check.truth import QUANTITIES, Diff, Trace, bounds, compare, compare_trace, empty_trace, reference_run
from bnref.check.truth import reference_trace as reference_trace
from bnref.conventions import Convention

__all__ = [
    "QUANTITIES",
    "IMPLEMENTATIONS",
    "Case",
    "Status",
    "NotApplicable",
    "framework_convention",
    "Batches",
    "make_batches",
    "Trace",
    "reference_trace",
    "compare_trace",
    "Diff",
    "Row",
    "AgreementTable",
    "adapter_trace",
    "run_case",
    "summary_table",
    "ConventionRow",
    "ConventionTable",
    "cross_convention",
    "KERAS_BACKENDS",
    "BackendRun",
    "on_keras_backends",
    "keras_backend_rows",
    "keras_rows_job",
    "with_keras_backend_rows",
    "run_cases",
]

#: The name a row gives a framework that cannot be imported.
_FRAMEWORK_NAMES = {"torch": "PyTorch", "keras": "TensorFlow/Keras"}


class _NotInstalled(Exception):
    """The framework of an implementation is not installed; the message names it."""


def adapter_trace(adapter: Adapter, case: Case, data: Batches) -> Trace:
    """Drive ``adapter`` through ``case`` on ``data``: a fresh layer with ``data``'s gamma and beta, one
    ``train_step`` per batch (y, dx, dgamma, dbeta and the running statistics after it), then for mode
    "train+inference" ``infer_forward`` on the inference batch. The adapter's layout must be ``case.layout``."""
    adapter.create(case.channels, case.dtype)
    adapter.set_params(data.gamma, data.beta)
    trace = empty_trace()
    for x, dy in zip(data.xs, data.dys, strict=True):
        y, dx, dgamma, dbeta = adapter.train_step(x, dy)
        running_mean, running_var = adapter.running_stats()
        for q, v in zip(QUANTITIES, (y, dx, dgamma, dbeta, running_mean, running_var), strict=False):
            trace[q].append(as_float64(v))
    if case.mode == "train+inference":
        trace["y_inference"].append(as_float64(adapter.infer_forward(data.x_inference)))
    return trace


def _row_adapter(name: str, case: Case, conv: Convention, device: str = "cpu") -> Adapter:
    """The adapter of the row ``name`` ("torch scratch", "keras native", ...) for ``case`` under ``conv``."""
    implementation = "native" if name.endswith("native") else "bnref"
    if name.startswith("torch"):
        return TorchAdapter(implementation, case.layout, device=device, eps=conv.eps, momentum=conv.momentum)
    return KerasAdapter(implementation, case.layout, momentum=conv.momentum, epsilon=conv.eps)


def _framework_trace(framework: str, adapter: Adapter, case: Case, data: Batches) -> Trace:
    """``adapter_trace``, with an ImportError of the framework as ``_NotInstalled``."""
    try:
        return adapter_trace(adapter, case, data)
    except ImportError:
        raise _NotInstalled(_FRAMEWORK_NAMES.get(framework, framework)) from None


def _run_row(
    name: str, case: Case, conv: Convention, trace_of: Callable, truth_for: Callable, version: str = ""
) -> Row:
    """One implementation's row: run ``trace_of()`` and compare it with the float64 truth under ``conv``."""
    try:
        trace = trace_of()
    except _NotInstalled as why:
        return Row(name, case.dtype, conv.name, Status.NOT_INSTALLED, str(why), version=version)
    except NotApplicable as why:
        return Row(name, case.dtype, conv.name, Status.NOT_APPLICABLE, str(why), version=version)
    except (RuntimeError, ValueError, TypeError) as err:  # a framework refusing the case is a finding
        return Row(name, case.dtype, conv.name, Status.ERROR, f"{type(err).__name__}: {err}", version=version)
    truth, bound = truth_for(conv)
    return Row(name, case.dtype, conv.name, Status.RAN, diffs=compare(trace, truth, bound), version=version)


def _truths(case: Case, data: Batches) -> Callable[[Convention], tuple[Trace, dict]]:
    """The float64 truth and bounds of ``case`` under a convention, computed once per convention."""
    truths: dict[str, tuple[Trace, dict]] = {}

    def truth_for(conv: Convention) -> tuple[Trace, dict]:
        if conv.name not in truths:
            trace, caches = reference_run(case, conv, data, "float64")
            truths[conv.name] = (trace, bounds(case, conv, trace, caches, data))
        return truths[conv.name]

    return truth_for


def run_case(
    case: Case,
    device: str = "cpu",
    frameworks: Sequence[str] = ("numpy", "torch", "keras"),
) -> AgreementTable:
    """Run ``case`` through every implementation and compare each with the float64 reference.

    Parameters
    ----------
    case : Case
    device : str
        Torch device for the torch rows ("cpu", "cuda", "cuda:1", ...).
    frameworks : sequence of {"numpy", "torch", "keras"}
        Which implementations to run (the GPU script runs "numpy" and "torch" only).

    Returns
    -------
    AgreementTable
        Rows in the order of ``IMPLEMENTATIONS``; for a native case the NumPy row appears once per
        framework convention. Rows that cannot run say why.
    """
    unknown = set(frameworks) - {"numpy", "torch", "keras"}
    if unknown:
        raise ValueError(f"unknown frameworks {sorted(unknown)}; choose from numpy, torch, keras")
    data = make_batches(case)
    rows: list[Row] = []
    truth_for = _truths(case, data)
    target = target_convention(case)
    if target is not None:
        numpy_convs = [target]
    else:
        numpy_convs = [framework_convention(case, f) for f in ("torch", "keras")]

    for name, framework in IMPLEMENTATIONS:
        if framework not in frameworks:
            continue
        if framework == "numpy":
            convs: list[Convention] = numpy_convs
        else:
            try:
                convs = [framework_convention(case, framework)]
            except NotApplicable as why:
                rows.append(Row(name, case.dtype, "-", Status.NOT_APPLICABLE, str(why)))
                continue
        for conv in convs:

            def trace_of(conv: Convention = conv, name: str = name, framework: str = framework) -> Trace:
                if framework == "numpy":
                    return reference_run(case, conv, data, case.dtype)[0]
                return _framework_trace(framework, _row_adapter(name, case, conv, device), case, data)

            rows.append(_run_row(name, case, conv, trace_of, truth_for))
    return AgreementTable(case, rows)


def cross_convention(case: Case) -> ConventionTable:
    """torch native (``PYTORCH``) against Keras native (``KERAS``) on the same batches.

    The differences are the conventions' (eps 1e-5 vs 1e-3 in ``y`` and the gradients; momentum 0.1 vs
    0.01 and unbiased vs biased variance in the running estimates, and through them in ``y_inference``);
    each is predicted by the float64 reference under both conventions.
    ``case.convention`` must be None (native defaults); eps/momentum overrides are not allowed.
    """
    if case.convention is not None or case.eps is not None:
        raise ValueError("cross_convention compares the frameworks' own defaults; use a Case without convention or eps")
    data = make_batches(case)
    traces, truths, bounds_of = {}, {}, {}
    for framework in ("torch", "keras"):
        conv = framework_convention(case, framework)
        try:
            adapter = _row_adapter(f"{framework} native", case, conv)
            traces[framework] = _framework_trace(framework, adapter, case, data)
        except _NotInstalled as why:
            return ConventionTable(case, [], Status.NOT_INSTALLED, str(why))
        truth, caches = reference_run(case, conv, data, "float64")
        truths[framework], bounds_of[framework] = truth, bounds(case, conv, truth, caches, data)
    rows = []
    for q in QUANTITIES:
        if not truths["torch"][q]:
            continue
        measured = max(
            float(np.max(np.abs(a - b))) for a, b in zip(traces["torch"][q], traces["keras"][q], strict=False)
        )
        predicted = max(
            float(np.max(np.abs(a - b))) for a, b in zip(truths["torch"][q], truths["keras"][q], strict=False)
        )
        bound = max(bt + bk for bt, bk in zip(bounds_of["torch"][q], bounds_of["keras"][q], strict=False))
        rows.append(ConventionRow(q, measured, predicted, bound))
    return ConventionTable(case, rows)


# ----------------------------------------------------------------------------------------------------
# Keras on every backend: one fresh process per backend (the backend is fixed when Keras is imported)
# ----------------------------------------------------------------------------------------------------


def keras_backend_rows(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The row of ``keras.layers.BatchNormalization`` on the loaded backend for each case (a job).

    Runs in a backend process of ``on_keras_backends``; ``cases`` are ``dataclasses.asdict(Case)``. Each
    case is compared with the float64 reference under Keras' convention, exactly as ``run_case`` does in
    this process; the gradients come from the backend's own autodiff (``KerasAdapter.train_step``:
    ``tf.GradientTape``, ``jax.vjp`` of ``layer.stateless_call``, ``torch.autograd``). Returns one JSON-ready row
    per case.
    """
    import keras

    name = f"keras-{keras.backend.backend()}"
    out = []
    for fields in cases:
        case = Case(**fields)
        data = make_batches(case)
        try:
            conv = framework_convention(case, "keras")
        except NotApplicable as why:
            row = Row(name, case.dtype, "-", Status.NOT_APPLICABLE, str(why))
        else:

            def trace_of(case: Case = case, conv: Convention = conv, data: Batches = data) -> Trace:
                return adapter_trace(_row_adapter("keras native", case, conv), case, data)

            row = _run_row(name, case, conv, trace_of, _truths(case, data))
        out.append(
            {
                "implementation": row.implementation,
                "dtype": row.dtype,
                "convention": row.convention,
                "status": row.status.value,
                "reason": row.reason,
                "diffs": {q: dataclasses.asdict(d) for q, d in row.diffs.items()},
            }
        )
    return out


def keras_rows_job(cases: Sequence[Case]) -> tuple[str, dict[str, Any]]:
    """The job of ``on_keras_backends`` that runs ``cases`` through Keras' layer (``keras_backend_rows``)."""
    return "bnref.check.agreement:keras_backend_rows", {"cases": [dataclasses.asdict(c) for c in cases]}


def with_keras_backend_rows(
    tables: Sequence[AgreementTable], runs: dict[str, BackendRun], job: str = "agreement"
) -> list[AgreementTable]:
    """``tables`` with one more row per backend run, "keras-<backend>", from the results of ``job``.

    A backend whose process failed gives rows with status "not installed" (its framework cannot be
    imported) or "error", and the reason.
    """
    out = []
    for i, table in enumerate(tables):
        rows = list(table.rows)
        for backend, run in runs.items():
            name = f"keras-{backend}"
            if not run.ok:
                missing = "ModuleNotFoundError" in run.error or "Unable to import" in run.error
                status = Status.NOT_INSTALLED if missing else Status.ERROR
                reason = run.error.strip().splitlines()[-1] if run.error.strip() else run.error
                rows.append(Row(name, table.case.dtype, "-", status, reason, version=run.label))
                continue
            got = run.results[job][i]
            diffs = {q: Diff(**d) for q, d in got["diffs"].items()}
            rows.append(
                Row(name, got["dtype"], got["convention"], Status(got["status"]), got["reason"], diffs, run.label)
            )
        out.append(AgreementTable(table.case, rows))
    return out


def run_cases(
    cases: Sequence[Case],
    device: str = "cpu",
    frameworks: Sequence[str] = ("numpy", "torch", "keras"),
    keras_backends: Sequence[str] = KERAS_BACKENDS,
) -> list[AgreementTable]:
    """``run_case`` for each case, plus a row per Keras backend ("keras-tensorflow", "keras-jax", "keras-torch").

    The in-process rows are those of ``run_case``; the backend rows run ``keras.layers.BatchNormalization``
    in one process per backend (``on_keras_backends``), all cases in one go. Their ``version`` names the
    Keras and backend versions.
    """
    runs = on_keras_backends({"agreement": keras_rows_job(cases)}, keras_backends) if keras_backends else {}
    return with_keras_backend_rows([run_case(c, device, frameworks) for c in cases], runs)
