"""Process resources of a node: file descriptors and what happens when they run out.

A node with a public ``tls://`` listener can be flooded with connections. The embedded
listener caps what it holds (``max_links``, at most half the descriptor limit); this
module gives the process the most descriptors it may have, and keeps asyncio from
logging one traceback per failed ``accept()`` when they do run out anyway (asyncio
already pauses that listener for a second and retries; one line per interval says so).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

__all__ = ["AcceptErrorThrottle", "raise_nofile_limit"]

log = logging.getLogger(__name__)

OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit where allowed; (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.debug("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return soft, hard


class AcceptErrorThrottle:
    """A loop exception handler: "out of descriptors" errors logged once per interval.

    Everything else goes to the handler that was there before (or asyncio's default).
    """

    def __init__(self, *, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self._clock = clock
        self._suppressed = 0
        self._last: float | None = None
        self._previous: Any = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self)

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop.get_exception_handler() is self:
            loop.set_exception_handler(self._previous)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in OUT_OF_RESOURCES:
            self._out_of_resources(exc, str(context.get("message", "")))
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def _out_of_resources(self, exc: OSError, message: str) -> None:
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        log.warning(
            "%s: %s; listeners pause and retry (open-file limit %d; raise it with `ulimit -n`)%s",
            message or "out of system resources",
            exc.strerror or exc,
            soft,
            more,
        )
        self._last = now
        self._suppressed = 0
