"""Bounded waits that a close or a cancel can always interrupt.

Python 3.11's :func:`asyncio.wait_for` runs the awaited thing as a separate task and,
when the caller is cancelled at the moment that task completes, returns its result
instead of raising: the cancellation is swallowed and the caller runs on (a ``close()``
that cancelled it then waits forever). :func:`within` is ``wait_for`` without that race
(:func:`asyncio.timeout` around a plain ``await``, in the caller's own task), so a
``wait_for(x, t)`` becomes ``within(x, t)``.

:func:`cancel_and_wait` is how an owner ends a long-lived task: cancel, wait, cancel
again while it runs on (a cancellation can still land in code that swallows it, e.g.
a library's ``wait_for``), and give up after ``limit`` seconds with an error logged, so
the owner's own ``close()`` always returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

__all__ = ["cancel_and_wait", "within"]

log = logging.getLogger(__name__)

T = TypeVar("T")


async def within(aw: Awaitable[T], timeout: float | None) -> T:
    """``await aw``, raising :class:`TimeoutError` after ``timeout`` seconds (None: no
    limit); a cancellation of the caller always propagates."""
    async with asyncio.timeout(timeout):
        return await aw


async def cancel_and_wait(
    task: asyncio.Future[Any], *, what: str, grace: float = 1.0, limit: float = 10.0
) -> bool:
    """Cancel ``task`` and wait until it has ended; True if it did.

    While it runs on it is cancelled again every ``grace`` seconds; after ``limit``
    seconds it is abandoned (an error names ``what``) and False returned. Whatever the
    task raised is logged at debug level, never re-raised: the caller is closing. A
    cancellation of the caller itself propagates (the task has been cancelled by then).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not task.done():
        left = deadline - loop.time()
        if left <= 0:
            log.error("%s did not end within %.1f s of being cancelled; abandoned", what, limit)
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=min(grace, left))
    if not task.cancelled() and task.exception() is not None:
        log.debug("%s ended with %r", what, task.exception())
    return True
