"""The command-line tool: ``python -m channels_valkey`` (installed as ``channels-valkey``).

``check`` tells whether the layer can work against its servers (reachability, version, role,
latency, and whether the ACL allows every command the layer sends); ``inspect`` lists what the
layer keeps in Valkey (queues, in-flight backups, groups); ``top`` redraws that every second
with rates of change and each server's load. All read the layer's configuration
from Django settings (``--settings``, ``--alias``) or take ``--hosts``/``--prefix``, and build
the layer from it, so a configuration the layer would refuse is refused here with the layer's
own message. Exit codes: 0 all fine, 1 a problem found, 2 bad usage or configuration.

The commands each layer needs are listed once, in :data:`CORE_NEEDS` and
:data:`PUBSUB_NEEDS`; the README's list of ACL commands is this one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from channels_valkey._common.hosts import Host, on_cluster
from channels_valkey._queue.keys import KeySpace
from channels_valkey._queue.scripts import SEND
from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.pubsub import ValkeyPubSubChannelLayer

from . import check, inspect, top
from .check import AclPlan, Need
from .links import for_diagnosis

#: What the core layer sends (scripts run ZCARD, ZADD, EXPIRE, ZREMRANGEBYSCORE, and for
#: liveness ZSCORE, ZCOUNT, ZREVRANGEBYSCORE, TIME and INFO inside).
CORE_NEEDS = (
    Need("EVALSHA", (SEND.sha, "1", "<queue>", "0", "60", "100", "message")),
    Need("SCRIPT LOAD", ("return 1",)),
    Need("BZMPOP", ("5", "2", "<queue>", "<wake>", "MIN", "COUNT", "100")),
    Need("ZRANGEBYSCORE", ("<group>", "(0", "+inf")),
    Need("ZCOUNT", ("<group>", "(0", "+inf")),
    Need("ZREM", ("<group>", "member")),
    Need("ZADD", ("<queue>", "0", "member")),
    Need("ZCARD", ("<queue>",)),
    Need("ZREMRANGEBYSCORE", ("<queue>", "-inf", "0")),
    Need("EXPIRE", ("<queue>", "60")),
    # The liveness script (process_expiry) also runs these.
    Need("ZSCORE", ("<queue>", "member")),
    Need("ZREVRANGEBYSCORE", ("<queue>", "+inf", "-inf", "LIMIT", "0", "1")),
    Need("TIME"),
    Need("INFO", ("server",)),
    Need("SCAN", ("0", "MATCH", "<pattern>", "COUNT", "1000")),
    Need("UNLINK", ("<queue>",)),
    Need("WAIT", ("1", "1000"), option="wait_for_replicas"),
    Need("PING"),
)

#: What the pub/sub layer sends.
PUBSUB_NEEDS = (
    Need("PUBLISH", ("<channel>", "message")),
    Need("SUBSCRIBE", ("<channel>",)),
    Need("UNSUBSCRIBE", ("<channel>",)),
    Need("PUBSUB NUMSUB", ("<channel>",)),
    Need("PING"),
)

#: What the pub/sub layer sends on a cluster (sharded pub/sub).
PUBSUB_CLUSTER_NEEDS = (
    Need("SPUBLISH", ("<channel>", "message")),
    Need("SSUBSCRIBE", ("<channel>",)),
    Need("SUNSUBSCRIBE", ("<channel>",)),
    Need("PUBSUB SHARDNUMSUB", ("<channel>",)),
)

LAYERS = {"core": ValkeyChannelLayer, "pubsub": ValkeyPubSubChannelLayer}

#: Where ``DJANGO_SETTINGS_MODULE`` names the settings when neither option is given.
SETTINGS_ENV = "DJANGO_SETTINGS_MODULE"


class UsageError(Exception):
    """Bad options or configuration: printed on stderr, exit code 2."""


@dataclass(frozen=True)
class Target:
    """What the layer would connect to, from the settings or the command line."""

    layer: str
    hosts: tuple[Host, ...]
    prefix: str
    #: Options set that make the layer send more commands (e.g. ``wait_for_replicas``).
    options_set: frozenset[str]
    source: str

    @property
    def on_cluster(self) -> bool:
        return on_cluster(self.hosts)


def needs_of(layer: str, *, on_cluster: bool) -> tuple[Need, ...]:
    if layer == "pubsub":
        return PUBSUB_NEEDS + (PUBSUB_CLUSTER_NEEDS if on_cluster else ())
    return CORE_NEEDS


def acl_plan(target: Target) -> AclPlan:
    """The commands to ask the ACL about, with sample names under the target's prefix."""
    keys = KeySpace(target.prefix, hash_tags=target.on_cluster)
    queue = keys.queue("channels_valkey.check")
    names = {
        "<queue>": queue,
        "<wake>": keys.wake(queue, "check"),
        "<group>": keys.group("check"),
        "<channel>": f"{target.prefix}__group__check",
        "<pattern>": keys.pattern(),
    }
    return AclPlan(needs_of(target.layer, on_cluster=target.on_cluster), names, target.options_set)


# --- configuration --------------------------------------------------------------------------


def load_target(args: argparse.Namespace) -> Target:
    if args.hosts is not None:
        if args.settings is not None:
            raise UsageError("give either --settings or --hosts, not both")
        entries = [_parse_hosts_option(value) for value in args.hosts]
        options: dict[str, Any] = {"hosts": entries, "prefix": args.prefix or "asgi"}
        return _target(args.layer or "core", options, "--hosts")
    if args.prefix is not None or args.layer is not None:
        raise UsageError("--prefix and --layer go with --hosts; settings name their own")
    module = args.settings or os.environ.get(SETTINGS_ENV)
    if not module:
        raise UsageError(f"give --settings or --hosts (or set {SETTINGS_ENV})")
    return _target_from_settings(module, args.alias)


def _parse_hosts_option(value: str) -> Any:
    """A URL, or a whole ``hosts`` entry as JSON (a Sentinel or cluster dict, a pair)."""
    if not value.lstrip().startswith(("{", "[")):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise UsageError(f"--hosts {value!r} is not valid JSON: {error}") from error


def _target_from_settings(module_name: str, alias: str) -> Target:
    layers = _channel_layers(module_name)
    where = f"{module_name}.CHANNEL_LAYERS[{alias!r}]"
    if alias not in layers:
        known = ", ".join(repr(name) for name in layers) or "none"
        raise UsageError(f"{module_name}.CHANNEL_LAYERS has no {alias!r} (it has: {known})")
    settings = layers[alias]
    if not isinstance(settings, Mapping):
        raise UsageError(f"{where} must be a dict with BACKEND and CONFIG")
    layer = _layer_of(where, settings.get("BACKEND"))
    options = settings.get("CONFIG") or {}
    if not isinstance(options, Mapping):
        raise UsageError(f"{where}['CONFIG'] must be a dict")
    return _target(layer, dict(options), where)


def _channel_layers(module_name: str) -> Mapping[str, Any]:
    """``CHANNEL_LAYERS`` of the settings module, read without setting Django up.

    The module is imported directly rather than through ``django.conf.settings``, which
    holds on to the first settings it reads: one process (a test run) may read several.
    """
    try:
        with _current_directory_importable():
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name):
            raise UsageError(
                f"no settings module {module_name!r} (run from your project's directory, "
                "or add it to PYTHONPATH)"
            ) from error
        raise UsageError(f"settings module {module_name!r} failed to import: {error}") from error
    except Exception as error:
        raise UsageError(f"settings module {module_name!r} failed to import: {error}") from error
    layers = getattr(module, "CHANNEL_LAYERS", None)
    if not isinstance(layers, Mapping):
        raise UsageError(f"settings module {module_name!r} has no CHANNEL_LAYERS dict")
    return layers


@contextlib.contextmanager
def _current_directory_importable() -> Iterator[None]:
    """Like ``manage.py``, find the project's modules from where the tool runs (``python -m``
    puts the current directory on the path; an installed console script does not)."""
    cwd = os.getcwd()
    if cwd in sys.path or "" in sys.path:
        yield
        return
    sys.path.append(cwd)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(cwd)


def _layer_of(where: str, backend: object) -> str:
    for name, cls in LAYERS.items():
        if backend == f"{cls.__module__}.{cls.__qualname__}":
            return name
    if not isinstance(backend, str):
        raise UsageError(f"{where} has no BACKEND")
    try:
        with _current_directory_importable():
            module_name, _, class_name = backend.rpartition(".")
            cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise UsageError(f"{where}['BACKEND'] {backend!r} cannot be imported: {error}") from error
    for name, base in LAYERS.items():
        if isinstance(cls, type) and issubclass(cls, base):
            return name
    raise UsageError(
        f"{where}['BACKEND'] is {backend!r}, not a channels_valkey layer "
        f"(channels_valkey.core.ValkeyChannelLayer or "
        f"channels_valkey.pubsub.ValkeyPubSubChannelLayer)"
    )


def _target(layer: str, options: dict[str, Any], source: str) -> Target:
    """Build the layer from ``options``, as Channels would, and keep what the tool needs."""
    try:
        built = LAYERS[layer](**options)
    except (ValueError, TypeError, ImportError) as error:
        raise UsageError(f"{source}: {error}") from error
    wait = getattr(built.config, "wait_for_replicas", 0)
    return Target(
        layer=layer,
        hosts=built.config.hosts,
        prefix=built.config.prefix,
        options_set=frozenset({"wait_for_replicas"} if wait else ()),
        source=source,
    )


# --- commands -------------------------------------------------------------------------------


async def run_check(target: Target, args: argparse.Namespace) -> int:
    hosts = [for_diagnosis(host, args.timeout) for host in target.hosts]
    entries = await check.check_all(hosts, acl_plan(target))
    problems = sum(len(entry.all_problems()) for entry in entries)
    if args.json:
        header = {"layer": target.layer, "prefix": target.prefix, "source": target.source}
        print(json.dumps(check.as_json(entries, header), indent=2))
    else:
        title = (
            f"channels-valkey check: {target.layer} layer, prefix {target.prefix!r}, "
            f"from {target.source}"
        )
        print(check.render(entries, title))
    return 1 if problems else 0


async def run_inspect(target: Target, args: argparse.Namespace) -> int:
    hosts = [for_diagnosis(host, args.timeout) for host in target.hosts]
    inventory = await inspect.inspect_all(hosts, target.prefix)
    if target.layer == "pubsub":
        print("note: the pub/sub layer keeps no keys in Valkey", file=sys.stderr)
    if args.json:
        print(json.dumps(inspect.as_json(inventory), indent=2))
    else:
        print(inspect.render(inventory, target.prefix))
    for error in inventory.errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if inventory.errors else 0


async def run_top(target: Target, args: argparse.Namespace) -> int:
    if args.json:
        print("error: top has no --json (inspect --json has the same figures)", file=sys.stderr)
        return 2
    hosts = [for_diagnosis(host, args.timeout) for host in target.hosts]
    return await top.run(hosts, target.prefix, args)


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Check and inspect the Valkey servers of a channels_valkey layer.",
        epilog="Exit status: 0 all fine, 1 a problem found, 2 bad usage or configuration.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common_options()
    check_command = commands.add_parser(
        "check",
        parents=[common],
        help="reach every server; report version, role, latency and ACL",
        description="Reach every host, Sentinel and cluster node; report version, role, "
        "PING round trip, and whether the ACL allows every command the layer sends.",
    )
    check_command.set_defaults(run=run_check)
    inspect_command = commands.add_parser(
        "inspect",
        parents=[common],
        help="list queues, in-flight backups and groups under the prefix (SCAN)",
        description="List the layer's keys under its prefix with SCAN: queue depth and age "
        "of the oldest message per channel, in-flight backups, group sizes.",
    )
    inspect_command.set_defaults(run=run_inspect)
    _add_top(commands, common)
    return parser


def _common_options() -> argparse.ArgumentParser:
    """The options every command takes: where the layer is, output, timeout."""
    common = argparse.ArgumentParser(add_help=False)
    source = common.add_argument_group("where the layer is")
    source.add_argument(
        "--settings",
        metavar="MODULE",
        help=f"Django settings module to read CHANNEL_LAYERS from (default: ${SETTINGS_ENV})",
    )
    source.add_argument(
        "--alias", default="default", help="the CHANNEL_LAYERS entry (default: default)"
    )
    source.add_argument(
        "--hosts",
        action="append",
        metavar="HOST",
        help="a hosts entry instead of settings: a URL, or an entry as JSON (repeatable)",
    )
    source.add_argument("--prefix", help="with --hosts: the layer's prefix (default: asgi)")
    source.add_argument(
        "--layer", choices=sorted(LAYERS), help="with --hosts: which layer (default: core)"
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument(
        "--timeout",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="connect and reply timeout per server, unless the settings set one (default: 5)",
    )
    return common


def _add_top(commands: Any, common: argparse.ArgumentParser) -> None:
    top_command = commands.add_parser(
        "top",
        parents=[common],
        help="a live view of the deepest queues, process queues, groups and servers",
        description="What inspect shows, redrawn every --interval seconds: the deepest queues "
        "with their depth, oldest message and rate of change, process queues with their "
        "process's liveness, the biggest groups, and each server's ops/s, clients and memory. "
        "Ctrl-C quits.",
    )
    top_command.add_argument(
        "--interval", type=_seconds, default=1.0, metavar="SECONDS", help="(default: 1)"
    )
    top_command.add_argument(
        "--max-keys",
        type=_positive,
        default=10_000,
        metavar="N",
        help="keys scanned per server per refresh, at most (default: 10000)",
    )
    top_command.add_argument(
        "--once",
        action="store_true",
        help="print one frame and exit (its rates show '-': a rate needs two refreshes)",
    )
    top_command.set_defaults(run=run_top)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds > 0")
    return seconds


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number > 0")
    return number


def main(argv: Sequence[str] | None = None, prog: str = "channels-valkey") -> int:
    """Run the tool with ``argv`` (default: the process's arguments); returns the exit code."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help, or a usage error argparse already printed
        return exit.code if isinstance(exit.code, int) else 2
    try:
        target = load_target(args)
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    try:
        code: int = asyncio.run(args.run(target, args))
    except KeyboardInterrupt:
        return 130
    return code


def run(prog: str = "channels-valkey") -> None:
    """The entry point of the console script and of ``python -m channels_valkey``."""
    try:
        code = main(prog=prog)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (``| head``): no traceback for that
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)
