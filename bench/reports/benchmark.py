"""The main benchmark's Markdown report, section by section, from its summaries.

The report is what ``bench/results/<UTC time>.md`` holds and ``driver.py --render`` prints
again from the JSON; its shape is what the README and earlier results refer to, so each
section is written by a function of its own and joined in a fixed order.
"""

from __future__ import annotations

from typing import Any

from catalogue import LAYERS, WORKLOADS

from reports.formatting import fmt, fmt_ratio, ratio, section
from reports.summary import Summary
from reports.targets import concurrency_targets, targets

Summaries = dict[str, dict[str, Summary]]


def markdown(result: dict[str, Any], summaries: Summaries) -> str:
    """The whole report of one run (or of several pooled)."""
    lines = _header(result)
    lines += _ceiling(result)
    lines += _results(result, summaries)
    lines += _targets(result, summaries)
    lines += _command_mix(summaries)
    lines += _how_to_read()
    return "\n".join(lines)


def package_line(environment: dict[str, Any]) -> str:
    names = ("channels-valkey", "channels-redis", "channels", "valkey", "redis", "libvalkey")
    parts = [f"{name} {environment[name]}" for name in names if name in environment]
    parsers = ", ".join(f"{k}: {v} parser" for k, v in environment.get("parsers", {}).items())
    return ", ".join(parts) + (f" ({parsers})" if parsers else "")


def _header(result: dict[str, Any]) -> list[str]:
    """The title, and where, what and how it was measured."""
    lines: list[str] = []
    add = lines.append
    options = result["options"]
    add(f"# Channel layer benchmark, {result['started']}")
    add("")
    if result.get("pooled"):
        add(
            "Rounds pooled from several runs: each ratio is still taken within one round, "
            "but the runs may have measured different versions of this package."
        )
        add("")
    m = result["machine"]
    add(f"- Machine: {m['cpu']}, {m['cores']} cores, {m['system']}")
    add(f"- Server: valkey-server {result['server_version']}, private, no persistence, loopback")
    git = result["git"]
    dirty = f" with {len(git['src_changes'])} uncommitted change(s) under src/" * bool(
        git["src_changes"]
    )
    if "measured" not in result:  # runs before the package was measured as a wheel
        add(
            "- This package: the working tree installed editable, as it was at each "
            f"measurement; when the run ended: {git['commit'][:12]}{dirty}"
        )
    else:
        add(f"- This package: {result['measured']}")
    if result.get("baseline"):
        add(f"- Baseline (`ours-baseline`): {result['baseline']}")
    if "git_after" in result and result["git"] != result["git_after"]:
        add("- The working tree changed during the run (the measured wheel did not)")
    if "load_before" in result:
        add(
            f"- Load average when the run started: {result['load_before']:.2f} "
            "(other work on the machine makes rounds differ)"
        )
    for venv, environment in result["environments"].items():
        add(f"- `{venv}`: Python {environment.get('python')}, {package_line(environment)}")
    add(
        f"- Rounds: {options['rounds']}; each measurement {options['seconds']} s "
        f"(ping-pong {options['seconds'] * 2} s) after a {options['warmup']} s warm-up; "
        "layers interleaved, their order rotated every round; medians over rounds"
    )
    for key, why in result["skipped"].items():
        add(f"- Not measured: {key} ({why})")
    add("")
    return lines


def _ceiling(result: dict[str, Any]) -> list[str]:
    """What one connection does with sequential PINGs, the cheapest round trip."""
    ceilings = result["ceilings"]
    lines: list[str] = []
    add = lines.append
    add("## Ceiling: sequential PINGs on one valkey-py asyncio connection")
    add("")
    add("| valkey-py | PING/s through the client (pool checkout) | PING/s on the bare connection |")
    add("| --- | ---: | ---: |")
    for venv, label in (("ours", "libvalkey parser"), ("ours-pyparser", "pure-Python parser")):
        if venv in ceilings:
            c = ceilings[venv]
            add(f"| {label} | {fmt(c['client'])} | {fmt(c['connection'])} |")
    add("")
    add(
        "A layer that needs one round trip per message on one connection cannot beat the first "
        "column; `% of ceiling` below is a layer's messages/s divided by it (libvalkey parser, "
        "as installed)."
    )
    add("")
    return lines


def _results(result: dict[str, Any], summaries: Summaries) -> list[str]:
    """A table per workload measured, and the errors of the runs that failed."""
    reference = (result["ceilings"].get("ours") or {}).get("client")
    lines: list[str] = []
    add = lines.append
    add("## Results")
    for workload in WORKLOADS:
        table = summaries.get(workload.key)
        if not table:
            continue
        add("")
        add(f"### `{workload.key}`: {workload.title}")
        add("")
        layers_here = [layer for layer in LAYERS if layer.key in table]
        grouped = workload.key.startswith("group")
        concurrent = workload.key.startswith("concurrent-")
        if concurrent:
            add(CONCURRENT_HEADER)
        elif workload.key == "ping-pong":
            add(
                "| layer | ping-pongs/s | rounds | x peer | p50 ms | p99 ms | p99 x peer "
                "| commands/msg | round trips/msg | ok runs |"
            )
            add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        elif grouped:
            add(
                "| layer | deliveries/s | rounds | x peer | group_send call ms (p50) "
                "| sender round trips/group_send | round trips/group_send (all) "
                "| commands/group_send | ok runs |"
            )
            add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        else:
            add(
                "| layer | msgs/s | rounds | x peer | % of ceiling | commands/msg "
                "| round trips/msg | ok runs |"
            )
            add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for layer in layers_here:
            s = table[layer.key]
            name = f"**{layer.key}**" if layer.key.startswith("ours") else layer.key
            x = fmt_ratio(s.ratio)
            ok = f"{s.ok}/{s.runs}"
            spread = f"{fmt(s.spread[0])}-{fmt(s.spread[1])}" if s.spread else "-"
            if concurrent:
                add(concurrent_row(name, s))
            elif workload.key == "ping-pong":
                x99 = fmt_ratio(s.p99_ratio)
                add(
                    f"| {name} | {fmt(s.operation_rate)} | {spread} | {x} | {fmt(s.p50, 2, 1000)} "
                    f"| {fmt(s.p99, 2, 1000)} | {x99} | {fmt(s.commands, 2)} "
                    f"| {fmt(s.round_trips, 2)} | {ok} |"
                )
            elif grouped:
                add(
                    f"| {name} | {fmt(s.rate)} | {spread} | {x} | {fmt(s.p50, 2, 1000)} "
                    f"| {fmt(s.sender_round_trips, 2)} | {fmt(s.round_trips_per_operation, 2)} "
                    f"| {fmt(s.commands_per_operation, 1)} | {ok} |"
                )
            else:
                share = ratio(s.rate, reference)
                add(
                    f"| {name} | {fmt(s.rate)} | {spread} | {x} | {fmt(share, 0, 100)}% "
                    f"| {fmt(s.commands, 2)} | {fmt(s.round_trips, 2)} | {ok} |"
                )
        for layer in layers_here:
            for error in table[layer.key].errors or ():
                add(f"\n{layer.key} failed: `{error}`")
    return lines


def _targets(result: dict[str, Any], summaries: Summaries) -> list[str]:
    """The targets of the issues, met or not, for both parsers."""
    lines = section("Targets")
    add = lines.append
    add("| target | measured | verdict |")
    add("| --- | --- | --- |")
    for ours, ours_pubsub in (("ours", "ours pubsub"), ("ours+pyparser", "ours pubsub+pyparser")):
        for target, measured, verdict in targets(summaries, ours, ours_pubsub):
            add(f"| {ours}: {target} | {measured} | {verdict} |")
    for target, measured, verdict in concurrency_targets(result["records"], summaries):
        add(f"| ours: {target} | {measured} | {verdict} |")
    return lines


def _command_mix(summaries: Summaries) -> list[str]:
    """Which server commands each layer spends per message."""
    lines = section("Server commands per delivered message, by command")
    add = lines.append
    add("| workload | layer | commands |")
    add("| --- | --- | --- |")
    for workload in WORKLOADS:
        for key, s in summaries.get(workload.key, {}).items():
            mix = s.command_mix or {}
            scale = 1000 if workload.key.startswith("group") else 1
            unit = " (per 1000 deliveries)" if scale != 1 else ""
            text = ", ".join(
                f"{name} {count * scale:.2f}"
                for name, count in sorted(mix.items(), key=lambda item: -item[1])
                if count * scale >= 0.005
            )
            add(f"| {workload.key} | {key} | {text}{unit} |")
    return lines


def _how_to_read() -> list[str]:
    """What the columns mean and how they were counted."""
    lines = section("How to read this")
    add = lines.append
    add(
        "- `x peer`: the layer's number divided by channels_redis 4.3.0's measured in the same "
        "round, seconds apart, on the same server (`RedisChannelLayer` for core layers, "
        "`RedisPubSubChannelLayer` for pub/sub layers); the median of those per-round ratios. "
        "Above 1 is faster; for latency (p99 x peer) below 1 is better. `x baseline`: the same "
        "against this package's baseline build (`--baseline REF`) in the same round."
    )
    add(
        "- `concurrent-*`: `peak connections` is the most connections the measuring process "
        "held to the server during the measured epoch: the server's `connected_clients` "
        "(`INFO clients`), sampled every 2 ms from a thread on a connection of its own, minus "
        "its value when that connection was opened, before the layer made any. `connections "
        "opened` is `total_connections_received` during the epoch. Core layers run "
        "`concurrent-*-local` with `capacity` 10000, as all process-local channels of a process "
        "share one queue; every other measurement uses the defaults."
    )
    add(
        "- Pub/sub layers are not run on the normal-channel workloads: with pub/sub a message "
        "sent to a normal channel goes to every process subscribed to it, not to one receiver."
    )
    add(
        "- Every run checks that each receiver got every message of the measured epoch exactly "
        "once and in order, and that no message was left queued; `ok runs` counts the runs "
        "that passed. Senders keep at most 50 messages (group sends) in flight, so no channel "
        "reaches its capacity of 100."
    )
    add(
        "- Round trips are counted in the clients: each call of valkey-py's or redis-py's "
        "asyncio `send_packed_command` (one command, or one whole pipeline) in every process "
        "during the measured epoch. Pushed pub/sub messages cost none. `sender round trips` "
        "are those made by the task calling `group_send`."
    )
    add(
        "- Commands are the server's: `total_commands_processed` from `INFO stats` just before "
        "and after the measured epoch, minus that `INFO`; commands run by Lua scripts count, so "
        "one `EVALSHA` running `ZCARD`, `ZADD`, `EXPIRE` is 4 commands and 1 round trip."
    )
    add(
        "- Both counts are per delivered message (per group_send for groups, where one "
        "group_send delivers 1000 messages); they do not depend on the machine."
    )
    add(
        "- ping-pong p50/p99: the time from sending a ping to receiving its pong. group_send "
        "p50: the time one `group_send` call takes. `rounds`: the lowest and highest round "
        "of the first number."
    )
    add("")
    return lines


CONCURRENT_HEADER = (
    "| layer | msgs/s | rounds | x peer | x baseline | peak connections | connections opened "
    "| commands/msg | round trips/msg | ok runs |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def concurrent_row(name: str, s: Summary) -> str:
    """A row of a ``concurrent-*`` table: the usual numbers and the connections."""
    spread = f"{fmt(s.spread[0])}-{fmt(s.spread[1])}" if s.spread else "-"
    return (
        f"| {name} | {fmt(s.rate)} | {spread} | {fmt_ratio(s.ratio)} "
        f"| {fmt_ratio(s.baseline_ratio)} | {fmt(s.peak_connections)} "
        f"| {fmt(s.opened_connections)} | {fmt(s.commands, 2)} | {fmt(s.round_trips, 2)} "
        f"| {s.ok}/{s.runs} |"
    )
