"""Numbers as short table cells; missing (None) values become a dash, never 'None' or 'nan'."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DASH = "—"


def num(x: float | None, digits: int = 2) -> str:
    return DASH if x is None else f"{x:.{digits}f}"


def pct(x: float | None) -> str:
    return DASH if x is None else f"{100 * x:.1f}%"


def with_ci(x: float | None, ci: Sequence[float] | None, percent: bool = False) -> str:
    """'0.62 [0.55, 0.68]', or '41.2% [38.1, 44.3]' (the interval in the same unit, without repeating it)."""
    if x is None:
        return DASH
    if ci is None:
        return pct(x) if percent else num(x)
    if percent:
        return f"{pct(x)} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return f"{num(x)} [{num(ci[0])}, {num(ci[1])}]"


def pvalue(p: float | None) -> str:
    if p is None:
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def rate(stat: dict[str, Any] | None) -> str:
    """A report.summarize rate ({count, n, rate, ci}) as a percentage."""
    return pct(stat.get("rate")) if isinstance(stat, dict) else DASH


def norm_label(norm: str | None) -> str:
    """'linf' -> 'L∞': the attack registry's norm names as the paper writes them."""
    return {"linf": "L∞", "l2": "L2", "l1": "L1", "l0": "L0"}.get(norm or "", norm or "")


def short_sha(sha: str | None) -> str:
    return sha[:12] if sha else "unknown"
