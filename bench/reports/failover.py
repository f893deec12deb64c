"""The ``--failover`` report: per scenario, each kill's count of lost, duplicated and raised
sends, and the steady-state cost of ``wait_for_replicas``. Reading only, no I/O.
"""

from __future__ import annotations

from typing import Any

from shared.stats import median


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.2f}"


def failover_table(runs: list[dict[str, Any]], waits: list[int]) -> list[str]:
    lines = [
        "| wait_for_replicas | run | killed | sent | acknowledged | send raised | received "
        "| **lost** | duplicates | out of order | raised but received | unreceived at kill "
        "| failover s | healthy s | longest send s | left queued | ok |",
        "| ---: | ---: | --- |" + " ---: |" * 13 + " --- |",
    ]
    for run in runs:
        failed = ", ".join(f"{k} {v}" for k, v in sorted(run["failed"].items())) or "0"
        lost_text = str(len(run["lost"]))
        if run["lost"]:
            lost_text += f" (#{', #'.join(map(str, run['lost'][:8]))})"
        lines.append(
            f"| {run['wait_for_replicas']} | {run['index'] + 1} | {run['victim']} | {run['sent']} "
            f"| {run['acknowledged']} | {failed} | {run['received']} | **{lost_text}** "
            f"| {run['duplicates']} | {run['out_of_order']} | {run['failed_but_received']} "
            f"| {run['unreceived_at_kill']} "
            f"| {run['failover_seconds']:.2f} | {run['healthy_seconds']:.2f} "
            f"| {run['longest_send']:.2f} | {run['left_queued']} "
            f"| {'yes' if run['ok'] else 'no: ' + run['error']} |"
        )
    lines += [
        "",
        "| wait_for_replicas | runs | runs losing messages | acknowledged and lost "
        "| send raised | duplicates |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for wait in waits:
        mine = [r for r in runs if r["wait_for_replicas"] == wait]
        losing = sum(1 for r in mine if r["lost"])
        lost = sum(len(r["lost"]) for r in mine)
        acked = sum(r["acknowledged"] for r in mine)
        raised = sum(sum(r["failed"].values()) for r in mine)
        duplicates = sum(r["duplicates"] for r in mine)
        lines.append(
            f"| {wait} | {len(mine)} | {losing} | {lost} of {acked} | {raised} | {duplicates} |"
        )
    return lines


def steady_table(runs: list[dict[str, Any]], waits: list[int]) -> list[str]:
    lines = [
        "| wait_for_replicas | sends/s (median) | runs | send p50 ms | send p99 ms "
        "| send raised | lost | duplicates |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for wait in waits:
        mine = [r for r in runs if r["wait_for_replicas"] == wait and r["ok"]]
        if not mine:
            continue
        rates = [r["rate"] for r in mine]
        lines.append(
            f"| {wait} | {median(rates):,.0f} | "
            f"{min(rates):,.0f}-{max(rates):,.0f} "
            f"| {fmt_ms(median(r['p50'] for r in mine))} "
            f"| {fmt_ms(median(r['p99'] for r in mine))} "
            f"| {sum(r['failed'] for r in mine)} | {sum(r['lost'] for r in mine)} "
            f"| {sum(r['duplicates'] for r in mine)} |"
        )
    by_index: dict[int, dict[int, dict[str, Any]]] = {}
    for run in runs:
        by_index.setdefault(run["index"], {})[run["wait_for_replicas"]] = run
    ratios = [
        pair[1]["rate"] / pair[0]["rate"]
        for pair in by_index.values()
        if 0 in pair and 1 in pair and pair[0]["rate"] and pair[0]["ok"] and pair[1]["ok"]
    ]
    if ratios:
        lines += [
            "",
            f"Sends/s with `wait_for_replicas=1` ÷ without, pair by pair (measured one after "
            f"the other): median {median(ratios):.2f}x "
            f"({min(ratios):.2f}-{max(ratios):.2f}).",
        ]
    return lines


def markdown(result: dict[str, Any]) -> str:
    lines: list[str] = []
    add = lines.append
    options = result["options"]
    waits = options["waits"]
    add(f"# Failover benchmark, {result['started']}")
    add("")
    add(f"- Machine: {result['machine']}")
    add(
        f"- Cluster: valkey-server {result['server_version']}, 3 primaries with 1 replica each, "
        "loopback, no persistence, `cluster-node-timeout 1000`, "
        "`cluster-replica-validity-factor 0`; a new cluster per scenario"
    )
    add(f"- This package: channels-valkey {result['package']} ({result['measured']})")
    add(f"- Load average when the run started: {result['load_before']:.2f}")
    add(
        f"- Per failover run: {options['before']} s of traffic, SIGKILL of the primary serving "
        f"the channel's queue (no WAIT first), failover, {options['down']} s later a restart "
        f"of the killed node (it rejoins as a replica and resyncs), {options['after']} s more "
        "once healthy, then a last message and a drain. Sender at most "
        f"{options['window']} messages ahead of the receiver; `replica_timeout` 1 s; "
        f"{options['runs']} runs per setting, "
        "alternating."
    )
    for scenario in result["scenarios"]:
        add("")
        add(f"## Scenario `{scenario['key']}`: {scenario['title']}")
        add("")
        if scenario.get("error"):
            add(f"Not measured: `{scenario['error']}`")
            continue
        add("### Across a primary kill")
        add("")
        lines.extend(failover_table(scenario["failover"], waits))
        if scenario["steady"]:
            add("")
            add("### Steady state (no failover, the receiver as fast as it can)")
            add("")
            lines.extend(steady_table(scenario["steady"], waits))
    add("")
    add("## How to read this")
    add("")
    add(
        "- *acknowledged*: `send` returned. *lost*: acknowledged, never received (numbers "
        "listed). *send raised*: `send` raised (with `wait_for_replicas=1`, `NotReplicated` "
        "while the new primary has no replica yet: the message is queued but not confirmed). "
        "*raised but received*: such messages that arrived anyway."
    )
    add(
        "- *duplicates*: extra deliveries of a number. *out of order*: a number received after "
        "a higher one. *unreceived at kill*: messages sent and not yet received when the "
        "primary was killed (in the queue, or on their way). *failover s*: from the kill until "
        "the cluster names a new primary for the queue; *healthy s*: until the restarted node "
        "is in sync as its replica."
    )
    add(
        "- Steady state: one sender awaiting each `send`, one receiver, in one process on the "
        "healthy cluster; latency is the time of one `send` call."
    )
    add("")
    return "\n".join(lines)
