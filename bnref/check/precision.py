"""Where each implementation of Batch Normalization loses float32 precision: the ``|mean|/std`` sweep.

Every implementation computes one training step on the same float32 data, ``x = r + z`` with ``z`` standard
normal (shape (m, C), m = 1024, C = 3), for ``r = |mean|/std`` from 1 to 1e4 and three seeds. Two results are
compared with the float64 reference on the same float32 values:

* the batch variance the layer normalised with (read back exactly: each layer is built so that its running
  variance after one step *is* that variance, see ``IMPLEMENTATIONS``), and
* the training output ``y = (x - mean) / sqrt(var + eps)`` (gamma 1, beta 0).

The laws they are held against are derived in the book's appendix "How the checks are bounded"
(``ch-bounds``), in units of the float32 unit roundoff ``u = 2^-24`` and ``e = e(m) = C eps (1 + sqrt(m))``
(eq-bound-unit):

* a two-pass variance (mean first, then the mean square of the deviations) is within
  ``e var + (e (|mean| + sigma X))^2`` of the exact one (eq-bound-two-pass, with the few roundings of reading
  it back, eq-bound-running with w = 1), ``X = max|x_hat|``: a relative bound of about ``e + e^2 r^2``;
* a one-pass variance ``E[x^2] - E[x]^2`` loses relative precision as ``u r^2`` (its two sums are rounded
  at the scale ``mean^2 = r^2 var``; appendix, section "The mean and the two-pass variance", and the
  forward chapter's eq-fwd-one-pass): ``one_pass_law``;
* the output is within eq-bound-y, ``e (r + X)`` relative to ``X``; a one-pass variance adds about half its
  relative error, ``u r^2 / 2``.

``verdict`` turns a sweep into one of three stable statements (the rule is in its docstring), so that a
chapter can print it on any CPU. Every framework runs through its adapter (``bnref.check.adapters``, the drivers
the conformance tool checks). The Keras layer runs once per backend in its own process
(``bnref.check.backends.on_keras_backends``); PyTorch, Flax, JAX and the from-scratch layers run in this process.
NumPy only at import; each implementation imports its framework when it runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bnref.check.adapters import FlaxAdapter, JaxBnAdapter, KerasAdapter, TorchAdapter
from bnref.check.contract import Adapter, as_float64
from bnref.testing import channel_summaries, running_var_bound, training_bounds, unit_roundoff

__all__ = [
    "RATIOS",
    "SEEDS",
    "M",
    "CHANNELS",
    "IMPLEMENTATIONS",
    "BatchVariance",
    "sweep_data",
    "SweepResult",
    "sweep",
    "sweep_function",
    "keras_sweep",
    "keras_sweep_job",
    "results_from_backend_runs",
    "one_pass_law",
    "Verdict",
    "verdict",
]

#: The distances from zero, |mean|/std, of the sweep.
RATIOS: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4)
#: Three seeds behind every verdict.
SEEDS: tuple[int, ...] = (0, 1, 2)
#: Values per channel and channels.
M, CHANNELS = 1024, 3

#: Sums rounded with e(m) make the two-pass bound; the verdict asks for this factor beyond it.
EXCEED_FACTOR = 10.0


def sweep_data(ratio: float, seed: int, m: int = M, channels: int = CHANNELS) -> np.ndarray:
    """The float32 batch ``ratio + z``, z ~ N(0, 1) from ``numpy.random.default_rng(seed)``, shape (m, channels)."""
    if not ratio >= 0:
        raise ValueError(f"ratio must be >= 0, got {ratio!r}")
    return (ratio + np.random.default_rng(seed).standard_normal((m, channels))).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# The implementations: each maps a float32 (m, C) batch to (y, var, eps), float64 arrays
# ----------------------------------------------------------------------------------------------------
#
# Reading the batch variance back. Each framework runs through its adapter (bnref.check.adapters), built so that
# one training step overwrites the running variance with the batch variance: PyTorch's running_var =
# (1 - momentum) r + momentum * m/(m-1) var, so with momentum = 1 it is the unbiased batch variance (one rounding,
# undone in float64 below); Keras' and Flax's moving variance is momentum * r + (1 - momentum) var, so with
# momentum = 0 it is the batch variance itself.


def _numpy_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    from bnref.reference import batch_norm_forward

    c = x.shape[1]
    y, cache = batch_norm_forward(x, np.ones(c, np.float32), np.zeros(c, np.float32), 1e-5, axis=1)
    return y, cache.var, 1e-5


class BatchVariance:
    """``run(x) -> (y, var, eps)`` of ``sweep_function`` for an adapter whose running variance after one training
    step is the batch variance (momentum 1 in PyTorch's meaning, 0 in Keras' and Flax's).

    ``make()`` builds the adapter; it is created once (float32, channels of the first batch) and serves every run:
    each step overwrites the running variance. An unbiased running variance (the adapter's convention says which)
    is turned back into the biased one in float64.
    """

    def __init__(self, make: Callable[[], Adapter]) -> None:
        self.make, self.adapter, self.channels = make, None, 0

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        if self.adapter is None or self.channels != x.shape[1]:
            self.adapter, self.channels = self.make(), x.shape[1]
            self.adapter.create(self.channels, "float32")
        y = as_float64(self.adapter.train_forward(x))
        var = as_float64(self.adapter.running_stats()[1])
        convention = self.adapter.convention
        if convention.running_var == "unbiased":
            m = x.shape[0]
            var = var * (m - 1) / m  # unbiased -> biased, in float64
        return y, var, convention.eps


def _versions(*modules: str) -> str:
    import importlib

    names = {"torch": "PyTorch", "tensorflow": "TensorFlow", "keras": "Keras", "jax": "JAX", "flax": "Flax"}
    return ", ".join(f"{names[m]} {importlib.import_module(m).__version__}" for m in modules)


#: The implementations that run in this process: name -> (function, frameworks to name with their version).
#: The Keras layer on each backend ("keras-tensorflow", "keras-jax", "keras-torch") runs in its own process.
IMPLEMENTATIONS: dict[str, tuple[Callable[[np.ndarray], tuple], tuple[str, ...]]] = {
    "numpy reference (bnref)": (_numpy_reference, ()),
    "torch nn.BatchNorm1d": (BatchVariance(lambda: TorchAdapter("native", "NC", momentum=1.0)), ("torch",)),
    "torch scratch (bnref.layers.torch_bn)": (
        BatchVariance(lambda: TorchAdapter("bnref", "NC", momentum=1.0)),
        ("torch",),
    ),
    "keras scratch (bnref.layers.keras_bn)": (
        BatchVariance(lambda: KerasAdapter("bnref", "NC", momentum=0.0)),
        ("keras", "tensorflow"),
    ),
    "flax BatchNorm, fast variance": (
        BatchVariance(lambda: FlaxAdapter(use_fast_variance=True, layout="NC", momentum=0.0)),
        ("flax", "jax"),
    ),
    "flax BatchNorm, two-pass": (
        BatchVariance(lambda: FlaxAdapter(use_fast_variance=False, layout="NC", momentum=0.0)),
        ("flax", "jax"),
    ),
    "jax scratch (bnref.layers.jax_bn)": (BatchVariance(lambda: JaxBnAdapter(layout="NC", momentum=0.0)), ("jax",)),
}


# ----------------------------------------------------------------------------------------------------
# One sweep
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepResult:
    """One implementation over the sweep; every list is indexed ``[ratio][seed]``.

    Attributes
    ----------
    implementation, version : str
        Its name, and the frameworks (and backend) it ran on, e.g. "Keras 3.15.1 on JAX 0.10.2".
    ratios, seeds : list
    var_error : list of list of float
        ``max_c |var_c - exact_c| / exact_c``; NaN when the variance is not finite.
    var_bound : list of list of float
        The two-pass bound relative to the variance (eq-bound-two-pass), the largest over the channels.
    var_ratio : list of list of float
        ``max_c error_c / bound_c``: above 1 the variance is outside the two-pass bound; inf if not finite.
    y_error, y_bound, y_ratio : list of list of float
        The same for the output, max-norm relative to ``max|y|``, against eq-bound-y.
    """

    implementation: str
    version: str
    ratios: list[float]
    seeds: list[int]
    var_error: list[list[float]]
    var_bound: list[list[float]]
    var_ratio: list[list[float]]
    y_error: list[list[float]]
    y_bound: list[list[float]]
    y_ratio: list[list[float]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SweepResult:
        return cls(**d)

    def worst(self, quantity: str = "var") -> list[float]:
        """The largest error over the seeds at each ratio (NaN if any seed gave a non-finite result)."""
        rows = {"var": self.var_error, "y": self.y_error}[quantity]
        return [math.nan if any(math.isnan(e) for e in row) else max(row) for row in rows]


def _measure(x: np.ndarray, y: np.ndarray, var: np.ndarray, eps: float) -> tuple[float, ...]:
    """(var_error, var_bound, var_ratio, y_error, y_bound, y_ratio) of one run against the float64 truth."""
    x64 = x.astype(np.float64)
    mean, exact_var = x64.mean(axis=0), x64.var(axis=0)
    x_hat = (x64 - mean) / np.sqrt(exact_var + eps)
    s = channel_summaries(x_hat, np.zeros_like(x_hat), mean, exact_var, eps)
    zeros, ones = np.zeros_like(mean), np.ones_like(mean)
    # eq-bound-two-pass, read back through one update with w = 1 (eq-bound-running)
    var_bound = running_var_bound(zeros, 1.0, s, mean, exact_var, exact_var, "float32", unbiased=False) / exact_var
    y_bound = float(np.max(training_bounds(s, ones, zeros, zeros, "float32")["y"]) / np.max(np.abs(x_hat)))
    var = np.asarray(var, np.float64)
    y = np.asarray(y, np.float64)
    if np.all(np.isfinite(var)):
        var_error_c = np.abs(var - exact_var) / exact_var
        var_error, var_ratio = float(var_error_c.max()), float(np.max(var_error_c / var_bound))
    else:
        var_error, var_ratio = math.nan, math.inf
    if np.all(np.isfinite(y)):
        y_error = float(np.max(np.abs(y - x_hat)) / np.max(np.abs(x_hat)))
        y_ratio = y_error / y_bound
    else:
        y_error, y_ratio = math.nan, math.inf
    return var_error, float(var_bound.max()), var_ratio, y_error, y_bound, y_ratio


def sweep_function(
    name: str,
    run: Callable[[np.ndarray], tuple],
    version: str = "",
    ratios: Sequence[float] = RATIOS,
    seeds: Sequence[int] = SEEDS,
) -> SweepResult:
    """Sweep any implementation: ``run(x) -> (y, var, eps)`` for a float32 batch ``x`` of shape (m, C).

    ``y`` is its training output with gamma 1 and beta 0, ``var`` the batch variance it normalised with,
    ``eps`` its epsilon. Each (ratio, seed) gets ``sweep_data(ratio, seed)``.
    """
    table: dict[str, list[list[float]]] = {k: [] for k in ("ve", "vb", "vr", "ye", "yb", "yr")}
    for ratio in ratios:
        rows: list[tuple[float, ...]] = []
        for seed in seeds:
            x = sweep_data(ratio, seed)
            y, var, eps = run(x)
            rows.append(_measure(x, y, var, eps))
        for j, k in enumerate(table):
            table[k].append([r[j] for r in rows])
    return SweepResult(name, version, [float(r) for r in ratios], [int(s) for s in seeds], *(table[k] for k in table))


def sweep(
    implementations: Sequence[str] | None = None,
    ratios: Sequence[float] = RATIOS,
    seeds: Sequence[int] = SEEDS,
) -> dict[str, SweepResult]:
    """Run the implementations of this process (``IMPLEMENTATIONS``, all by default) over the sweep.

    An implementation whose framework cannot be imported is left out of the result (its name is missing).
    """
    names = list(IMPLEMENTATIONS) if implementations is None else list(implementations)
    unknown = [n for n in names if n not in IMPLEMENTATIONS]
    if unknown:
        raise ValueError(f"unknown implementations {unknown}; choose from {list(IMPLEMENTATIONS)}")
    out = {}
    for name in names:
        run, frameworks = IMPLEMENTATIONS[name]
        try:
            version = _versions(*frameworks) if frameworks else "NumPy " + np.__version__
        except ImportError:
            continue
        out[name] = sweep_function(name, run, version, ratios, seeds)
    return out


def keras_sweep(ratios: Sequence[float] = RATIOS, seeds: Sequence[int] = SEEDS) -> dict[str, Any]:
    """``keras.layers.BatchNormalization`` on the loaded backend over the sweep (a job of ``on_keras_backends``)."""
    import keras

    name = f"keras-{keras.backend.backend()}"
    run = BatchVariance(lambda: KerasAdapter("native", "NC", jit=False, momentum=0.0))  # a bare layer(x), eager
    return sweep_function(name, run, "", ratios, seeds).to_json()


def keras_sweep_job(ratios: Sequence[float] = RATIOS, seeds: Sequence[int] = SEEDS) -> tuple[str, dict[str, Any]]:
    """The job of ``bnref.check.agreement.on_keras_backends`` that runs ``keras_sweep``."""
    return "bnref.check.precision:keras_sweep", {"ratios": list(ratios), "seeds": list(seeds)}


def results_from_backend_runs(runs: dict[str, Any], job: str = "sweep") -> dict[str, SweepResult]:
    """The ``SweepResult`` of each backend run that succeeded, named "keras-<backend>", with its versions."""
    out = {}
    for backend, run in runs.items():
        if run.ok:
            d = dict(run.results[job])
            d["version"] = run.label
            out[f"keras-{backend}"] = SweepResult.from_json(d)
    return out


# ----------------------------------------------------------------------------------------------------
# The laws and the verdict
# ----------------------------------------------------------------------------------------------------


def one_pass_law(ratio: float | np.ndarray, dtype: str = "float32") -> float | np.ndarray:
    """``u r^2``: the order of the relative error of a one-pass variance at ``|mean|/std = r``."""
    return unit_roundoff(dtype) * np.asarray(ratio, np.float64) ** 2


@dataclass(frozen=True)
class Verdict:
    """What a sweep says about one implementation's variance, as a stable sentence.

    ``kind`` is "two-pass" (within the two-pass bound everywhere), "one-pass" (follows the one-pass law:
    within the bound where the law predicts it, beyond it where the law predicts that), or "neither" (the
    rule is in ``verdict``). ``text``/``text_zh`` say it in English and Chinese; ``within_up_to`` and
    ``exceeds_from`` are the ratios the law chose (``exceeds_from``: the first ratio outside the bound for
    "neither"; ``inf``/``nan`` where they do not apply).
    """

    kind: str
    text: str
    text_zh: str
    within_up_to: float
    exceeds_from: float


def verdict(result: SweepResult) -> Verdict:
    """The rule that turns a sweep of the variance into a verdict.

    * "two-pass": every seed's variance is within the two-pass bound (eq-bound-two-pass) at every ratio.
    * "one-pass": the one-pass law ``u r^2`` decides where to look, so that no verdict rests on a ratio where
      the law and the bound are close (where the rounding of one CPU could tip it). Where the law is below a
      hundredth of the bound (``r <= r_within``) every seed must be within the bound; where the law is more
      than a hundred times the bound (``r >= r_exceed``), every seed must exceed it (or give a non-finite
      variance), and the worst seed by more than ``EXCEED_FACTOR``. The factor of a hundred on either side
      leaves room for the law's constant, which depends on the summation order (a one-pass variance at r = 3
      has measured errors up to six times u r^2). Not every seed is asked to exceed by ``EXCEED_FACTOR``:
      near ``r = u^(-1/2)`` a one-pass variance is an integer multiple of a spacing as large as the variance
      itself, and one that happens to round to the right multiple can land close to the truth.
    * "neither": anything else (for example an error that grows, but not as the one-pass law says).

    The bound is that of the data (float64, the same on every machine), so ``r_within`` and ``r_exceed``
    are too.
    """
    law = one_pass_law(np.asarray(result.ratios))
    bound = np.array([max(b) for b in result.var_bound])
    ratio = np.array(result.var_ratio)  # [ratio][seed]
    ratios = np.array(result.ratios)
    top = ratios.max()
    if np.all(ratio <= 1):
        return Verdict(
            "two-pass",
            f"within the two-pass bound up to |mean|/std = {top:g}",
            f"在 |mean|/std ≤ {top:g} 范围内均在两遍法界限之内",
            float(top),
            math.inf,
        )
    below = ratios[law <= bound / 100]
    above = ratios[law >= 100 * bound]
    if below.size and above.size:
        within_ok = np.all(ratio[law <= bound / 100] <= 1)
        exceeding = ratio[law >= 100 * bound]
        exceed_ok = np.all(exceeding > 1) and np.all(exceeding.max(axis=1) > EXCEED_FACTOR)
        if within_ok and exceed_ok:
            r_within, r_exceed = float(below.max()), float(above.min())
            return Verdict(
                "one-pass",
                f"exceeds the two-pass bound from |mean|/std = {r_exceed:g}, as the one-pass law predicts",
                f"从 |mean|/std = {r_exceed:g} 起超出两遍法界限，与一遍法误差规律一致",
                r_within,
                r_exceed,
            )
    first = float(ratios[np.any(ratio > 1, axis=1)].min())
    return Verdict(
        "neither",
        f"exceeds the two-pass bound (first at |mean|/std = {first:g}), but not as the one-pass law predicts",
        f"超出两遍法界限（首次在 |mean|/std = {first:g}），但不符合一遍法误差规律",
        math.nan,
        first,
    )
