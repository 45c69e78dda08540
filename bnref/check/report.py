"""The conformance report: ``Line``, ``Report``, and how measured numbers are written in them.

Every number a line shows is written at the precision that decides it: a measured value to the digits its
tolerance allows (``decimal``), and at least to the digits where it differs from the value it is held to
(``decisive``); an error/bound ratio never rounded onto or across 1 (``ratio_text``); a summary over channels
with its spread (``spread_text``: "45 (12-397)").

NumPy only.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "PASS",
    "FAIL",
    "INFO",
    "ZH",
    "SCHEMA",
    "Line",
    "Report",
    "snap",
    "decimal",
    "decisive",
    "ratio_text",
    "spread_text",
    "short",
    "jsonable",
]

PASS, FAIL, INFO = "PASS", "FAIL", "INFO"
#: The JSON schema name of one report.
SCHEMA = "bnref.check.conformance/1"

#: The Chinese words for the words a report glues into prose (verdicts and convention names).
ZH: dict[str, str] = {
    "PASS": "通过",
    "FAIL": "未通过",
    "INFO": "信息",
    "biased": "有偏",
    "unbiased": "无偏",
    "cumulative": "累积平均",
    "constant": "常数",
    "debiased": "零偏差校正的指数平均",
    "first-replaces": "首批替换初值",
    "raises": "报错",
    "returns beta": "返回 beta",
    "returns NaN": "返回 NaN",
    "not supported": "不支持",
}


# ----------------------------------------------------------------------------------------------------
# Numbers as text
# ----------------------------------------------------------------------------------------------------


def snap(value: float, tol: float) -> float:
    """The shortest decimal (1 to 6 significant digits) within ``tol`` of ``value``; ``value`` if none is."""
    if not math.isfinite(value) or value == 0:
        return value
    for digits in range(1, 7):
        shorter = float(f"{value:.{digits - 1}e}")
        if abs(shorter - value) <= tol:
            return shorter
    return value


def decimal(value: float, tol: float, most: int = 9) -> str:
    """``value`` with the fewest significant digits (``g`` format) that stay within ``tol`` of it (``most`` at most).

    >>> decimal(0.0010000004, 1e-9), decimal(1.00003e-05, 1e-10), decimal(0.123456, 0.01)
    ('0.001', '1.00003e-05', '0.12')
    """
    if not math.isfinite(value) or value == 0:
        return f"{value:g}"
    for digits in range(1, most + 1):
        text = f"{value:.{digits}g}"
        if abs(float(text) - value) <= tol:
            return text
    return f"{value:.{most}g}"


def decisive(value: float, tol: float, held_to: float, digits: int = 3) -> str:
    """``value`` with at least ``digits`` significant digits, and more until it reads differently from ``held_to``
    or reaches the precision of its tolerance: a value that fails against ``held_to`` never reads as equal to it.

    >>> decisive(1.00003e-05, 1e-11, 1e-05)
    '1.00003e-05'
    """
    if not math.isfinite(value):
        return f"{value:g}"
    for d in range(digits, 10):
        text = f"{value:.{d}g}"
        if text != f"{held_to:.{d}g}" or abs(float(text) - value) <= tol:
            return text
    return f"{value:.9g}"


def ratio_text(ratio: float) -> str:
    """An error/bound ratio to two significant digits, with more where that would round it onto or across 1.

    >>> ratio_text(0.044), ratio_text(1.027), ratio_text(0.9996), ratio_text(1.0), ratio_text(float("inf"))
    ('0.044', '1.03', '0.9996', '1', 'inf')
    """
    if not math.isfinite(ratio):
        return f"{ratio:g}"
    for digits in range(2, 8):
        text = f"{ratio:.{digits}g}"
        shown = float(text)
        if ratio == 1.0 or (shown != 1.0 and (shown <= 1.0) == (ratio <= 1.0)):
            return text
    return f"{ratio:.8g}"


def short(value: float) -> str:
    """Three significant digits."""
    return f"{value:.3g}"


def spread_text(values: Sequence[float] | np.ndarray, fmt: Any = short, rel: float = 1e-3) -> str:
    """The median of ``values``, and their range where it is wider than ``rel`` of the median: "45 (12-397)"."""
    a = np.asarray(values, np.float64).ravel()
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return "nan"
    median = float(np.median(finite))
    low, high = float(finite.min()), float(finite.max())
    text = fmt(median)
    if finite.size < a.size:
        text += f" ({a.size - finite.size} of {a.size} not finite)"
    if high - low > rel * max(abs(median), 1e-300):
        lo, hi = fmt(low), fmt(high)
        text += f" ({lo} to {hi})" if low < 0 or "e" in lo + hi else f" ({lo}-{hi})"
    return text


def jsonable(obj: Any) -> Any:
    """``obj`` as JSON would give it back: tuples as lists, NumPy scalars and arrays as Python numbers and lists."""

    def default(o: Any) -> Any:
        if isinstance(o, np.ndarray | np.generic):
            return o.tolist()
        raise TypeError(f"not JSON-serialisable: {type(o).__name__}")

    return json.loads(json.dumps(obj, default=default))


# ----------------------------------------------------------------------------------------------------
# Line and Report
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One line of a report.

    Attributes
    ----------
    section : str
        ``"layout"``, ``"conventions"``, ``"float32 accuracy"``, ``"edge cases"``, ``"half precision"`` or
        ``"adapter contract"``.
    check : str
        What is checked.
    verdict : str
        ``"PASS"``, ``"FAIL"`` or ``"INFO"`` (a convention with nothing to hold it to, a behaviour).
    measured : str
        What was measured, as text that is the same on every CPU (a convention, a verdict-derived value).
    bound : str
        The bound or the declared value it is held to ("" if none).
    numbers : str
        Measured values that depend on the CPU's kernels: errors, the estimates behind an inferred convention
        (``to_text(numbers=False)`` leaves them out).
    ratio : float or None
        The worst error / bound (the line passes when it is at most 1), where there is one.
    detail : dict
        Everything else, JSON-ready (estimates per channel, errors per ratio, ...).
    """

    section: str
    check: str
    verdict: str
    measured: str
    bound: str = ""
    numbers: str = ""
    ratio: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in (PASS, FAIL, INFO):
            raise ValueError(f"verdict must be PASS, FAIL or INFO; got {self.verdict!r}")
        object.__setattr__(self, "detail", jsonable(self.detail))
        object.__setattr__(self, "ratio", None if self.ratio is None else float(self.ratio))

    @property
    def verdict_zh(self) -> str:
        return ZH[self.verdict]

    def to_text(self, numbers: bool = True) -> str:
        """The line on its own: "section · check · verdict · measured · bound"."""
        measured = f"{self.measured}; {self.numbers}" if numbers and self.numbers else self.measured
        parts = [self.section, self.check, self.verdict, measured or "-"]
        return " · ".join(parts + ([self.bound] if self.bound else []))


@dataclass(frozen=True)
class Report:
    """The result of ``check``: a header naming the implementation, its versions and backend, and the lines.

    ``convention`` holds the measured convention (eps, new-value weights, running rule, variance factor,
    initial values, layout).
    """

    implementation: str
    header: str
    lines: tuple[Line, ...]
    convention: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lines", tuple(self.lines))
        object.__setattr__(self, "convention", jsonable(self.convention))

    @property
    def passed(self) -> bool:
        """No line failed."""
        return all(li.verdict != FAIL for li in self.lines)

    @property
    def failures(self) -> list[str]:
        return [li.check for li in self.lines if li.verdict == FAIL]

    def line(self, check: str) -> Line:
        """The line named ``check`` (ValueError if there is none)."""
        for li in self.lines:
            if li.check == check:
                return li
        raise ValueError(f"no line {check!r} in the report of {self.implementation}; lines: {self.checks}")

    @property
    def checks(self) -> list[str]:
        return [li.check for li in self.lines]

    def verdicts(self) -> dict[str, str]:
        """``{check: verdict}``, the part of a report that is the same on every CPU."""
        return {li.check: li.verdict for li in self.lines}

    def failing_text(self) -> str:
        """The header and every failing line, one a line with its numbers ("" when nothing failed)."""
        failing = [li.to_text() for li in self.lines if li.verdict == FAIL]
        return "\n".join([f"{self.implementation} ({self.header}):", *failing]) if failing else ""

    def _rows(self, numbers: bool) -> list[list[str]]:
        rows = []
        for li in self.lines:
            measured = li.measured
            if numbers and li.numbers:
                measured = f"{measured}; {li.numbers}" if measured else li.numbers
            rows.append([li.section, li.check, li.verdict, measured or "-", li.bound or "-"])
        return rows

    def to_text(self, numbers: bool = True) -> str:
        """A plain-text table; ``numbers=False`` leaves out the CPU-dependent measured values."""
        header = ["section", "check", "verdict", "measured", "bound / declared"]
        rows = self._rows(numbers)
        widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]
        out = [self.header, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
        out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        verdict = "no line failed" if self.passed else f"FAILED: {', '.join(self.failures)}"
        out.append(f"{self.implementation}: {verdict}")
        return "\n".join(out)

    def to_markdown(self, numbers: bool = True) -> str:
        """A Markdown table under a bold header line."""
        esc = [[c.replace("|", "\\|") for c in r] for r in self._rows(numbers)]
        out = [
            f"**{self.header}**",
            "",
            "| section | check | verdict | measured | bound / declared |",
            "|---" * 5 + "|",
        ]
        out += ["| " + " | ".join(r) + " |" for r in esc]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.to_text()

    def to_dict(self) -> dict[str, Any]:
        from bnref import __version__

        return {
            "schema": SCHEMA,
            "bnref": __version__,
            "implementation": self.implementation,
            "header": self.header,
            "passed": self.passed,
            "convention": self.convention,
            "lines": [dataclasses.asdict(li) for li in self.lines],
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        if d.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} report: schema {d.get('schema')!r}")
        lines = tuple(Line(**li) for li in d["lines"])
        return cls(d["implementation"], d["header"], lines, d.get("convention", {}))
