"""The `mesh` command. Exit codes: 0 ok, 1 runtime failure, 2 usage error, 141 the
reader of our output went away (``mesh ... | head``: quiet, like a tool killed by SIGPIPE).

Core commands live here; apps add theirs through the ``meshsuite.commands`` entry
point group (a ``register(subparsers)`` callable), so core never imports an app.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any

from core.cli import (
    contacts_cmds,
    forward_cmds,
    identity_cmds,
    node_cmds,
    relay_cmds,
    status_cmds,
)
from core.errors import MeshError, UsageError

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_PIPE = 128 + 13  # 128 + SIGPIPE, what the shell reports for `yes | head`
DATA_DIR_HELP = (
    "state directory (default: $MESH_DATA_DIR or the XDG data dir); before or after COMMAND"
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mesh",
        description="meshsuite: mail, chat and calls over a Yggdrasil mesh, no servers",
    )
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    identity_cmds.register(sub)
    status_cmds.register(sub)
    node_cmds.register(sub, node_cmds.discover())
    forward_cmds.register(sub)
    contacts_cmds.register(sub)
    relay_cmds.register(sub)
    for ep in sorted(entry_points(group="meshsuite.commands"), key=lambda e: e.name):
        try:
            ep.load()(sub)
        except Exception as exc:  # a broken plug-in must not take the CLI down
            log.warning("command plug-in %s failed to load: %s", ep.name, exc)
    _accept_data_dir_after(sub)
    return parser


def _accept_data_dir_after(sub: argparse._SubParsersAction[Any]) -> None:
    """``--data-dir`` also after a command, at any depth (``mesh up --data-dir DIR``,
    ``mesh mail queue --data-dir DIR``), as well as before it. SUPPRESS as the default:
    a command not given it keeps the value given before the command (or None)."""
    for parser in set(sub.choices.values()):
        if "--data-dir" not in parser._option_string_actions:
            parser.add_argument(
                "--data-dir", default=argparse.SUPPRESS, metavar="DATA_DIR", help=DATA_DIR_HELP
            )
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _accept_data_dir_after(action)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            code = _main(argv)
        finally:
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except BrokenPipeError:  # `mesh ... | head`: the reader has all it wanted
        _silence_stdout()
        return EXIT_PIPE
    return code


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.func(args)
    except UsageError as exc:
        print(f"mesh: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MeshError as exc:
        print(f"mesh: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    return code


def _silence_stdout() -> None:
    """The reader is gone: point stdout at /dev/null so that the interpreter's final
    flush of what is still buffered does not print a second BrokenPipe traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
