"""The suite always ends, and says what a test left running.

A pytest plugin (loaded by ``tests/conftest.py``):

* after each test, the threads and child processes that test started and that are
  still alive (after a short grace) are noted against it;
* at the end of the session, those still alive are reported by test, child processes
  are killed (they are the suite's own), and the run fails if any non-daemon thread or
  child process was left: either would keep a CI run from ending, or pile up;
* last resort: once pytest is done, a daemon watchdog ends the interpreter with the
  session's exit status (``os._exit``) if it has not exited by itself within
  :data:`EXIT_GRACE` seconds (a non-daemon thread that never ends: the interpreter
  joins it for ever). A hung test itself is ended by pytest-timeout (``timeout`` in
  pyproject.toml, signal method: the test fails, the run goes on).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

GRACE = 2.0  # how long a test's threads/children may take to end after its teardown
# after pytest is done, how long the interpreter may take to exit
EXIT_GRACE = float(os.environ.get("MESHSUITE_EXIT_GRACE", "60"))


def register(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("meshsuite-leftovers"):
        config.pluginmanager.register(Leftovers(), "meshsuite-leftovers")


def pytest_configure(config: pytest.Config) -> None:  # as a plugin: ``-p tests.leftovers``
    register(config)


def child_pids() -> set[int]:
    """This process's live children (Linux /proc; an empty set elsewhere)."""
    pids: set[int] = set()
    try:
        tasks = list(Path(f"/proc/{os.getpid()}/task").iterdir())
    except OSError:
        return pids
    for task in tasks:
        try:
            pids.update(int(p) for p in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return {pid for pid in pids if _alive(pid)}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has ended (its parent has not reaped it)


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:160] or "?"


@dataclass(eq=False)  # a plugin object: hashed by identity
class Leftovers:
    threads: dict[threading.Thread, str] = field(default_factory=dict)  # -> test id
    children: dict[int, str] = field(default_factory=dict)  # pid -> test id
    before_threads: set[threading.Thread] = field(default_factory=set)
    before_children: set[int] = field(default_factory=set)
    exit_status: int = 0

    # -- per test ---------------------------------------------------------------------
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> object:
        self.before_threads = set(threading.enumerate())
        self.before_children = child_pids()
        yield
        deadline = time.monotonic() + GRACE
        while True:
            threads = [t for t in threading.enumerate() if t not in self.before_threads]
            threads = [t for t in threads if t.is_alive() and t not in self.threads]
            children = child_pids() - self.before_children - set(self.children)
            # only what would block the exit is waited for; daemon threads are noted
            blocking = children or any(not t.daemon for t in threads)
            if not blocking or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        for thread in threads:
            self.threads[thread] = item.nodeid
        for pid in children:
            self.children[pid] = item.nodeid

    # -- end of session ---------------------------------------------------------------
    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        lines: list[str] = []
        fatal = False
        for thread, nodeid in self.threads.items():
            if thread.is_alive():
                kind = "daemon thread" if thread.daemon else "NON-DAEMON thread"
                fatal = fatal or not thread.daemon
                lines.append(f"{kind} {thread.name!r} left by {nodeid}")
        for pid, nodeid in self.children.items():
            if _alive(pid):
                fatal = True
                lines.append(f"child process {pid} ({_cmdline(pid)}) left by {nodeid}; killed")
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        if lines:
            reporter = session.config.pluginmanager.get_plugin("terminalreporter")
            write = reporter.write_line if reporter is not None else print
            write("")
            write("left behind by tests (still running at the end of the session):")
            for line in lines:
                write(f"  {line}")
        if fatal and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        self.exit_status = int(session.exitstatus)

    @pytest.hookimpl(trylast=True)
    def pytest_unconfigure(self, config: pytest.Config) -> None:
        status = self.exit_status

        def force_exit() -> None:
            alive = [t.name for t in threading.enumerate() if not t.daemon and t.is_alive()]
            sys.stderr.write(
                f"\nthe interpreter did not exit {EXIT_GRACE:g} s after the tests "
                f"(non-daemon threads: {alive}); exiting with status {status or 1}\n"
            )
            sys.stderr.flush()
            os._exit(status or 1)

        def arm() -> None:
            watchdog = threading.Timer(EXIT_GRACE, force_exit)
            watchdog.daemon = True  # runs while the interpreter waits for non-daemon threads
            watchdog.name = "exit-watchdog"
            watchdog.start()

        # Armed as the interpreter starts to exit (before it joins non-daemon threads),
        # so an in-process pytest run (pytester, a script) is never cut short.
        register = getattr(threading, "_register_atexit", None)
        if register is None:
            arm()
        else:
            register(arm)
