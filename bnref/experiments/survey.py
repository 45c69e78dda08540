"""The conformance survey: the oracle pointed at the Batch Normalization of frameworks the project does not install.

For each framework the survey makes (or reuses) a virtual environment under a cache folder outside the repository
(default ``~/.cache/bnref-survey/<venv>``), installs NumPy and the framework's CPU wheel at the pinned version into
it from the package registry, and runs ``bnref.check.conformance.check`` on the framework's adapter
(``bnref.experiments.survey_adapters``) in that environment, in a subprocess that finds this working tree of
``bnref`` through ``PYTHONPATH``. It writes one JSON record per implementation, ``conformance-<name>.cpu.json``:
the framework and its version, the Python and machine it ran on, the code version, the install and check times,
and every line of the report (as data and as the text table).

=============  ==============================================  =====================================================
name           layer                                           pinned requirements
=============  ==============================================  =====================================================
paddle         ``paddle.nn.BatchNorm2D``                       paddlepaddle 3.3.*
mindspore      ``mindspore.nn.BatchNorm2d``                    mindspore 2.10.*, NumPy 1.26 (its gradients need it)
jittor         ``jittor.nn.BatchNorm2d``                       jittor 1.3.* (compiles its kernels on first use)
haiku          ``haiku.BatchNorm`` (decay_rate 0.9)            dm-haiku 0.0.17, jax
equinox-ema    ``equinox.nn.BatchNorm(mode="ema")``            equinox 0.13.*, jax (one environment for both modes)
equinox-batch  ``equinox.nn.BatchNorm(mode="batch")``          equinox 0.13.*, jax
=============  ==============================================  =====================================================

Command line::

    python -m bnref.experiments.survey --out book/results/                # every framework
    python -m bnref.experiments.survey --out book/results/ --frameworks paddle,equinox
    python -m bnref.experiments.survey --list                             # names, requirements, environments

``equinox`` names both of its modes. The exit status is 0 when every record was written, 1 when an installation or
a check failed (the others are still written), 2 for a usage error. A FAIL line in a report is a finding, not a
failure of the survey: the record holds it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnref.experiments.survey_adapters import ADAPTERS
from bnref.experiments.survey_adapters import jittor as jittor_adapter
from bnref.records import add_allow_dirty_argument, code_version, json_ready, machine_info, now_utc, refuse_dirty_tree

__all__ = [
    "SCHEMA",
    "Framework",
    "FRAMEWORKS",
    "DEFAULT_CACHE",
    "select",
    "venv_python",
    "ensure_venv",
    "child_environment",
    "check_here",
    "run_check",
    "make_record",
    "record_path",
    "write_record",
    "survey_one",
    "parse_args",
    "main",
]

SCHEMA = "bnref.survey/1"
#: Where the virtual environments live unless ``--cache`` says otherwise (outside the repository).
DEFAULT_CACHE = Path("~/.cache/bnref-survey")
#: The root of the working tree whose ``bnref`` the environments import (through ``PYTHONPATH``).
SOURCE = Path(__file__).absolute().parents[2]
_PACKAGE = "bnref.experiments.survey_adapters"


@dataclass(frozen=True)
class Framework:
    """One implementation of the survey: where its adapter is, what its environment holds.

    Attributes
    ----------
    name : str
        The survey's name (the record is ``conformance-<name>.cpu.json``).
    label : str
        The framework as its authors write it.
    layer : str
        The layer checked, as a user calls it.
    distribution : str
        The package whose version the record names.
    requirements : tuple of str
        What ``pip install`` puts in the environment (NumPy and the framework, pinned).
    adapter : str
        ``"module:Class"`` of the adapter.
    venv : str
        The environment's folder under the cache (two modes of one framework share one).
    env : dict
        Environment variables the check needs.
    """

    name: str
    label: str
    layer: str
    distribution: str
    requirements: tuple[str, ...]
    adapter: str
    venv: str
    env: dict[str, str] = field(default_factory=dict)


def _adapter(name: str) -> str:
    module, cls = ADAPTERS[name].split(":")
    return f"{_PACKAGE}.{module}:{cls}"


_JAX = ("numpy", "jax")
FRAMEWORKS: dict[str, Framework] = {
    fw.name: fw
    for fw in (
        Framework(
            "paddle",
            "PaddlePaddle",
            "paddle.nn.BatchNorm2D",
            "paddlepaddle",
            ("numpy", "paddlepaddle==3.3.*"),
            _adapter("paddle"),
            "paddle",
        ),
        Framework(
            "mindspore",
            "MindSpore",
            "mindspore.nn.BatchNorm2d",
            "mindspore",
            ("numpy==1.26.*", "mindspore==2.10.*"),
            _adapter("mindspore"),
            "mindspore",
        ),
        Framework(
            "jittor",
            "Jittor",
            "jittor.nn.BatchNorm2d",
            "jittor",
            ("numpy", "jittor==1.3.*"),
            _adapter("jittor"),
            "jittor",
            dict(jittor_adapter.ENVIRONMENT),
        ),
        Framework(
            "haiku",
            "Haiku",
            "haiku.BatchNorm(decay_rate=0.9)",
            "dm-haiku",
            (*_JAX, "dm-haiku==0.0.17"),
            _adapter("haiku"),
            "haiku",
        ),
        Framework(
            "equinox-ema",
            "Equinox",
            'equinox.nn.BatchNorm(mode="ema")',
            "equinox",
            (*_JAX, "equinox==0.13.*"),
            _adapter("equinox-ema"),
            "equinox",
        ),
        Framework(
            "equinox-batch",
            "Equinox",
            'equinox.nn.BatchNorm(mode="batch")',
            "equinox",
            (*_JAX, "equinox==0.13.*"),
            _adapter("equinox-batch"),
            "equinox",
        ),
    )
}
#: Names that stand for several implementations.
GROUPS: dict[str, tuple[str, ...]] = {"equinox": ("equinox-ema", "equinox-batch")}


def select(names: str | Sequence[str] | None) -> list[Framework]:
    """The frameworks named (comma-separated or a list; ``"equinox"`` is both its modes), in the survey's order.

    ``None`` or ``"all"`` selects every one. An unknown name raises ValueError naming the known ones.
    """
    if names is None or names == "all":
        return list(FRAMEWORKS.values())
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    wanted: list[str] = []
    for name in names:
        expanded = GROUPS.get(name, (name,))
        for n in expanded:
            if n not in FRAMEWORKS:
                known = ", ".join([*FRAMEWORKS, *GROUPS])
                raise ValueError(f"unknown framework {name!r}; known: {known}")
            if n not in wanted:
                wanted.append(n)
    if not wanted:
        raise ValueError("no framework named")
    return [fw for name, fw in FRAMEWORKS.items() if name in wanted]


# ----------------------------------------------------------------------------------------------------
# Environments
# ----------------------------------------------------------------------------------------------------


def venv_python(cache: Path, fw: Framework) -> Path:
    """The interpreter of ``fw``'s virtual environment under ``cache``."""
    return Path(cache).expanduser() / fw.venv / "bin" / "python"


def ensure_venv(
    fw: Framework,
    cache: Path,
    python: str = sys.executable,
    log: Path | None = None,
    run: Callable[..., Any] = subprocess.run,
) -> tuple[Path, float]:
    """Make ``fw``'s virtual environment if it is missing and install its requirements; return its interpreter and
    the seconds it took.

    ``pip install`` runs every time: with everything in place it only confirms the pins (a few seconds, no download).
    The output of both commands goes to ``log`` (appended). A failing command raises ``RuntimeError`` with the tail
    of the log.
    """
    exe = venv_python(cache, fw)
    log = Path(log) if log else exe.parents[2] / "logs" / f"{fw.venv}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    commands = []
    if not exe.exists():
        commands.append([python, "-m", "venv", str(exe.parents[1])])
    commands.append([str(exe), "-m", "pip", "install", "--disable-pip-version-check", *fw.requirements])
    start = time.perf_counter()
    for cmd in commands:
        with open(log, "a") as fh:
            fh.write(f"$ {' '.join(cmd)}\n")
            fh.flush()
            done = run(cmd, stdout=fh, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{fw.name}: {' '.join(cmd[:4])} ... exited {done.returncode}; {log}:\n{tail}")
    return exe, time.perf_counter() - start


def child_environment(fw: Framework, cache: Path, source: Path = SOURCE, extra_path: Sequence[Path] = ()) -> dict:
    """The environment of the check's subprocess: ``PYTHONPATH`` naming this working tree (and ``extra_path``), the
    framework's variables, and for Jittor a ``JITTOR_HOME`` in the cache (its compiled kernels live there)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (source, *extra_path))
    env.update(fw.env)
    if fw.name == "jittor":
        env.setdefault("JITTOR_HOME", str(Path(cache).expanduser() / "jittor-home"))
    return env


# ----------------------------------------------------------------------------------------------------
# The check, in the framework's environment
# ----------------------------------------------------------------------------------------------------


def check_here(adapter: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``check`` on the adapter ``"module:Class"`` in this process; what the record needs from inside.

    Returns the report (``Report.to_dict``), its text lines, the adapter's versions (``adapter.versions()``), the
    Python version, the machine (``bnref.records.machine_info``) and the seconds the check took.
    """
    from bnref.check.conformance import check

    module, cls = adapter.split(":")
    instance = getattr(importlib.import_module(module), cls)()
    options = {k: tuple(v) for k, v in (options or {}).items()}
    start = time.perf_counter()
    report = check(instance, **options)
    seconds = time.perf_counter() - start
    versions = instance.versions() if callable(getattr(instance, "versions", None)) else {}
    return {
        "report": report.to_dict(),
        "text": report.to_text().splitlines(),
        "versions": versions,
        "python": platform.python_version(),
        "machine": machine_info(),
        "seconds": seconds,
    }


def run_check(
    fw: Framework,
    python: Path | str,
    *,
    cache: Path = DEFAULT_CACHE,
    source: Path = SOURCE,
    extra_path: Sequence[Path] = (),
    options: dict[str, Any] | None = None,
    timeout: float = 1800.0,
    log: Path | None = None,
) -> dict[str, Any]:
    """``check_here`` for ``fw`` in a subprocess of ``python`` (the framework's environment); its result.

    The subprocess's output goes to ``log`` (default: a file beside its JSON answer, removed afterwards); a
    subprocess that fails raises ``RuntimeError`` with the tail of that output.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        answer = Path(tmp) / "answer.json"
        log = Path(log) if log else Path(tmp) / "child.log"
        cmd = [str(python), "-m", "bnref.experiments.survey", "--child", fw.adapter, "--answer", str(answer)]
        cmd += ["--options", json.dumps(options or {})]
        env = child_environment(fw, cache, source, extra_path)
        with open(log, "a") as fh:
            done = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, cwd=tmp)
        if done.returncode != 0 or not answer.exists():
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{fw.name}: the check exited {done.returncode}:\n{tail}")
        return json.loads(answer.read_text())


# ----------------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------------


def make_record(
    fw: Framework, result: dict[str, Any], *, install_seconds: float | None, run_seconds: float, code: str
) -> dict[str, Any]:
    """The survey record of one implementation from the result of ``check_here`` and the timings.

    Fields: ``schema``, ``name``, ``framework``, ``layer``, ``version`` (of ``fw.distribution``), ``versions`` (every
    package the adapter names), ``requirements``, ``python``, ``machine``, ``device``, ``code``, ``created``,
    ``seconds`` (``install``, ``check`` inside the subprocess, ``run`` with its start), ``header``, ``passed``,
    ``failures``, ``convention`` (as measured), ``lines`` (every line of the report, as data) and ``text`` (the
    report as its text table, one string a line).
    """
    report = result["report"]
    lines = report["lines"]
    versions = dict(result.get("versions", {}))
    return json_ready(
        {
            "schema": SCHEMA,
            "name": fw.name,
            "framework": fw.label,
            "layer": fw.layer,
            "version": versions.get(fw.distribution, "unknown"),
            "versions": versions,
            "requirements": list(fw.requirements),
            "python": result["python"],
            "machine": result["machine"],
            "device": {"type": "cpu", "name": result["machine"].get("cpu", "unknown CPU")},
            "code": code,
            "created": now_utc(),
            "seconds": {"install": install_seconds, "check": result.get("seconds"), "run": run_seconds},
            "header": report["header"],
            "passed": all(li["verdict"] != "FAIL" for li in lines),
            "failures": [li["check"] for li in lines if li["verdict"] == "FAIL"],
            "convention": report.get("convention", {}),
            "lines": lines,
            "text": result["text"],
            "report": {k: v for k, v in report.items() if k not in ("lines",)},
        }
    )


def record_path(out: Path, name: str) -> Path:
    """``<out>/conformance-<name>.cpu.json``."""
    return Path(out) / f"conformance-{name}.cpu.json"


def write_record(record: dict[str, Any], out: Path) -> Path:
    """Write ``record`` under ``out`` (created if missing) as indented JSON; return its path."""
    if record.get("schema") != SCHEMA:
        raise ValueError(f"not a {SCHEMA} record: schema {record.get('schema')!r}")
    path = record_path(out, record["name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def survey_one(
    fw: Framework,
    out: Path,
    python: Path | str,
    *,
    install_seconds: float | None = None,
    cache: Path = DEFAULT_CACHE,
    source: Path = SOURCE,
    extra_path: Sequence[Path] = (),
    options: dict[str, Any] | None = None,
    timeout: float = 1800.0,
) -> Path:
    """Check ``fw`` with the interpreter ``python`` and write its record under ``out``; return the record's path."""
    start = time.perf_counter()
    log = Path(cache).expanduser() / "logs" / f"{fw.name}.check.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    result = run_check(
        fw, python, cache=cache, source=source, extra_path=extra_path, options=options, timeout=timeout, log=log
    )
    seconds = time.perf_counter() - start
    record = make_record(fw, result, install_seconds=install_seconds, run_seconds=seconds, code=code_version())
    return write_record(record, out)


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring); ``args.frameworks`` comes back as a list of ``Framework``."""
    parser = argparse.ArgumentParser(
        prog="python -m bnref.experiments.survey",
        description="Check the BN of PaddlePaddle, MindSpore, Jittor, Haiku and Equinox, each in its own virtual "
        "environment, and write one JSON record per implementation.",
        epilog="names: " + ", ".join([*FRAMEWORKS, *GROUPS]) + " (equinox = equinox-ema and equinox-batch)",
    )
    parser.add_argument("--out", type=Path, help="folder of the records, e.g. book/results/")
    add_allow_dirty_argument(parser)
    parser.add_argument("--frameworks", default="all", help="comma-separated names (default: all)")
    parser.add_argument("--list", action="store_true", help="list the frameworks and their environments, and exit")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"the environments' folder ({DEFAULT_CACHE})")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that makes the environments")
    parser.add_argument("--no-install", action="store_true", help="use the environments as they are")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds of the accuracy lines (default: check's)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one check may take (default 1800)")
    parser.add_argument("--child", metavar="MODULE:CLASS", help=argparse.SUPPRESS)
    parser.add_argument("--answer", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if not args.answer:
            parser.error("--child needs --answer")
        return args
    try:
        args.frameworks = select(args.frameworks)
    except ValueError as err:
        parser.error(str(err))
    if not args.list and args.out is None:
        parser.error("--out is required (the folder of the records), unless --list")
    if args.seeds is not None:
        try:
            args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
        if not args.seeds:
            parser.error("--seeds names no seed")
    return args


def _list(frameworks: Sequence[Framework], cache: Path) -> str:
    rows = []
    for fw in frameworks:
        exe = venv_python(cache, fw)
        state = "installed" if exe.exists() else "not yet made"
        rows.append(f"{fw.name:<14} {fw.layer:<38} {' '.join(fw.requirements):<40} {exe.parents[1]} ({state})")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        result = check_here(args.child, json.loads(args.options))
        args.answer.write_text(json.dumps(json_ready(result)))
        return 0
    if args.list:
        print(_list(args.frameworks, args.cache))
        return 0
    if args.out is not None and refuse_dirty_tree(args.allow_dirty):
        return 2
    options = {"seeds": args.seeds} if args.seeds else {}
    status = 0
    installed: dict[str, tuple[Path, float | None]] = {}
    for fw in args.frameworks:
        try:
            if fw.venv in installed:
                exe, seconds = installed[fw.venv][0], None
            elif args.no_install:
                exe, seconds = venv_python(args.cache, fw), None
                if not exe.exists():
                    raise RuntimeError(f"{fw.name}: no environment at {exe.parents[1]} (run without --no-install)")
            else:
                print(
                    f"{fw.name}: installing {' '.join(fw.requirements)} into {venv_python(args.cache, fw).parents[1]}"
                )
                exe, seconds = ensure_venv(fw, args.cache, args.python)
            installed[fw.venv] = (exe, seconds)
            print(f"{fw.name}: checking {fw.layer}", flush=True)
            path = survey_one(
                fw, args.out, exe, install_seconds=seconds, cache=args.cache, options=options, timeout=args.timeout
            )
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as err:
            print(f"{fw.name}: FAILED to survey: {err}", file=sys.stderr)
            status = 1
            continue
        record = json.loads(path.read_text())
        verdict = "no line failed" if record["passed"] else f"FAIL lines: {', '.join(record['failures'])}"
        print(f"{fw.name}: {record['framework']} {record['version']}: {verdict} -> {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
