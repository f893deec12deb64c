"""The ``--sync`` report: calls/s of each case, the goals for ``ours sync``, the hand-over.

Every ratio is taken within a round (the cases measured seconds apart), then summed up by its
median and its lowest and highest round. Reading only, no I/O.
"""

from __future__ import annotations

from catalogue import SYNC_CASES, SYNC_METHODS, SYNC_TARGETS
from shared.stats import median


def render(results: dict[str, object]) -> str:
    rounds: list[dict[str, dict[str, dict[str, float]]]] = results["rounds"]  # type: ignore[assignment]
    lines = [
        "# Publishing from synchronous code",
        "",
        f"Measured: {results['measured']}; {len(rounds)} round(s) of "
        f"{results['seconds']} s per measurement; load average at start "
        f"{results['loadavg']}.",
        "",
        "| method | case | calls/s (median) | lowest-highest | new connections/call |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method in SYNC_METHODS:
        for case in SYNC_CASES:
            rates = [r[method][case]["calls_per_s"] for r in rounds]
            conns = [r[method][case]["new_connections_per_call"] for r in rounds]
            lines.append(
                f"| `{method}` | {case} | {median(rates):,.0f} | "
                f"{min(rates):,.0f}-{max(rates):,.0f} | {median(conns):.3f} |"
            )
    lines += [
        "",
        "Targets: `ours sync` divided by the other case, within each round; median and "
        "lowest-highest over rounds.",
        "",
        "| method | against | goal | ratio (median) | lowest-highest | met in rounds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for method in SYNC_METHODS:
        for other, goal in SYNC_TARGETS.items():
            ratios = [
                r[method]["ours sync"]["calls_per_s"] / r[method][other]["calls_per_s"]
                for r in rounds
            ]
            met = sum(ratio >= goal for ratio in ratios)
            lines.append(
                f"| `{method}` | {other} | {goal:g}x | {median(ratios):.1f}x | "
                f"{min(ratios):.1f}-{max(ratios):.1f}x | {met}/{len(ratios)} |"
            )
    lines += [
        "",
        "What the hand-over between threads costs: `ours sync` divided by `ours await`.",
        "",
        "| method | ratio (median) | lowest-highest |",
        "| --- | --- | --- |",
    ]
    for method in SYNC_METHODS:
        ratios = [
            r[method]["ours sync"]["calls_per_s"] / r[method]["ours await"]["calls_per_s"]
            for r in rounds
        ]
        lines.append(f"| `{method}` | {median(ratios):.2f} | {min(ratios):.2f}-{max(ratios):.2f} |")
    return "\n".join(lines) + "\n"
