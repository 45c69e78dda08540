"""A second engine for synchronised BN: Flax's ``BatchNorm(axis_name=...)`` under ``jax.pmap``, measured.

``python -m bnref.experiments.flax_sync`` runs :func:`main` on the host CPU devices JAX sees and prints one JSON
object (:func:`measure`). JAX splits the CPU into several devices only if ``XLA_FLAGS`` says so before JAX is
imported, so the measurement runs in a new interpreter: :func:`flax_sync_bn_measurements` starts it with
``XLA_FLAGS=--xla_force_host_platform_device_count=<devices>`` and returns what it printed. JAX and Flax are
imported inside :func:`measure` only: importing this module imports neither.

The chapter "Batch Normalization across devices" (``book/distributed.ipynb``) shows the measurements.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import numpy as np

__all__ = ["CHANNELS", "ROWS_PER_DEVICE", "bn64", "measure", "main", "flax_sync_bn_measurements"]

#: Channels of the measured batches, and the rows each device holds (padded to this size for unequal shards).
CHANNELS = 3
ROWS_PER_DEVICE = 8


def bn64(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """BN over the whole batch (axis 0) in float64, without scale and shift: the reference."""
    x = np.asarray(x, np.float64)
    return (x - x.mean(0)) / np.sqrt(x.var(0) + eps)


def _rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(y - ref).max() / np.abs(ref).max())


def measure() -> dict[str, Any]:
    """Flax's synchronised BN against :func:`bn64` on ``jax.local_device_count()`` devices (at most 4).

    Returns
    -------
    dict
        ``jax``, ``flax``, ``devices``: the versions and the device count; ``equal``: the largest relative error
        for equal shards (8 rows per device) with ``use_fast_variance`` True and False (keys ``true``/``false`` in
        JSON), and ``equal_cond`` (the batch's largest ``|mean|/std`` ``r``, ``max |x_hat|`` ``X`` and row count
        ``m``); ``unequal``: shards of 2, 8, 5 and 1 valid rows expressed with ``mask`` (two-pass variance);
        ``offset``: the worst relative error over 3 seeds at ``|mean|/std`` 1 to 1e4, ``fast`` and ``two-pass``;
        ``offset_m``: the rows of those batches.
    """
    import flax
    import flax.linen as nn
    import jax

    n_dev = jax.local_device_count()

    def run(shards: np.ndarray, masks: np.ndarray, fast: bool) -> np.ndarray:
        model = nn.BatchNorm(use_running_average=False, axis_name="batch", use_fast_variance=fast, momentum=0.9)
        variables = model.init(jax.random.PRNGKey(0), shards[0])

        def step(x: Any, m: Any) -> Any:
            y, _ = model.apply(variables, x, mask=m, mutable=["batch_stats"])
            return y

        return np.asarray(jax.pmap(step, axis_name="batch")(shards, masks))

    out: dict[str, Any] = {"jax": jax.__version__, "flax": flax.__version__, "devices": n_dev}
    rows, c = ROWS_PER_DEVICE, CHANNELS
    rng = np.random.default_rng(0)
    # 1. equal shards: 8 rows per device
    x = (5.0 + 2.0 * rng.standard_normal((n_dev * rows, c))).astype(np.float32)
    shards = x.reshape(n_dev, rows, c)
    mask_all = np.ones_like(shards, dtype=bool)
    ref = bn64(x)
    x64 = x.astype(np.float64)
    out["equal_cond"] = {
        "r": float((np.abs(x64.mean(0)) / x64.std(0)).max()),
        "X": float(np.abs(ref).max()),
        "m": int(x.shape[0]),
    }
    out["equal"] = {f: _rel_err(run(shards, mask_all, f).reshape(-1, c), ref) for f in (True, False)}
    # 2. unequal shards: valid rows per device, padded to 8 and masked
    counts = [2, 8, 5, 1][:n_dev]
    masks = np.zeros_like(shards, dtype=bool)
    for d, k in enumerate(counts):
        masks[d, :k] = True
    valid = masks[:, :, 0]
    out["unequal"] = {"counts": counts, "rel_err": _rel_err(run(shards, masks, False)[valid], bn64(shards[valid]))}
    # 3. fast variance at large |mean|/std, equal shards, float32
    out["offset"] = {}
    for r in (1.0, 1e2, 1e3, 1e4):
        errs = {}
        for f in (True, False):
            worst = 0.0
            for seed in range(3):
                g = np.random.default_rng(seed)
                xo = (r + g.standard_normal((n_dev * rows, c))).astype(np.float32)
                yo = run(xo.reshape(n_dev, rows, c), mask_all, f).reshape(-1, c)
                worst = max(worst, _rel_err(yo, bn64(xo)))
            errs["fast" if f else "two-pass"] = worst
        out["offset"][str(r)] = errs
    out["offset_m"] = n_dev * rows
    return out


def main() -> int:
    """Print :func:`measure` as one line of JSON."""
    print(json.dumps(measure()))
    return 0


def flax_sync_bn_measurements(devices: int = 4, timeout: float = 600) -> dict[str, Any]:
    """Run ``flax.linen.BatchNorm(axis_name="batch")`` under ``jax.pmap`` on ``devices`` host CPU devices.

    ``XLA_FLAGS=--xla_force_host_platform_device_count=<devices>`` is set for a new Python process, which runs
    ``python -m bnref.experiments.flax_sync`` and returns its measurements (:func:`measure`): the largest relative
    error of the output against BN over the whole batch in float64 for equal shards (``equal``, both
    ``use_fast_variance`` settings), for unequal shards expressed with ``mask`` (``unequal``), and at growing
    ``|mean|/std`` (``offset``: Flax's default ``use_fast_variance=True``, i.e. ``E[x^2] - E[x]^2``, against
    ``False``, two passes), with the JAX and Flax versions. Raises ValueError if JAX or Flax is missing or the
    measurement fails.
    """
    if isinstance(devices, bool) or not isinstance(devices, int) or not 1 <= devices <= 4:
        raise ValueError(f"devices must be an int from 1 to 4 (the measurement's shards), got {devices!r}")
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-m", "bnref.experiments.flax_sync"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise ValueError(f"the Flax measurement failed (is jax[cpu] and flax installed?):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    raise SystemExit(main())
