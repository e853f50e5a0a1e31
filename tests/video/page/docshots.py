"""The screenshots of docs/calls.md, one per page state, taken with the test harness:

.venv/bin/python -m tests.video.page.docshots [docs/img]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from tests.video.page.harness import INBOUND, page_pair


async def shoot(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cp-shots-") as tmp:
        async with page_pair(Path(tmp)) as pair:
            tab_b = await pair.browser.open(pair.url(pair.call_b))
            tab_a = await pair.browser.open(pair.url(pair.call_a))
            for tab in (tab_a, tab_b):
                await tab.wait("window.meshCall && meshCall.mediaReady", 30)
            await tab_a.click("#contacts button.call")
            await tab_b.wait("meshCall.view === 'incoming'")
            await tab_a.wait("document.getElementById('out-status').textContent === 'ringing…'")
            await asyncio.sleep(0.3)
            (out / "call-outgoing.png").write_bytes(await tab_a.screenshot())
            (out / "call-incoming.png").write_bytes(await tab_b.screenshot())
            await tab_b.click("#accept-video")
            await tab_a.wait(f"({INBOUND}).then(s => s.video > 30)", 30)
            await tab_a.wait("!document.getElementById('stats').textContent.startsWith('—')")
            await asyncio.sleep(2.0)
            (out / "call-incall.png").write_bytes(await tab_a.screenshot())
            await tab_b.evaluate("document.getElementById('hangup').click()")
            await tab_a.wait("meshCall.view === 'ended'")
            (out / "call-ended.png").write_bytes(await tab_a.screenshot())
            await tab_a.evaluate("document.getElementById('back').click()")
            await tab_a.wait("document.querySelectorAll('#log button.call').length > 0")
            (out / "call-idle.png").write_bytes(await tab_a.screenshot())


if __name__ == "__main__":
    asyncio.run(shoot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img")))
