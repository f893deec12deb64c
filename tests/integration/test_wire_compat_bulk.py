"""What our bulk sends queue, a channels_redis 4.x process reads, in order (see
``test_wire_compat`` for the setting: one layer of each package on the same server)."""

from __future__ import annotations

from support.servers import ValkeyServer
from support.wire_compat import OpenLayer, payload, receive_many


async def test_send_multiple_reaches_their_receivers_in_order(
    open_compat_layer: OpenLayer, standalone: list[ValkeyServer]
) -> None:
    ours, theirs = open_compat_layer("ours", standalone), open_compat_layer("theirs", standalone)
    sent = [payload(n) for n in range(20)]
    local = await theirs.new_channel()
    await ours.send_multiple("wire.bulk", sent)
    await ours.send_multiple(local, sent)
    assert await receive_many(theirs, "wire.bulk", len(sent)) == sent
    assert await receive_many(theirs, local, len(sent)) == sent


async def test_group_send_multiple_reaches_members_in_both_processes(
    open_compat_layer: OpenLayer, standalone: list[ValkeyServer]
) -> None:
    layers = {side: open_compat_layer(side, standalone) for side in ("ours", "theirs")}
    members = {
        side: [await layer.new_channel(), await layer.new_channel(), f"wire.bulk.{side}"]
        for side, layer in layers.items()
    }
    for side, layer in layers.items():
        for channel in members[side]:
            await layer.group_add("bulk", channel)
    sent = [{"type": "m", "n": n} for n in range(10)]
    await layers["ours"].group_send_multiple("bulk", sent)
    for side, layer in layers.items():
        for channel in members[side]:
            assert await receive_many(layer, channel, len(sent)) == sent
