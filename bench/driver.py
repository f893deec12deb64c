"""Run every workload against every layer, interleaved, and write the results.

``bench/run`` starts a private valkey-server and the virtual environments, then calls

    python3 bench/driver.py --url redis://127.0.0.1:PORT --venvs bench/.venvs [--rounds 3]

Each round measures the PING ceiling, then every workload on every layer, the layers' order
rotated by one per round (A B C, B C A, C A B, ...). Before each measurement the server is
flushed and its statistics reset; afterwards any message left in a queue is counted (there
should be none). Results go to ``bench/results/<UTC time>.json`` and ``.md`` and to
``bench/results/latest.md``. Standard library only, so any ``python3`` runs it.

This is the entry point only: it reads the options and hands over to the runners
(``runners/benchmark.py``, ``runners/cluster.py``) and the reports (``reports/``). Nothing
imports it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from catalogue import (
    BASELINE_VENV,
    CONCURRENT_KEYS,
    DEFAULT_WORKLOAD_KEYS,
    LAYERS,
    WORKLOAD_KEYS,
    Layer,
)
from reports.benchmark import markdown
from reports.summary import environments, pool, summarise_all
from runners.benchmark import profile, recorded_options, run_all
from shared.machine import git_state, load_average, machine
from shared.procs import import_problem, log, python_of
from shared.resultfiles import RESULTS, save_results, stamp_of
from shared.server_state import server_version

BENCH = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="the server to use, redis://host:port (bench/run sets it)")
    parser.add_argument(
        "--render",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="print the Markdown report of an earlier run's results and exit; given several "
        "runs, pool their rounds into one report",
    )
    parser.add_argument(
        "--venvs", type=Path, default=BENCH / ".venvs", help="default: bench/.venvs"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="default: bench/results")
    parser.add_argument("--rounds", type=int, default=3, help="default: 3")
    parser.add_argument(
        "--seconds",
        type=float,
        default=1.5,
        help="per measurement (ping-pong: twice that); default: 1.5",
    )
    parser.add_argument(
        "--warmup", type=float, default=0.3, help="warm-up per measurement; default: 0.3"
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 0.5 s measurements")
    parser.add_argument(
        "--workloads",
        default="",
        help="comma-separated subset (default: all but concurrent-*; `concurrent` names "
        "the four concurrent-* workloads; with --cluster also spread-24, spread-24-4proc)",
    )
    parser.add_argument(
        "--layers",
        default="",
        help="comma-separated subset of: " + ", ".join(layer.key for layer in LAYERS),
    )
    parser.add_argument("--no-save", action="store_true", help="print, do not write results")
    parser.add_argument(
        "--profile",
        default="",
        metavar="WORKLOADS",
        help="instead of the benchmark, record these workloads (comma-separated) on "
        "--profile-layer with py-spy into <results>/profiles/",
    )
    parser.add_argument(
        "--profile-layer", default="ours", help="the layer to profile; default: ours"
    )
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy command")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="instead of the benchmark, run our core layer on the --url server and on private "
        "clusters of --primaries primaries (see runners/cluster.py); writes "
        "<results>/cluster-<UTC>.{json,md}",
    )
    parser.add_argument(
        "--primaries",
        default="1,3",
        help="with --cluster: the clusters' sizes, comma-separated; default: 1,3",
    )
    parser.add_argument(
        "--measured",
        default="working tree as installed in the venvs",
        help="what build of this package is measured (bench/run sets it)",
    )
    parser.add_argument(
        "--baseline",
        default="",
        help="what build of this package the ours-baseline venv holds (bench/run --baseline "
        "REF sets it); without it the baseline layers are not measured",
    )
    return parser


def render(paths: list[Path]) -> int:
    """Print the report of earlier runs again (several main runs are pooled)."""
    loaded = [json.loads(path.read_text()) for path in paths]
    if "topologies" in loaded[0]:  # a --cluster run
        from reports.cluster import markdown as cluster_markdown

        print(cluster_markdown(loaded[0]))
        return 0
    earlier = pool(loaded)
    measured = [Layer(**layer) for layer in earlier["layers"]]
    earlier["summary"], earlier["ceilings"] = summarise_all(earlier["records"], measured)
    print(markdown(earlier, earlier["summary"]))
    return 0


def main() -> int:
    parser = build_parser()
    options = parser.parse_args()
    if options.render:
        return render(options.render)
    if not options.url:
        parser.error("--url is required")
    if options.quick:
        options.rounds, options.seconds, options.warmup = 1, 0.5, 0.2
    options.workloads = [w.strip() for w in options.workloads.split(",") if w.strip()]
    if "concurrent" in options.workloads:
        at = options.workloads.index("concurrent")
        options.workloads[at : at + 1] = CONCURRENT_KEYS
    if options.cluster:
        from catalogue import CLUSTER_WORKLOAD_KEYS
        from runners.cluster import run_cluster

        options.workloads = options.workloads or list(CLUSTER_WORKLOAD_KEYS)
        try:
            options.primaries = [int(n) for n in options.primaries.split(",") if n.strip()]
        except ValueError:
            parser.error("--primaries takes numbers, e.g. 1,3")
        return run_cluster(options)
    options.workloads = options.workloads or list(DEFAULT_WORKLOAD_KEYS)
    unknown = set(options.workloads) - set(WORKLOAD_KEYS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    options.profile = [w.strip() for w in options.profile.split(",") if w.strip()]
    unknown = set(options.profile) - set(WORKLOAD_KEYS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    if options.profile:
        chosen = [layer for layer in LAYERS if layer.key == options.profile_layer]
        if not chosen:
            parser.error(f"unknown layer: {options.profile_layer}")
        stamp = stamp_of(datetime.now(timezone.utc))
        return profile(options, chosen[0], stamp)
    wanted = {k.strip() for k in options.layers.split(",") if k.strip()}
    unknown = wanted - {layer.key for layer in LAYERS}
    if unknown:
        parser.error(f"unknown layers: {', '.join(sorted(unknown))}")
    return benchmark(options, wanted)


def available_layers(
    options: argparse.Namespace, wanted: set[str]
) -> tuple[list[Layer], dict[str, str]]:
    """The layers to measure (``wanted``, or all), and why any of them cannot be."""
    layers, skipped = [], {}
    for layer in LAYERS:
        if wanted and layer.key not in wanted:
            continue
        if layer.venv == BASELINE_VENV and not options.baseline:
            continue
        python = python_of(options.venvs, layer.venv)
        if not python.exists():
            why: str | None = f"no virtual environment {options.venvs / layer.venv}"
        else:
            why = import_problem(python, layer.path)
        if why is None:
            layers.append(layer)
        else:
            skipped[layer.key] = why
            log(f"not measuring {layer.key}: {why}")
    return layers, skipped


def benchmark(options: argparse.Namespace, wanted: set[str]) -> int:
    """The main benchmark: measure, report, save; 1 if any measurement failed."""
    started = datetime.now(timezone.utc)
    load_before = load_average()
    git_before = git_state()
    layers, skipped = available_layers(options, wanted)
    records = run_all(options, layers)
    summaries, ceilings = summarise_all(records, layers)
    result: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "options": recorded_options(options, options.workloads),
        "machine": machine(),
        "server_version": server_version(options.url),
        "measured": options.measured,
        "baseline": options.baseline or None,
        "git": git_before,
        "git_after": git_state(),
        "load_before": load_before,
        "environments": environments(records),
        "layers": [asdict(layer) for layer in layers],
        "skipped": skipped,
        "ceilings": ceilings,
        "summary": {
            workload: {key: asdict(s) for key, s in table.items()}
            for workload, table in summaries.items()
        },
        "records": records,
    }
    report = markdown(result, summaries)
    print(report)
    if not options.no_save:
        stamp = stamp_of(started)
        save_results(options.results, stamp, result, report)
        written = f"{options.results / stamp}.json and .md"
        if not wanted and set(options.workloads) == set(DEFAULT_WORKLOAD_KEYS):
            # latest.md is the last run of everything; a subset does not replace it.
            shutil.copyfile(options.results / f"{stamp}.md", options.results / "latest.md")
            written += " and latest.md"
        log(f"wrote {written}")
    failed = [r for r in records if not r.get("ok")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
