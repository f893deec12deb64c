"""``top``'s frame, drawn from made-up snapshots: what fits in a terminal, rates, liveness."""

from __future__ import annotations

import io

from channels_valkey._cli.inspect import Inventory, KeyStat
from channels_valkey._cli.top import (
    ALIVE,
    DEAD,
    Frame,
    Screen,
    ServerInfo,
    Snapshot,
    rates,
    render,
    server_info,
    share,
)

SERVER = "valkey://127.0.0.1:6379"


def queue(name: str, size: int, *, kind: str = "channel", server: str = SERVER) -> KeyStat:
    key = f"asgi:group:{name}" if kind == "group" else f"asgi{name}"
    return KeyStat(kind, name, key, server, size, 2.5)


def snapshot(*stats: KeyStat, at: float = 10.0, servers: tuple[str, ...] = (SERVER,)) -> Snapshot:
    inventory = Inventory(keys=list(stats), servers=list(servers))
    infos = [ServerInfo(server, 1200, 7, "1.50M") for server in servers]
    return Snapshot(inventory=inventory, servers=infos, taken_at=at)


def row(lines: list[str], name: str) -> list[str]:
    """The cells of the row whose first cell is ``name``."""
    return next(line.split() for line in lines if line.split()[:1] == [name])


def frame(current: Snapshot, previous: Snapshot | None = None, max_keys: int = 10_000) -> Frame:
    return Frame("channels-valkey top", current, rates(current, previous), max_keys)


def test_a_frame_shows_servers_queues_processes_and_groups() -> None:
    current = snapshot(
        queue("chat.room", 40),
        queue("chat.lobby", 3),
        queue("specific.abc!", 5, kind="process"),
        queue("specific.old!", 2, kind="process"),
        queue("room", 12, kind="group"),
    )
    current.liveness = {"abc": ALIVE, "old": DEAD}
    previous = snapshot(queue("chat.room", 50), queue("chat.lobby", 3), at=8.0)
    lines = render(frame(current, previous))
    assert row(lines, "1") == ["1", SERVER, "1200", "7", "1.50M"]
    assert row(lines, "chat.room") == ["chat.room", "40", "2.5s", "-5.0"]  # (40 - 50) / 2 s
    assert row(lines, "chat.lobby") == ["chat.lobby", "3", "2.5s", "+0.0"]
    # The process queues were not there the refresh before, which saw every key: they grew.
    assert row(lines, "specific.abc!") == ["specific.abc!", "5", "2.5s", "+2.5", "alive"]
    assert row(lines, "specific.old!") == ["specific.old!", "2", "2.5s", "+1.0", "dead"]
    assert "GROUP (1 of 1)  MEMBERS  OLDEST  RATE/S" in lines


def test_the_first_frame_has_no_rates_and_unknown_liveness_is_a_dash() -> None:
    lines = render(frame(snapshot(queue("a.b!", 1, kind="process"))))
    assert row(lines, "a.b!") == ["a.b!", "1", "2.5s", "-", "-"]


def test_a_frame_fits_80_by_24_and_says_how_many_are_left_out() -> None:
    stats = [queue(f"chat.room.{n:03d}.{'x' * 90}", 1000 - n) for n in range(100)]
    stats += [queue(f"specific.p{n}!", n + 1, kind="process") for n in range(30)]
    stats += [queue(f"g{n}", n + 1, kind="group") for n in range(30)]
    lines = render(frame(snapshot(*stats)), 80, 24)
    assert len(lines) <= 24
    assert all(len(line) <= 80 for line in lines)
    assert any(line.startswith("QUEUE (") and "of 100)" in line for line in lines)
    assert any(line.startswith("PROCESS QUEUE (") and "of 30)" in line for line in lines)
    assert any(line.startswith("GROUP (") and "of 30)" in line for line in lines)
    shortened = [line for line in lines if line.startswith("chat.room.000.")]
    name = shortened[0].split()[0]
    assert "..." in name
    assert name.endswith("x")


def test_rates_are_unknown_for_new_keys_after_a_partial_refresh() -> None:
    previous = snapshot(queue("a", 1), at=1.0)
    previous.capped = [SERVER]
    current = snapshot(queue("a", 5), queue("b", 3), at=3.0)
    assert rates(current, previous) == {("asgia", SERVER): 2.0}
    text = "\n".join(render(frame(previous, max_keys=1000)))
    assert "partial view: stopped after 1000 keys scanned on 1 server (--max-keys)" in text


def test_several_servers_are_numbered_and_rows_say_which_and_errors_show() -> None:
    other = "valkey://127.0.0.1:6380"
    current = snapshot(queue("a", 1), queue("a", 2, server=other), servers=(SERVER, other))
    current.inventory.errors.append(f"{other}: Connection refused")
    lines = render(frame(current))
    assert row(lines, "QUEUE")[-1] == "#"
    assert row(lines, "2") == ["2", other, "1200", "7", "1.50M"]
    assert [line.split() for line in lines if line.startswith("a ")] == [
        ["a", "2", "2.5s", "-", "2"],
        ["a", "1", "2.5s", "-", "1"],
    ]
    text = "\n".join(lines)
    assert f"error: {other}: Connection refused" in text


def test_rows_go_to_the_sections_that_have_them() -> None:
    assert share([100, 0, 0], 12) == [12, 0, 0]
    assert share([100, 2, 100], 12) == [5, 2, 5]
    assert share([1, 1, 1], 12) == [1, 1, 1]


def test_info_parsed_or_raw() -> None:
    raw = b"# Stats\r\ninstantaneous_ops_per_sec:12\r\nconnected_clients:3\r\n"
    assert server_info("s", raw) == ServerInfo("s", 12, 3, None)
    parsed = {"instantaneous_ops_per_sec": 4, "used_memory_human": "900K"}
    assert server_info("s", parsed) == ServerInfo("s", 4, None, "900K")


def test_frames_to_a_file_follow_each_other() -> None:
    out = io.StringIO()
    with Screen(out).shown() as screen:
        screen.draw(["one"])
        screen.draw(["two"])
    assert out.getvalue() == "one\n\ntwo\n\n"
