"""How the reports write numbers: thousands separated, ratios as ``1.23x``, ranges of rounds.

Shared by the main and cluster reports so that the same number reads the same in both.
"""

from __future__ import annotations

from shared.stats import median


def fmt(value: float | None, digits: int = 0, scale: float = 1.0) -> str:
    if value is None:
        return "-"
    return f"{value * scale:,.{digits}f}"


def ratio(value: float | None, peer: float | None) -> float | None:
    if value is None or peer is None or peer == 0:
        return None
    return value / peer


def ratio_range(values: list[float] | None) -> str:
    """``(lowest-highest round)``, or nothing for fewer than two rounds."""
    if not values or len(values) < 2:
        return ""
    return f"({min(values):.2f}-{max(values):.2f})"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def fmt_ratios(values: list[float]) -> str:
    """The median ratio and, for more than one round, the lowest and highest round."""
    if not values:
        return "-"
    text = f"{median(values):.2f}x"
    if len(values) > 1:
        text += f" ({min(values):.2f}-{max(values):.2f})"
    return text


def section(title: str) -> list[str]:
    """The first lines of a report's section: a blank line, its heading, a blank line."""
    return ["", f"## {title}", ""]
