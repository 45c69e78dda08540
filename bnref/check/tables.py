"""The agreement tables: one ``Row`` per implementation of a case, ``AgreementTable``, ``summary_table`` over cases,
and ``ConventionTable`` (what the frameworks' default conventions change).

NumPy only.
"""

from __future__ import annotations

import dataclasses
import enum
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bnref.check.cases import Case
from bnref.check.truth import QUANTITIES, Diff

__all__ = [
    "IMPLEMENTATIONS",
    "Status",
    "Row",
    "AgreementTable",
    "summary_table",
    "ConventionRow",
    "ConventionTable",
]

#: The implementations run in this process, in table order: (name, framework).
IMPLEMENTATIONS: tuple[tuple[str, str], ...] = (
    ("numpy", "numpy"),
    ("torch scratch", "torch"),
    ("torch native", "torch"),
    ("keras scratch", "keras"),
    ("keras native", "keras"),
)
_SHORT = {"running_mean": "run_mean", "running_var": "run_var", "y_inference": "y_infer"}


class Status(enum.Enum):
    """Whether an implementation ran on a case; the value is what a table cell shows."""

    RAN = "ok"
    NOT_INSTALLED = "not installed"
    NOT_APPLICABLE = "n/a"
    ERROR = "error"


@dataclass(frozen=True)
class Row:
    """One implementation's line of an ``AgreementTable``.

    ``status`` is ``Status.RAN`` when it ran; otherwise ``reason`` says why not (the framework that is
    missing, the convention or dtype it cannot express, the error it raised) and ``diffs`` is empty.
    ``version`` names the framework versions and backend of a row run in another process (the Keras
    backend rows, e.g. "Keras 3.15.1 on JAX 0.10.2"); empty for the rows run in this process.
    """

    implementation: str
    dtype: str
    convention: str
    status: Status
    reason: str = ""
    diffs: dict[str, Diff] = field(default_factory=dict)
    version: str = ""

    @property
    def ok(self) -> bool:
        return self.status is Status.RAN

    @property
    def message(self) -> str:
        """The status as one line, e.g. "n/a: NumPy has no bfloat16" or "not installed (PyTorch)"."""
        if self.ok:
            return self.status.value
        if self.status is Status.NOT_INSTALLED:
            return f"{self.status.value} ({self.reason})"
        return f"{self.status.value}: {self.reason}"

    @property
    def passed(self) -> bool:
        """All compared quantities within their bounds (rows that did not run count as passed)."""
        return all(d.passed for d in self.diffs.values())

    @property
    def worst_ratio(self) -> float:
        return max((d.ratio for d in self.diffs.values()), default=0.0)


def _cell(d: Diff | None, metric: str) -> str:
    if d is None:
        return "-"
    if metric == "verdict":
        return "ok" if d.passed else "FAIL"
    value = {"abs": d.max_abs, "rel": d.max_rel, "ratio": d.ratio, "bound": d.bound}[metric]
    return f"{value:.1e}" if metric != "ratio" else f"{value:.2g}"


_METRICS = ("rel", "abs", "ratio", "bound", "verdict")


@dataclass(frozen=True)
class AgreementTable:
    """The result of ``run_case``: one ``Row`` per implementation.

    Render with ``format_table(metric)`` (plain text), ``to_markdown(metric)`` or in a notebook (HTML).
    ``metric`` is "rel" (max-norm relative error), "abs", "ratio" (error / derived bound), "bound" or
    "verdict" ("ok" / "FAIL", stable text for nbval).
    """

    case: Case
    rows: list[Row]

    @property
    def quantities(self) -> tuple[str, ...]:
        return tuple(q for q in QUANTITIES if q != "y_inference" or self.case.mode == "train+inference")

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def row(self, implementation: str, convention: str | None = None) -> Row:
        """The row of ``implementation`` (and ``convention``, for the NumPy rows of a native case)."""
        for r in self.rows:
            if r.implementation == implementation and (convention is None or r.convention == convention):
                return r
        raise ValueError(f"no row {implementation!r} in this table; rows: {[r.implementation for r in self.rows]}")

    def _grid(self, metric: str) -> tuple[list[str], list[list[str]]]:
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {', '.join(_METRICS)}; got {metric!r}")
        header = ["implementation", "dtype", "convention"] + [_SHORT.get(q, q) for q in self.quantities]
        body = []
        for r in self.rows:
            cells = [r.implementation, r.dtype, r.convention]
            if r.ok:
                cells += [_cell(r.diffs.get(q), metric) for q in self.quantities]
            else:
                cells += [r.message] + [""] * (len(self.quantities) - 1)
            body.append(cells)
        return header, body

    def format_table(self, metric: str = "rel") -> str:
        """Plain-text table (no pandas)."""
        header, body = self._grid(metric)
        widths = []
        for j in range(len(header)):
            cells = [b[j] for b, r in zip(body, self.rows, strict=False) if r.ok or j < 3]
            widths.append(max([len(header[j])] + [len(c) for c in cells]))
        lines = [
            f"case: {self.case.label}   [{metric}]",
            "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)).rstrip(),
        ]
        for b, r in zip(body, self.rows, strict=False):
            cells = b if r.ok else b[:3] + [r.message]
            lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths + [0], strict=False)).rstrip())
        return "\n".join(lines)

    def to_markdown(self, metric: str = "rel") -> str:
        header, body = self._grid(metric)
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        header, body = self._grid("rel")
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in b) + "</tr>" for b in body)
        caption = html.escape(f"{self.case.label}: max-norm relative error vs the float64 reference")
        return f"<table><caption>{caption}</caption><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"

    def __str__(self) -> str:
        return self.format_table()

    def __repr__(self) -> str:
        return f"AgreementTable({self.case.label!r}, {len(self.rows)} rows, passed={self.passed})"

    def to_records(self) -> list[dict[str, Any]]:
        """JSON-ready list: one dict per (implementation, quantity), or per row that did not run."""
        out = []
        for r in self.rows:
            base = {
                "case": self.case.label,
                "implementation": r.implementation,
                "dtype": r.dtype,
                "convention": r.convention,
                "status": r.status.value,
                "reason": r.reason,
                "version": r.version,
            }
            if not r.ok:
                out.append(base)
            for q, d in r.diffs.items():
                out.append({**base, "quantity": q, **dataclasses.asdict(d), "passed": d.passed})
        return out


def summary_table(tables: Sequence[AgreementTable], metric: Literal["verdict", "ratio"] = "verdict") -> str:
    """One line per case, one column per implementation: "ok"/"FAIL" (or the worst error/bound ratio).

    The columns are ``IMPLEMENTATIONS`` followed by any other rows the tables hold (the Keras backend rows
    of ``run_cases``), in the order they first appear.
    """
    names = [n for n, _ in IMPLEMENTATIONS]
    for t in tables:
        names += [r.implementation for r in t.rows if r.implementation not in names]
    labels = [t.case.label for t in tables]
    width = max([len("case")] + [len(s) for s in labels])
    widths = [max(13, len(n)) for n in names]
    lines = ["case".ljust(width) + "  " + "  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True))]
    for t, label in zip(tables, labels, strict=False):
        cells = []
        for n in names:
            rows = [r for r in t.rows if r.implementation == n]
            if not rows:
                cells.append("-")
            elif not all(r.ok for r in rows):
                cells.append(next(r.status.value for r in rows if not r.ok))
            elif metric == "verdict":
                cells.append("ok" if all(r.passed for r in rows) else "FAIL")
            else:
                cells.append(f"{max(r.worst_ratio for r in rows):.2g}")
        lines.append(
            label.ljust(width) + "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# What the default conventions change: torch native vs Keras native on the same data
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConventionRow:
    """One quantity: how far the two frameworks' defaults are apart, measured and predicted.

    ``measured``: max |torch - keras| of the native layers. ``predicted``: the same for the float64
    reference run under ``PYTORCH`` and ``KERAS``. ``explained`` is True when the two agree within the
    sum of the derived error bounds of both frameworks, i.e. the whole difference is the conventions'.
    """

    quantity: str
    measured: float
    predicted: float
    bound: float

    @property
    def explained(self) -> bool:
        return abs(self.measured - self.predicted) <= self.bound


@dataclass(frozen=True)
class ConventionTable:
    """The result of ``cross_convention``: one ``ConventionRow`` per quantity, or a status saying why not."""

    case: Case
    rows: list[ConventionRow]
    status: Status = Status.RAN
    reason: str = ""

    def format_table(self) -> str:
        lines = [f"torch native vs keras native, default conventions: {self.case.label}"]
        if self.status is not Status.RAN:
            return lines[0] + "\n" + f"{self.status.value} ({self.reason})"
        lines.append(f"{'quantity':<13}{'measured':>11}{'predicted':>11}  explained by the conventions")
        for r in self.rows:
            lines.append(f"{r.quantity:<13}{r.measured:>11.3e}{r.predicted:>11.3e}  {r.explained}")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        lines = ["| quantity | measured | predicted | explained |", "|---|---|---|---|"]
        lines += [f"| {r.quantity} | {r.measured:.3e} | {r.predicted:.3e} | {r.explained} |" for r in self.rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_table()
