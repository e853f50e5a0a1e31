"""The UI working with real nodes (Pilot): two or three embedded nodes in this process,
each running the chat service behind its control socket, exactly as `mesh up` does."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from apps.chat.tui.app import ChatApp
from apps.chat.tui.widgets.composer import Composer
from apps.chat.tui.widgets.message_log import MessageLog
from tests.conftest import require

from .nodes import ChatNode, chat_nodes, eventually, send_signed_by

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]
SIZE = (110, 32)


def held(app: ChatApp) -> list[str]:
    return [m.body for m in app.query_one(MessageLog).window.messages]


async def history(node: ChatNode, peer: ChatNode) -> list[dict[str, Any]]:
    result = await node.call("chat.history", contact=peer.key)
    return list(result["messages"])


@contextlib.asynccontextmanager
async def attached(node: ChatNode, **options: Any) -> AsyncIterator[tuple[ChatApp, Any]]:
    """The UI attached to ``node``, started, with the input focused."""
    app = ChatApp(node.client, tz=UTC, **options)
    async with app.run_test(size=SIZE) as pilot:
        await app.ready.wait()
        app.query_one(Composer).focus()
        yield app, pilot


async def typed(pilot: Any, text: str) -> None:
    for ch in text:
        await pilot.press("space" if ch == " " else ch)


async def test_send_a_message_and_it_reaches_the_other_node(tmp_path: Path) -> None:
    async with chat_nodes(tmp_path, 2) as (a, b), attached(a, contact=b.key) as (app, pilot):
        await b.call("chat.accept", contact=a.key)  # receipts go to contacts only
        await typed(pilot, "hello over the mesh")
        await pilot.press("enter")

        async def arrived() -> bool:
            msgs = await history(b, a)
            return any(m["body"] == "hello over the mesh" and m["direction"] == "in" for m in msgs)

        await eventually("the message at the other node", arrived)
        log = app.query_one(MessageLog)
        await eventually(
            "the delivered mark in the sender's view",
            lambda: log.window.messages and log.window.messages[-1].state == "delivered",
        )


async def test_live_message_arrives_while_typing_and_the_draft_is_kept(tmp_path: Path) -> None:
    async with chat_nodes(tmp_path, 2) as (a, b), attached(a, contact=b.key) as (app, pilot):
        composer = app.query_one(Composer)
        composer.focus()
        await typed(pilot, "half a thought")
        await b.call("chat.send", contact=a.key, body="incoming while you type")
        await eventually("the live message", lambda: "incoming while you type" in held(app))
        assert composer.text == "half a thought"
        await typed(pilot, " done")
        assert composer.text == "half a thought done"


async def test_unread_counts_rise_in_another_conversation_and_reset_on_open(
    tmp_path: Path,
) -> None:
    async with chat_nodes(tmp_path, 3) as (a, b, c):
        await a.call("chat.send", contact=b.key, body="hi b")
        await a.call("chat.send", contact=c.key, body="hi c")
        async with attached(a, contact=b.key) as (app, pilot):
            await c.call("chat.send", contact=a.key, body="one")
            await c.call("chat.send", contact=a.key, body="two")

            def unread_c() -> int:
                conv = app.conversations.get(c.key)
                return conv.unread if conv else 0

            await eventually("two unread from c", lambda: unread_c() == 2)
            assert app.current == b.key
            await pilot.press("alt+n")
            await eventually("c opened", lambda: app.current == c.key)
            await eventually("unread reset", lambda: unread_c() == 0)
            convs = await a.call("chat.conversations")
            assert next(x for x in convs if x["key"] == c.key)["unread"] == 0


async def test_search_jumps_to_a_hit_in_an_older_page(tmp_path: Path) -> None:
    async with chat_nodes(tmp_path, 2) as (a, b):
        await a.call("chat.accept", contact=b.key)  # more than a stranger's request
        await b.call("chat.send", contact=a.key, body="the needle is here")
        for i in range(60):
            await b.call("chat.send", contact=a.key, body=f"hay {i}")

        async def all_there() -> bool:
            return len(await history(a, b)) >= 61

        await eventually("61 messages at a", all_there, timeout=60)
        async with attached(a, contact=b.key, page_size=20) as (app, pilot):
            log = app.query_one(MessageLog)
            assert "the needle is here" not in held(app)
            await pilot.press("ctrl+f")
            await typed(pilot, "needle")
            await pilot.press("enter")
            await eventually(
                "the hit selected",
                lambda: (
                    log.selected_message() is not None
                    and log.selected_message().body == "the needle is here"  # type: ignore[union-attr]
                ),
            )
            assert log.search == "needle"


async def test_add_command_creates_a_contact_then_alias_and_block(tmp_path: Path) -> None:
    async with chat_nodes(tmp_path, 2) as (a, b):
        methods = await a.call("methods")
        require("contacts.add" in methods, "the node has no contacts.* control methods yet")
        async with attached(a) as (app, pilot):
            await typed(pilot, f"/add {b.key}@mesh bob")
            await pilot.press("enter")

            async def contact(alias: str, trust: str | None = None) -> bool:
                for x in await a.call("contacts.list"):
                    if x["key"] == b.key and x["alias"] == alias:
                        return trust is None or x["trust"] == trust
                return False

            await eventually("bob in a's contacts", lambda: contact("bob"))
            await eventually("bob's conversation open", lambda: app.current == b.key)
            await typed(pilot, "/alias robert")
            await pilot.press("enter")
            await eventually("renamed", lambda: contact("robert"))
            await eventually("the new name shown", lambda: app.name_of(b.key) == "robert")
            await typed(pilot, "/block")
            await pilot.press("enter")
            await eventually("blocked", lambda: contact("robert", "blocked"))


async def test_accept_a_message_request(tmp_path: Path) -> None:
    async with chat_nodes(tmp_path, 2) as (a, b), attached(a) as (app, pilot):
        await b.call("chat.send", contact=a.key, body="hello, stranger here")

        def requested() -> bool:
            conv = app.conversations.get(b.key)
            return bool(conv and conv.request)

        await eventually("b's message in the requests", requested)
        await app.open_conversation(b.key)
        await pilot.pause()
        assert app.query_one("#request-bar").display
        await pilot.click("#request-accept")
        await eventually("request accepted", lambda: not requested())
        assert not await a.call("chat.requests")
        assert not app.query_one("#request-bar").display


async def test_multiline_input_sends_one_message_with_its_newlines(tmp_path: Path) -> None:
    async with chat_nodes(tmp_path, 2) as (a, b), attached(a, contact=b.key) as (_app, pilot):
        await typed(pilot, "first")
        await pilot.press("ctrl+j")
        await typed(pilot, "second")
        await pilot.press("alt+enter")
        await typed(pilot, "third")
        await pilot.press("enter")

        async def arrived() -> list[dict[str, Any]]:
            return [m for m in await history(b, a) if m["direction"] == "in"]

        got = await eventually("the message at b", arrived)
        assert [m["body"] for m in got] == ["first\nsecond\nthird"]


async def test_key_change_banner_appears_and_stays_until_acknowledged(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from apps.chat.tui.widgets.banner import SecurityBanner

    async with chat_nodes(tmp_path, 2) as (a, b):
        first = await send_signed_by(b, a, Ed25519PrivateKey.generate(), "signed by my app key")
        assert first.code == 0, first  # pinned on first use
        async with attached(a, contact=b.key) as (app, pilot):
            banner = app.query_one(SecurityBanner)
            assert not banner.display
            second = await send_signed_by(b, a, Ed25519PrivateKey.generate(), "a new key")
            assert second.code != 0  # refused
            await eventually("the banner", lambda: banner.display)
            assert "CHANGED" in str(app.query_one("#banner-text").render())
            assert "a new key" not in held(app)
            await app.open_conversation(b.key)  # reopening does not clear it
            await pilot.pause()
            assert banner.display
            await pilot.click("#banner-ack")
            await eventually("the banner gone", lambda: not banner.display)
            records = (await a.call("chat.security"))["records"]
            assert records and all(r["acknowledged"] for r in records)


async def test_typing_indicator_and_a_bell_and_toast_for_another_conversation(
    tmp_path: Path,
) -> None:
    async with chat_nodes(tmp_path, 3) as (a, b, c):
        await a.call("chat.send", contact=c.key, body="hi c")
        async with attached(a, contact=b.key) as (app, _pilot):
            rings: list[str] = []
            toasts: list[str] = []
            notify = app.notify
            app.bell = lambda: rings.append("bell")  # type: ignore[method-assign]

            def record(message: str, **kw: Any) -> None:
                toasts.append(f"{kw.get('title', '')}: {message}")
                notify(message, **kw)

            app.notify = record  # type: ignore[method-assign]
            header = app.query_one("#header")
            await b.call("chat.typing", contact=a.key, active=True)
            await eventually("typing shown", lambda: "typing…" in str(header.render()))
            await c.call("chat.send", contact=a.key, body="psst, over here")
            await eventually("a toast", lambda: any("psst, over here" in t for t in toasts))
            assert rings
            # Muted: the next one from c neither rings nor toasts.
            await a.call("chat.mute", contact=c.key, muted=True)
            await eventually("muted", lambda: app.conversations[c.key].muted, timeout=5)
            rings.clear()
            toasts.clear()
            await c.call("chat.send", contact=a.key, body="still here")
            await eventually("c's unread grows", lambda: app.conversations[c.key].unread >= 2)
            assert not rings and not toasts


async def test_call_command_places_a_call_and_the_callee_gets_accept_reject(
    tmp_path: Path,
) -> None:
    # The call page is the video app's (tested there); here: signaling through the UI.
    async with chat_nodes(tmp_path, 2, services={"video": {"page": "off"}}) as (a, b):
        await b.call("contacts.add", key=a.key, alias="alice")  # b takes calls from contacts
        await a.call("chat.send", contact=b.key, body="calling you")
        async with attached(b) as (callee, cpilot), attached(a, contact=b.key) as (_app, pilot):
            await typed(pilot, "/call")
            await pilot.press("enter")
            bar = callee.query_one("#call-bar")
            await eventually("the incoming call bar at b", lambda: bar.display, timeout=30)
            await cpilot.click("#call-reject")
            await eventually("the bar gone", lambda: not bar.display)

            async def ended() -> bool:
                status = await a.call("call.status")
                return status.get("state") in ("idle", "ended")

            await eventually("the call over at a", ended, timeout=30)


async def test_call_command_opens_the_page_preset_and_accept_opens_it_on_the_ringing_call(
    tmp_path: Path,
) -> None:
    """With the call page on: /call opens it preset on the contact (the call goes when
    the person presses Call there, with the browser's camera); the incoming-call banner's
    Accept opens it too, where the call rings; without a page Accept answers audio only."""
    async with chat_nodes(tmp_path, 2, services={"video": {}}) as (a, b):
        await b.call("contacts.add", key=a.key, alias="alice")
        await a.call("chat.send", contact=b.key, body="calling you")
        async with attached(b) as (callee, cpilot), attached(a, contact=b.key) as (app, pilot):
            opened: list[str] = []
            app.open_url = lambda url, **kw: opened.append(url)  # type: ignore[method-assign]
            callee.open_url = lambda url, **kw: opened.append(url)  # type: ignore[method-assign]
            await typed(pilot, "/call")
            await pilot.press("enter")
            await eventually("the page opened at a", lambda: bool(opened))
            assert opened[0].startswith("http://127.0.0.1:") and f"&call={b.key}" in opened[0]
            assert (await a.call("call.status"))["state"] == "idle"  # nothing dialled
            # The call placed (as the page's Call button does) rings at b: Accept opens
            # b's page, where it rings until answered there.
            await a.call("call.place", contact=b.key)
            bar = callee.query_one("#call-bar")
            await eventually("the incoming call bar at b", lambda: bar.display, timeout=30)
            await cpilot.pause()  # laid out before it is clicked
            await cpilot.click("#call-accept")
            await eventually("b's page opened", lambda: len(opened) == 2)
            assert "token=" in opened[1] and "&call=" not in opened[1]
            assert (await b.call("call.status"))["state"] == "ringing"
            await a.call("call.hangup")
            await eventually("the bar gone", lambda: not bar.display, timeout=30)


async def test_accept_on_the_banner_without_a_page_answers_audio_only(tmp_path: Path) -> None:
    async with chat_nodes(tmp_path, 2, services={"video": {"page": "off"}}) as (a, b):
        await b.call("contacts.add", key=a.key, alias="alice")
        async with attached(b) as (callee, cpilot):
            await a.call("call.place", contact=b.key)
            bar = callee.query_one("#call-bar")
            await eventually("the incoming call bar at b", lambda: bar.display, timeout=30)
            await cpilot.pause()  # laid out before it is clicked
            await cpilot.click("#call-accept")

            async def answered() -> bool:
                status = await b.call("call.status")
                return status.get("state") in ("connecting", "active")

            await eventually("answered at b", answered, timeout=30)

            async def audio_only() -> bool:  # b sends a no picture: a receives only sound
                status = await a.call("call.status")
                return status.get("state") == "active" and status["receiving"] == ["audio"]

            await eventually("an audio-only answer", audio_only, timeout=30)
            await a.call("call.hangup")

            async def over() -> bool:
                return (await b.call("call.status")).get("state") in ("idle", "ended")

            await eventually("the call over at b", over, timeout=30)
