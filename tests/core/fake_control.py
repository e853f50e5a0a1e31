"""A stand-in node for CLI tests: the real :class:`ControlServer` on ``<dir>/control.sock``
in a thread of its own, answering the control methods it is given with canned results,
so that ``mesh ...`` can run in-process (``core.cli.main.main``) against it."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.control.server import ControlServer
from core.errors import MeshError
from core.events import EventBus

__all__ = ["fake_node", "short_data_dir"]


def short_data_dir() -> Iterator[Path]:
    """A fresh data dir under /tmp (a fixture: ``pytest.fixture(short_data_dir, name=...)``):
    short, as a Unix socket path has 107 bytes at most."""
    path = Path(tempfile.mkdtemp(prefix="mesh"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextmanager
def fake_node(data_dir: Path, answers: dict[str, Any]) -> Iterator[list[str]]:
    """Serve ``answers`` (method → result; an exception instance is raised instead) on
    ``data_dir``'s control socket; yields the list of methods called, in order."""
    data_dir.mkdir(parents=True, exist_ok=True)
    called: list[str] = []
    loop = asyncio.new_event_loop()
    server = ControlServer(data_dir / "control.sock", EventBus())
    for name, answer in answers.items():

        async def handler(params: dict[str, Any], name: str = name, answer: Any = answer) -> Any:
            called.append(name)
            if isinstance(answer, BaseException):
                raise answer
            return answer

        server.register(name, handler)
    ready = threading.Event()
    thread = threading.Thread(target=_serve, args=(loop, server, ready), daemon=True)
    thread.start()
    if not ready.wait(10):
        raise MeshError("the fake node did not start")
    try:
        yield called
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _serve(loop: asyncio.AbstractEventLoop, server: ControlServer, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.run_until_complete(server.start())
    ready.set()
    loop.run_forever()
