"""Mail arriving over Yggmail's transport from a stranger that breaks the rules.

Two embedded nodes of the shared mesh: A runs the mail service; the other speaks SMTP to
A by hand on a QUIC stream of its own endpoint, as a Yggmail node would, and tries what
a hostile one would: another key's sender, the wrong domain, relaying, a forged From,
an oversize message. Each is refused and nothing is stored; the honest message after
them, with Yggmail's leading-space EHLO, is.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from core.node import Node
from tests.mail.helpers import MailNode, on_shared_mesh


class _Quiet(asyncio.Protocol):
    """The stranger accepts no streams from A."""


async def _reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    lines = []
    async with asyncio.timeout(20):
        while True:
            line = (await reader.readline()).decode()
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                break
    return int(lines[-1][:3]), "".join(lines)


@on_shared_mesh
async def test_a_hostile_yggmail_peer_is_refused_and_nothing_is_stored(
    tmp_path: Path, mesh_nodes: list[Node]
) -> None:
    a = await MailNode.serve(mesh_nodes[0], tmp_path / "a", max_size=4096)
    stranger = mesh_nodes[1]
    endpoint = await stranger.open_key_quic(lambda key: _Quiet())
    try:
        me = stranger.key.hex()
        ours = f"{a.node.key.hex()}@yggmail"
        reader, writer = await endpoint.open_connection(a.node.key)
        writer.write(b" ")  # what Yggmail's client sends to make the stream exist
        code, _ = await _reply(reader)
        assert code == 220

        async def command(line: str) -> tuple[int, str]:
            writer.write(line.encode() + b"\r\n")
            return await _reply(reader)

        code, ehlo = await command(f"EHLO {me}")  # arrives as " EHLO <hex>": accepted
        assert code == 250 and "SIZE 4096" in ehlo and "AUTH" not in ehlo
        code, text = await command(f"MAIL FROM:<{'ab' * 32}@yggmail>")
        assert code == 550 and "not the node" in text  # another key
        code, text = await command(f"MAIL FROM:<{me}@mesh>")
        assert code == 550  # the wrong domain for this transport
        code, text = await command(f"MAIL FROM:<{me}@yggmail> SIZE=999999")
        assert code == 552, text  # oversize, said up front
        assert (await command(f"MAIL FROM:<{me}@yggmail>"))[0] == 250
        code, _ = await command(f"RCPT TO:<{a.node.key.hex()}@mesh>")
        assert code == 550  # this transport carries @yggmail
        code, _ = await command(f"RCPT TO:<{'cd' * 32}@yggmail>")
        assert code == 550  # no relaying
        assert (await command(f"RCPT TO:<{ours}>"))[0] == 250
        assert (await command("DATA"))[0] == 354
        forged = f"From: {'ab' * 32}@yggmail\r\nSubject: forged\r\n\r\nx\r\n."
        code, text = await command(forged)
        assert code == 550 and "From" in text
        assert (await command(f"MAIL FROM:<{me}@yggmail>"))[0] == 250
        assert (await command(f"RCPT TO:<{ours}>"))[0] == 250
        assert (await command("DATA"))[0] == 354
        code, _ = await command(f"From: {me}@yggmail\r\n\r\n" + ("y" * 70 + "\r\n") * 120 + ".")
        assert code == 552  # oversize, found at the end of data
        assert await a.store.count("INBOX") == 0

        assert (await command(f"MAIL FROM:<{me}@yggmail>"))[0] == 250
        assert (await command(f"RCPT TO:<{ours}>"))[0] == 250
        assert (await command("DATA"))[0] == 354
        code, _ = await command(f"From: {me}@yggmail\r\nSubject: honest\r\n\r\nhello\r\n.")
        assert code == 250
        assert await a.store.count("INBOX") == 1  # stored before the 250
        refused = a.service.endpoints()["refused"]["yggmail"]
        assert refused == {"sender": 2, "relay": 2, "author": 1}
        writer.close()
    finally:
        endpoint.close()
        await a.close()
    assert stranger.key_datagrams_supported  # and the node's endpoint slot is free again
    again = await stranger.open_key_quic(lambda key: _Quiet())
    again.close()
