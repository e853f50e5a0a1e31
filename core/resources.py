"""Process resources of a node: file descriptors and what happens when they run out.

A node with a public ``tls://`` listener can be flooded with connections. The embedded
listener caps what it holds (``max_links``, at most half the descriptor limit); this
module gives the process the most descriptors it may have, and keeps asyncio from
logging one traceback per failed ``accept()`` when they do run out anyway (asyncio
already pauses that listener for a second and retries; one line per interval says so).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

__all__ = ["AcceptErrorThrottle", "MemoryTrimmer", "raise_nofile_limit"]

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


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where there is no such call (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class MemoryTrimmer:
    """Give the C heap's free pages back to the OS after a burst of connections.

    A flood of TLS handshakes leaves OpenSSL's freed buffers scattered through glibc's
    heap; glibc only returns the top of the heap by itself, so the process would stay
    at its peak size long after every connection is gone (measured: 35 MiB idle, 100 MiB
    after three floods, 40 MiB after ``malloc_trim``). Count the connections that end;
    :meth:`maybe_trim` (called from a periodic tick) trims once at least ``after`` of
    them ended and either ``interval`` seconds passed since the last trim or the burst
    is over (``quiet``: nothing is handshaking any more).
    """

    def __init__(
        self,
        *,
        after: int = 64,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        trim: Callable[[], object] | None = None,
    ) -> None:
        self.after = after
        self.interval = interval
        self._clock = clock
        self._trim = trim if trim is not None else _malloc_trim()
        self._ended = 0
        self._last = clock()
        self.trims = 0

    def ended(self, count: int = 1) -> None:
        self._ended += count

    def maybe_trim(self, *, quiet: bool = False) -> bool:
        now = self._clock()
        if self._trim is None or self._ended < self.after:
            return False
        if not quiet and now - self._last < self.interval:
            return False
        self._trim()
        self._ended = 0
        self._last = now
        self.trims += 1
        return True
