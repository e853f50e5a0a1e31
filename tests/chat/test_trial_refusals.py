"""Trial finding F1 at the receiver: a text whose body carries control characters
(other than newline and tab) is refused with its own code, ``control-chars`` (14), and
never stored; and ``chat.send`` refuses to make one."""

from __future__ import annotations

from pathlib import Path

import pytest

from apps.chat.checks import Refusal
from core import UsageError
from tests.chat.nodes import ChatNet
from tests.chat.test_refusals import Intruder, stored_at

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


async def test_a_text_with_control_characters_is_refused_and_not_stored(
    tmp_path: Path,
) -> None:
    async with ChatNet(tmp_path) as net:
        a, b = await net.start(), await net.start()
        c_node = await net.plain()
        assert c_node.identity is not None
        c = Intruder(c_node, c_node.identity, b)
        for body in (b"clear\x1b[2J", "csi \x9b31m".encode(), b"bell\x07", b"cr\rx"):
            got, reason = await c.send(c.envelope(body=body))
            assert got is Refusal.CONTROL_CHARS, (body, got, reason)
            assert "control character" in reason and "newlines and tabs" in reason
        assert await stored_at(b) == 0
        assert (await b.call("chat.info"))["refused"]["control-chars"] == 4
        got, _ = await c.send(c.envelope(body=b"tabs\tand\nnewlines are text"))
        assert got is Refusal.OK
        assert await stored_at(b) == 1
        with pytest.raises(UsageError, match=r"control character \(U\+001B at 3\)"):
            await a.call("chat.send", contact=b.key.hex(), body="hi \x1b[31m")


async def test_bidi_invisible_and_empty_texts_from_the_network_are_refused(
    tmp_path: Path,
) -> None:
    """Issue 20 finding 11: what `mesh chat send` refuses, a receiver refuses too."""
    async with ChatNet(tmp_path) as net:
        b = await net.start()
        c_node = await net.plain()
        assert c_node.identity is not None
        c = Intruder(c_node, c_node.identity, b)
        for body in ("evil\u202etxt.exe", "\u3164", "zero\u200bwidth", "bom\ufeff"):
            got, reason = await c.send(c.envelope(body=body.encode()))
            assert got is Refusal.CONTROL_CHARS, (body, got, reason)
            assert "invisible or format character" in reason
        for body in (b"", b"   ", b"\n\t \n"):
            got, reason = await c.send(c.envelope(body=body))
            assert got is Refusal.MALFORMED and "empty" in reason, (body, got, reason)
        assert await stored_at(b) == 0
        got, _ = await c.send(c.envelope(body="family 👩\u200d👩\u200d👧".encode()))
        assert got is Refusal.OK
        assert await stored_at(b) == 1
