"""The checks every received envelope passes, in this order, each with its own error.

1. ``forged-sender``  the stream's authenticated source address is the sender key's address;
2. ``bad-signature``  the Ed25519 signature verifies (by the envelope's signer key);
3. ``key-changed``    the signer is the sender's node key, or the app key pinned for that
                      sender on first use (a different one is refused and recorded);
4. ``not-for-me``     the recipient is this node;
5. ``replay``         the id was not seen before (ids are kept for the whole window of 6.);
6. ``no-timestamp`` / ``stale``  the sent time is there and inside
                      [now - expiry - skew, now + skew];
7. ``control-chars``  a text body has no character the terminal sanitizer would escape
                      (``core.text``: C0/C1 controls but newline and tab, bidi and other
                      format characters, zero-width and invisible blanks), and
   ``malformed``      it is not empty or only whitespace (as ``mesh chat send`` refuses).

Pure: the caller looks up the pinned key and whether the id was seen, then asks.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from apps.chat.envelope import Envelope, Kind
from core import address_for_key, unsafe_reason

__all__ = ["Context", "Refusal", "Verdict", "check", "window_ms"]

DEFAULT_SKEW = 300.0  # s a sender's clock may run ahead of ours (or the message travel)


class Refusal(enum.IntEnum):
    """Ack codes. 0 is accepted; the others say why an envelope or frame was refused."""

    OK = 0
    FORGED_SENDER = 1
    BAD_SIGNATURE = 2
    KEY_CHANGED = 3
    NOT_FOR_ME = 4
    REPLAY = 5
    STALE = 6
    NO_TIMESTAMP = 7
    MALFORMED = 8
    RATE_LIMITED = 9
    OVERSIZE = 10
    GARBAGE = 11
    BAD_VERSION = 12
    BUSY = 13
    CONTROL_CHARS = 14

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    @property
    def temporary(self) -> bool:
        """The sender should try again later (not a verdict on the message)."""
        return self in (Refusal.RATE_LIMITED, Refusal.BUSY)

    @classmethod
    def from_label(cls, label: str) -> Refusal:
        return cls[label.upper().replace("-", "_")]


@dataclass(frozen=True)
class Context:
    source: ipaddress.IPv6Address  # authenticated by the node's backend
    own_key: bytes
    pinned: bytes | None  # the app key pinned for the sender, if any
    seen: bool  # the id is in the seen table
    now: float  # s since the epoch
    expiry: float  # s: the senders' outbox expiry
    skew: float = DEFAULT_SKEW


@dataclass(frozen=True)
class Verdict:
    refusal: Refusal
    detail: str = ""
    pin: bool = False  # accepted: pin the signer as the sender's app key

    @property
    def ok(self) -> bool:
        return self.refusal is Refusal.OK


def window_ms(now: float, expiry: float, skew: float) -> tuple[int, int]:
    return int((now - expiry - skew) * 1000), int((now + skew) * 1000)


def check(env: Envelope, ctx: Context) -> Verdict:
    if address_for_key(env.sender) != ctx.source:
        return Verdict(
            Refusal.FORGED_SENDER,
            f"the stream comes from {ctx.source}, not from the sender's address "
            f"{address_for_key(env.sender)}",
        )
    if not env.verify():
        return Verdict(Refusal.BAD_SIGNATURE, "the signature does not verify")
    pin = False
    if env.signer != env.sender:
        if ctx.pinned is None:
            pin = True
        elif ctx.pinned != env.signer:
            return Verdict(
                Refusal.KEY_CHANGED,
                f"signed by {env.signer.hex()}, but {ctx.pinned.hex()} is pinned for "
                f"{env.sender.hex()}",
            )
    if env.recipient != ctx.own_key:
        return Verdict(Refusal.NOT_FOR_ME, f"addressed to {env.recipient.hex()}, not this node")
    if ctx.seen:
        return Verdict(Refusal.REPLAY, f"message {env.id.hex()} was received before")
    if env.sent_ms == 0:
        return Verdict(Refusal.NO_TIMESTAMP, "the envelope has no sent time")
    low, high = window_ms(ctx.now, ctx.expiry, ctx.skew)
    if not low <= env.sent_ms <= high:
        return Verdict(Refusal.STALE, f"sent time {env.sent_ms} ms is outside [{low}, {high}]")
    if env.kind is Kind.TEXT and (unsafe := unsafe_reason(env.text)) is not None:
        return Verdict(
            Refusal.CONTROL_CHARS,
            f"the text has {unsafe}; only newlines and tabs may be in a message",
        )
    if env.kind is Kind.TEXT and not env.text.strip():
        return Verdict(Refusal.MALFORMED, "the text is empty")
    return Verdict(Refusal.OK, pin=pin)
