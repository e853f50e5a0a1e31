"""Group commit: concurrent writers share one transaction (and one fsync).

Each caller of :meth:`GroupCommit.submit` waits for the commit that contains its item, so
nothing is acknowledged before it is durable. One writer task (owned by the
:class:`GroupCommit`, started on first use, drained and awaited by :meth:`close`) takes
everything submitted while the previous transaction was running and hands it to the
``commit`` function as one batch: under load, batches grow by themselves and the cost of
a transaction (its round trips to the database thread and the fsync of ``COMMIT``) is
shared; unloaded, a batch is one item and nothing waits for a timer.

``commit(items)`` returns one result per item, in order: a value, or an exception for an
item refused on its own merits (the others still commit). If ``commit`` raises, nothing
of the batch was committed (it must roll back); each item is then retried alone, so one
bad item fails only its own caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

CommitFn = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]


class GroupCommit(Generic[T, R]):
    def __init__(self, commit: CommitFn[T, R], *, max_batch: int, name: str) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._commit = commit
        self.max_batch = max_batch
        self.name = name
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._ready = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self.commits = 0  # transactions committed (each holding one or more items)
        self.largest = 0  # the most items one transaction held

    async def submit(self, item: T) -> R:
        """Commit ``item`` with whatever else is waiting; its result once it is durable."""
        if self._closed:
            raise RuntimeError(f"{self.name}: closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        self._ready.set()
        if self._writer is None or self._writer.done():
            # First use, or the writer died: a caller must never wait on a dead writer.
            if self._writer is not None and not self._writer.cancelled():
                log.error("%s: writer stopped (%r); starting a new one", self.name,
                          self._writer.exception())  # fmt: skip
            self._writer = loop.create_task(self._run(), name=f"{self.name}-group-commit")
        return await future

    async def close(self) -> None:
        """Commit what was submitted, then stop the writer task."""
        self._closed = True
        self._ready.set()
        if self._writer is not None:
            await self._writer
            self._writer = None

    async def _run(self) -> None:
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                while self._pending:
                    take = self._pending[: self.max_batch]
                    del self._pending[: self.max_batch]
                    # A caller that gave up before its turn (connection gone) is not written.
                    live = [(item, fut) for item, fut in take if not fut.done()]
                    if live:
                        await self._flush(live)
                if self._closed:
                    return
        finally:  # cancelled (loop shutdown): nobody may wait forever
            left, self._pending = self._pending, []
            for _, fut in left:
                _settle(fut, RuntimeError(f"{self.name}: stopped before this was committed"))

    async def _flush(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._commit([item for item, _ in batch])
            self.commits += 1
            self.largest = max(self.largest, len(batch))
        except BaseException as exc:
            if not isinstance(exc, Exception):  # cancelled mid-commit: answer, then stop
                for _, fut in batch:
                    _settle(fut, RuntimeError(f"{self.name}: stopped during a commit"))
                raise
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return
            log.debug("%s: a batch of %d failed (%s); committing one by one", self.name,
                      len(batch), exc)  # fmt: skip
            for one in batch:
                await self._flush([one])
            return
        if len(results) != len(batch):  # a bug in the commit function, not in the data
            error = RuntimeError(f"{self.name}: {len(results)} results for {len(batch)} items")
            for _, fut in batch:
                _settle(fut, error)
            return
        for (_, fut), result in zip(batch, results, strict=True):
            _settle(fut, result)


def _settle(future: asyncio.Future[R], result: R | BaseException) -> None:
    if future.done():  # the caller was cancelled while its batch committed
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
