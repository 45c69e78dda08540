"""Keras on every backend: run jobs in one fresh Python process per ``KERAS_BACKEND``, all started at once.

Keras fixes its backend when it is imported, so each backend needs its own process. ``on_keras_backends`` gives each
process every job (any function of a ``bnref`` module, named ``"bnref.module:function"``, with JSON arguments and a
JSON-ready result), so the cost is one import per backend, paid in parallel. The agreement rows
(``bnref.check.agreement.keras_rows_job``) and the precision sweep (``bnref.check.precision.keras_sweep_job``) are
such jobs.

Run as ``python -m bnref.check.backends JOBS.json OUT.json`` (what ``on_keras_backends`` starts). NumPy only at
import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KERAS_BACKENDS", "BackendRun", "on_keras_backends", "run_jobs"]

#: The Keras 3 backends, in table order; their rows are named "keras-<backend>".
KERAS_BACKENDS: tuple[str, ...] = ("tensorflow", "jax", "torch")

#: A backend process runs only functions of bnref's own modules ("bnref.module:function").
_JOB_PACKAGE = "bnref."


@dataclass(frozen=True)
class BackendRun:
    """What one Keras backend process returned.

    Attributes
    ----------
    backend : str
        The ``KERAS_BACKEND`` asked for.
    keras, backend_version : str
        ``keras.__version__`` and the backend framework's version, as the process read them ("" if it failed).
    results : dict
        Job name -> the job's JSON-ready result.
    error : str
        Empty if the process ran; else the end of its stderr (e.g. the backend is not installed).
    """

    backend: str
    keras: str = ""
    backend_version: str = ""
    results: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def label(self) -> str:
        """E.g. "Keras 3.15.1 on JAX 0.10.2"."""
        names = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}
        if not self.ok:
            return f"Keras on {names.get(self.backend, self.backend)} (did not run)"
        return f"Keras {self.keras} on {names.get(self.backend, self.backend)} {self.backend_version}"


def run_jobs(jobs_path: str, out_path: str) -> None:
    """The body of a backend process: read jobs (JSON) from ``jobs_path``, write the results (JSON) to ``out_path``."""
    import importlib
    import json

    import keras

    backend = keras.backend.backend()
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    version = importlib.import_module(module).__version__ if module else ""
    with open(jobs_path) as f:
        jobs = json.load(f)
    results = {}
    for name, (target, kwargs) in jobs.items():
        module_name, function = target.split(":")
        results[name] = getattr(importlib.import_module(module_name), function)(**kwargs)
    with open(out_path, "w") as f:
        json.dump({"backend": backend, "keras": keras.__version__, "backend_version": version, "results": results}, f)


def on_keras_backends(
    jobs: dict[str, tuple[str, dict[str, Any]]],
    backends: Sequence[str] = KERAS_BACKENDS,
    timeout: float = 600.0,
) -> dict[str, BackendRun]:
    """Run ``jobs`` under each Keras backend, one fresh Python process per backend, all at once.

    Keras fixes its backend when it is imported, so each backend needs its own process; starting them
    together and giving each every job makes the cost one import per backend, paid in parallel.

    Parameters
    ----------
    jobs : dict
        Job name -> ``("bnref.module:function", kwargs)``; the function runs in the backend process and
        returns JSON-ready data (``bnref.check.agreement.keras_backend_rows``,
        ``bnref.check.precision.keras_sweep``; any function of a ``bnref`` module).
    backends : sequence of str
        Values of ``KERAS_BACKEND``. Each process also gets ``TF_CPP_MIN_LOG_LEVEL=3`` and, for JAX,
        ``JAX_ENABLE_X64=1``: without it JAX has no float64 at all (it truncates float64 arrays to float32,
        with a UserWarning), so a float64 case would not even have float64 variables. With it, what the
        float64 cases measure is Keras' own choice: its layer computes in ``keras.backend.result_type(dtype,
        "float32")``, which is float32 for float64 on every backend but TensorFlow (Keras 3.15.1,
        ``keras/src/backend/common/dtypes.py``).
    timeout : float
        Seconds to wait for each process.

    Returns
    -------
    dict
        Backend -> ``BackendRun``; a process that fails (a backend not installed, a job that raises) gives a
        ``BackendRun`` whose ``error`` holds the end of its stderr.
    """
    import json
    import os
    import subprocess
    import sys
    import tempfile

    for name, (target, _) in jobs.items():
        module_name = target.split(":")[0]
        if not module_name.startswith(_JOB_PACKAGE) or target.count(":") != 1:
            raise ValueError(f"job {name!r}: {target!r} is not a function of a bnref module ('bnref.module:function')")
        runs: dict[str, BackendRun] = {}
    with tempfile.TemporaryDirectory() as tmp:
        spec = os.path.join(tmp, "jobs.json")
        with open(spec, "w") as f:
            json.dump(jobs, f)
        started = {}
        for backend in backends:
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
            if backend == "jax":
                env["JAX_ENABLE_X64"] = "1"
            out = os.path.join(tmp, f"{backend}.json")
            err = open(os.path.join(tmp, f"{backend}.err"), "w+")  # noqa: SIM115 (closed below)
            proc = subprocess.Popen(
                [sys.executable, "-m", "bnref.check.backends", spec, out],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
            started[backend] = (proc, out, err)
        for backend, (proc, out, err) in started.items():
            try:
                returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                returncode = None
            err.seek(0)
            stderr = err.read()
            err.close()
            if returncode != 0:
                why = "timed out" if returncode is None else f"exit status {returncode}"
                runs[backend] = BackendRun(backend, error=f"{why}: {stderr[-2000:]}")
                continue
            with open(out) as f:
                done = json.load(f)
            runs[backend] = BackendRun(backend, done["keras"], done["backend_version"], done["results"])
    return runs


if __name__ == "__main__":
    import sys

    run_jobs(sys.argv[1], sys.argv[2])
