"""IMAP4rev1 server for the node's mailbox (RFC 3501 + IDLE, UIDPLUS, MOVE, SPECIAL-USE,
LITERAL+, SASL-IR, UNSELECT, CHILDREN, LIST-EXTENDED basics).

Layers: :mod:`.parser` (sans-IO command parser), :mod:`.session` (state machine over the
store), :mod:`.server` (asyncio adapter). See docs/mail-imap.md.
"""

from .parser import Command, CommandParser, NeedContinuation, ProtocolError, RawLine
from .server import DEFAULT_PORT, ImapServer, start_imap_server
from .session import CAPABILITIES, Authenticator, ImapSession

__all__ = [
    "CAPABILITIES",
    "DEFAULT_PORT",
    "Authenticator",
    "Command",
    "CommandParser",
    "ImapServer",
    "ImapSession",
    "NeedContinuation",
    "ProtocolError",
    "RawLine",
    "start_imap_server",
]
