"""The conformance tool's command line, ``python -m bnref.conformance`` (and the console script ``bnref-conformance``).

``main(argv) -> int`` checks every adapter named and returns the exit status: 0 when every line of every report
passed, 1 when a check failed, 2 for a usage or adapter error (see ``HELP``). ``--json PATH`` writes the run as
JSON for a CI artefact: the version of bnref, the exit status, and for each adapter its spec, its name and every
line with all its fields.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from bnref.check.conformance import FAULTS, NAMES, AdapterError, Report, adapter_for, check, run_many

__all__ = ["HELP", "EXIT_PASSED", "EXIT_FAILED", "EXIT_ERROR", "main"]

EXIT_PASSED, EXIT_FAILED, EXIT_ERROR = 0, 1, 2

#: The JSON schema name of a run.
RUN_SCHEMA = "bnref.conformance.run/1"

#: What each planted fault gets wrong (``PlantedFault``).
_MISTAKES = {
    "biased-running-var": "the biased batch variance fed to the running estimate",
    "momentum-backwards": "r = momentum r + (1 - momentum) b with PyTorch's momentum 0.1",
    "eps-outside-sqrt": "(x - mean) / (sqrt(var) + eps)",
    "one-pass-variance": "var = mean(x^2) - mean(x)^2 in float32",
}
_FAULT_LINES = "\n".join(
    f"  fault:{fault:<22s} {_MISTAKES.get(fault, '')}\n  {'':28s} caught by the line {line!r}"
    for fault, line in FAULTS.items()
)

HELP = f"""\
adapters (each ADAPTER is one of):
  NAME                   a shipped adapter: {", ".join(NAMES[:5])},
                         {", ".join(NAMES[5:])}
                         (a Keras name runs in a subprocess with its KERAS_BACKEND)
  fault:FAULT            a planted fault: a float32 NumPy BN that claims PyTorch's convention with one
                         mistake; fault:none is the correct layer (the control)
  package.module:NAME    an Adapter subclass, a zero-argument factory returning an adapter, or an adapter
                         object, from an importable module (the current directory is on the path)
  path/to/file.py:NAME   the same, from a Python file

planted faults:
  fault:none                   the control: passes every line
{_FAULT_LINES}

exit status:
  0  every line of every report passed (INFO lines do not fail)
  1  a check failed: a FAIL line, an adapter that broke its contract while being checked included
  2  usage or adapter error: an unknown name, a module or file that cannot be imported, a name it lacks,
     an adapter that cannot be constructed or lacks create/train_forward/infer_forward/running_stats,
     a framework that is not installed

examples:
  python -m bnref.conformance torch flax
  python -m bnref.conformance mypackage.bn_adapter:MyAdapter --json conformance.json
  python -m bnref.conformance tests/my_adapter.py:make_adapter
  python -m bnref.conformance fault:none fault:one-pass-variance
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bnref.conformance",
        description="Point the NumPy oracle at any Batch Normalization: conventions inferred from behaviour, "
        "float32 accuracy against derived bounds, edge cases; one verdict per line.",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("adapters", nargs="+", metavar="ADAPTER", help="what to check (the forms are listed below)")
    parser.add_argument("--json", metavar="PATH", help="also write the run as JSON to PATH (a CI artefact)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables instead of text")
    parser.add_argument("--stable", action="store_true", help="leave out the numbers that depend on the CPU")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors (with --json)")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    return parser


def _write_json(path: str | None, status: int, specs: Sequence[str], reports: dict[str, Report], error: str) -> None:
    if not path:
        return
    from bnref import __version__

    run: dict[str, Any] = {
        "schema": RUN_SCHEMA,
        "bnref": __version__,
        "adapters": list(specs),
        "exit_status": status,
        "passed": status == EXIT_PASSED,
        "error": error,
        "reports": [{"adapter": spec, **report.to_dict()} for spec, report in reports.items()],
    }
    with open(path, "w") as fh:
        json.dump(run, fh, indent=1)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bnref.conformance ADAPTER [ADAPTER ...] [--json PATH] [--markdown] [--stable] [--quiet]``.

    Prints each report and returns the exit status (0 passed, 1 a check failed, 2 usage or adapter error).
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse has printed the usage error (or the help)
        return int(stop.code or 0)
    try:
        options = json.loads(args.options)
        if args.in_process:  # a Keras backend's subprocess of run_many: everything here
            reports = {spec: check(adapter_for(spec), **options) for spec in args.adapters}
        else:
            reports = run_many(args.adapters, **options)
    except (AdapterError, RuntimeError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        _write_json(args.json, EXIT_ERROR, args.adapters, {}, str(err))
        return EXIT_ERROR
    except Exception as err:  # a fault of the tool itself: say so, with the traceback
        traceback.print_exc()
        print(f"{parser.prog}: internal error: {type(err).__name__}: {err}", file=sys.stderr)
        _write_json(args.json, EXIT_ERROR, args.adapters, {}, f"internal error: {type(err).__name__}: {err}")
        return EXIT_ERROR
    status = EXIT_PASSED if all(r.passed for r in reports.values()) else EXIT_FAILED
    _write_json(args.json, status, args.adapters, reports, "")
    if not args.quiet:
        numbers = not args.stable
        texts = [r.to_markdown(numbers) if args.markdown else r.to_text(numbers) for r in reports.values()]
        print("\n\n".join(texts))
    return status


if __name__ == "__main__":
    sys.exit(main())
