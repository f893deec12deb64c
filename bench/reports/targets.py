"""The goals the benchmark checks: the issues' targets, as rows of (target, measured, verdict).

Each target compares our layer with its peer (or with the baseline build, or with itself at
another concurrency) by per-round ratios, and says in how many rounds it was met as well as
whether the median met it: on a shared machine one round decides nothing.
"""

from __future__ import annotations

from typing import Any

from catalogue import CORE_PEER, PUBSUB_PEER
from shared.stats import median

from reports.formatting import fmt, fmt_ratio, ratio_range
from reports.summary import Summary, rates_by_round

Row = tuple[str, str, str]
Summaries = dict[str, dict[str, Summary]]


def _verdict(ok: bool | None, rounds: list[bool] | None = None) -> str:
    text = "n/a" if ok is None else ("met" if ok else "**not met**")
    if ok is not None and rounds:
        text += f" ({sum(rounds)} of {len(rounds)} rounds)"
    return text


def _at_least(value: float | None, per_round: list[float] | None, bound: float) -> str:
    ok = None if value is None else value >= bound
    return _verdict(ok, [r >= bound for r in per_round or ()])


def _pair(
    summaries: Summaries, workload: str, key: str, peer: str
) -> tuple[Summary, Summary] | None:
    mine, theirs = summaries.get(workload, {}).get(key), summaries.get(workload, {}).get(peer)
    return None if mine is None or theirs is None else (mine, theirs)


def _faster_row(title: str, mine: Summary, bound: float) -> Row:
    """At least ``bound`` times the peer's rate."""
    return (
        title,
        f"{fmt_ratio(mine.ratio)} {ratio_range(mine.ratios)}",
        _at_least(mine.ratio, mine.ratios, bound),
    )


def targets(summaries: Summaries, ours: str, ours_pubsub: str) -> list[Row]:
    """(target, measured, verdict) for the issue's targets, for one flavour of our layers."""
    rows = _send_receive_rows(summaries, ours)
    found = _pair(summaries, "fan-in-200", ours, CORE_PEER)
    if found:
        rows.append(_faster_row("core fan-in-200: ≥4x msgs/s", found[0], 4))
    rows += _group_rows(summaries, ours)
    rows += _ping_pong_rows(summaries, ours, ours_pubsub)
    found = _pair(summaries, "fan-in-200", ours_pubsub, PUBSUB_PEER)
    if found:
        rows.append(_faster_row("pub/sub fan-in-200: ≥1.2x msgs/s", found[0], 1.2))
    return rows


def _send_receive_rows(summaries: Summaries, ours: str) -> list[Row]:
    rows: list[Row] = []
    for workload in ("send-receive", "send-receive-2proc"):
        found = _pair(summaries, workload, ours, CORE_PEER)
        if found:
            mine = found[0]
            r = mine.ratio
            trips = mine.round_trips
            ok = None if r is None or trips is None else r >= 3 and trips <= 2
            rounds = [x >= 3 and (trips or 0) <= 2 for x in mine.ratios or ()]
            rows.append(
                (
                    f"core {workload}: ≥3x msgs/s at ≤2 round trips/msg",
                    f"{fmt_ratio(r)} {ratio_range(mine.ratios)} at {fmt(trips, 2)} round trips/msg",
                    _verdict(ok, rounds),
                )
            )
    return rows


def _group_rows(summaries: Summaries, ours: str) -> list[Row]:
    rows: list[Row] = []
    senders: list[float] = []
    for workload in ("group-1000", "group-1000-4proc"):
        found = _pair(summaries, workload, ours, CORE_PEER)
        if found:
            rows.append(_faster_row(f"core {workload}: ≥3x deliveries/s", found[0], 3))
            if found[0].sender_round_trips is not None:
                senders.append(found[0].sender_round_trips)
    if len(senders) == 2:
        rows.append(
            (
                "core group_send: constant round trips per group_send",
                f"{senders[0]:.2f} and {senders[1]:.2f} by the sender "
                "(1000 members in 1 process, in 4)",
                _verdict(max(senders) - min(senders) < 0.05),
            )
        )
    return rows


def _ping_pong_rows(summaries: Summaries, ours: str, ours_pubsub: str) -> list[Row]:
    rows: list[Row] = []
    for key, peer_key, bound, kind in (
        (ours, CORE_PEER, 0.5, "core"),
        (ours_pubsub, PUBSUB_PEER, 0.8, "pub/sub"),
    ):
        found = _pair(summaries, "ping-pong", key, peer_key)
        if found:
            mine, peer = found
            r = mine.p99_ratio
            rows.append(
                (
                    f"{kind} ping-pong: p99 ≤{bound}x the peer's",
                    f"{fmt_ratio(r)} {ratio_range(mine.p99_ratios)}; medians "
                    f"{fmt(mine.p99, 2, 1000)} ms vs {fmt(peer.p99, 2, 1000)} ms",
                    _verdict(
                        None if r is None else r <= bound,
                        [x <= bound for x in mine.p99_ratios or ()],
                    ),
                )
            )
    return rows


def concurrency_targets(
    records: list[dict[str, Any]], summaries: dict[str, dict[str, Summary]]
) -> list[Row]:
    """(target, measured, verdict) for the targets on concurrent senders, for ``ours``."""
    rows: list[Row] = []

    def found(workload: str) -> Summary | None:
        return summaries.get(workload, {}).get("ours")

    def verdict(per_round: list[bool]) -> str:
        if not per_round:
            return "n/a"
        met = sorted(per_round)[len(per_round) // 2]  # the median round
        return f"{'met' if met else '**not met**'} ({sum(per_round)} of {len(per_round)} rounds)"

    local, normal = found("concurrent-200-local"), found("concurrent-200-normal")
    if local is not None and local.peak_connections is not None:
        peaks = [
            r["connections"]["peak"]
            for r in records
            if r.get("ok") and r.get("workload") == "concurrent-200-local" and r["key"] == "ours"
        ]
        rows.append(
            (
                "concurrent-200-local: at most 4 connections at peak",
                f"{fmt(local.peak_connections)} ({min(peaks)}-{max(peaks)})",
                verdict([peak <= 4 for peak in peaks]),
            )
        )
    if normal is not None and normal.peak_connections is not None:
        rows.append(
            ("concurrent-200-normal: connections at peak", fmt(normal.peak_connections), "-")
        )
    if local is not None and local.baseline_ratios:
        rows.append(
            (
                "concurrent-200-local: ≥3x the baseline's msgs/s",
                f"{fmt_ratio(local.baseline_ratio)} {ratio_range(local.baseline_ratios)}",
                verdict([x >= 3 for x in local.baseline_ratios]),
            )
        )
    at_200 = rates_by_round(records, "concurrent-200-local", "ours")
    at_40 = rates_by_round(records, "concurrent-40-local", "ours")
    scaling = [at_200[n] / at_40[n] for n in sorted(at_200.keys() & at_40.keys())]
    if scaling:
        rows.append(
            (
                "concurrent-200-local: ≥ the msgs/s of concurrent-40-local",
                f"{fmt_ratio(median(scaling))} {ratio_range(scaling)}",
                verdict([x >= 1 for x in scaling]),
            )
        )
    normal_40 = found("concurrent-40-normal")
    if normal_40 is not None and normal_40.ratios:
        rows.append(
            (
                "concurrent-40-normal: ≥6x channels_redis msgs/s",
                f"{fmt_ratio(normal_40.ratio)} {ratio_range(normal_40.ratios)}",
                verdict([x >= 6 for x in normal_40.ratios]),
            )
        )
    return rows
