"""Closing the yggdrasil backend ends its peers poller even if a cancellation is lost."""

from __future__ import annotations

import asyncio

from core.tasks import cancel_and_wait


async def test_a_poller_that_swallows_a_cancellation_is_still_ended() -> None:
    # Python 3.11's wait_for returns the result when the awaited call completes as the
    # cancellation lands; the poller then polled on and close() awaited it forever.
    swallowed = 0

    async def poller() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if swallowed == 0:
                    swallowed += 1
                    continue
                raise

    task = asyncio.get_running_loop().create_task(poller())
    await asyncio.sleep(0.02)
    async with asyncio.timeout(30):  # a hang detector
        assert await cancel_and_wait(task, what="poller", grace=0.05)
    assert task.cancelled() and swallowed == 1
