"""SDP in and out of the node, under the privacy rule.

- :func:`outgoing`: the SDP this node sends names no address but its own mesh address
  (``o=``, ``c=``, ``a=rtcp``, every candidate); anything else is rewritten or dropped,
  then the result is checked and refused if an address slipped through.
- :func:`incoming`: a peer's SDP is validated (size, shape, the fields WebRTC needs)
  and its candidates are filtered to the signaling peer's authenticated mesh address;
  ``c=`` / ``a=rtcp`` are rewritten to that address. Malformed SDP raises
  :class:`SdpError` with the reason.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = ["IncomingSdp", "SdpError", "addresses", "incoming", "media_kinds", "outgoing"]

MAX_SDP_BYTES = 16 * 1024
MAX_LINES = 400
MAX_LINE_CHARS = 1024
MEDIA_KINDS = ("audio", "video")
_LINE = re.compile(r"[a-z]=[\x20-\x7e]*")
_IP4_ANY = "0.0.0.0"
_NEEDED = ("ice-ufrag", "ice-pwd", "fingerprint", "setup")


class SdpError(ValueError):
    """The SDP is malformed or breaks the privacy rule."""


@dataclass(frozen=True)
class Candidate:
    foundation: str
    component: int
    transport: str
    priority: int
    host: str
    port: int
    type: str

    @classmethod
    def parse(cls, value: str) -> Candidate:
        """From the value of an ``a=candidate:`` line (after the colon)."""
        bits = value.split()
        if len(bits) < 8 or bits[6] != "typ" or len(bits) % 2:
            raise SdpError(f"malformed candidate {value!r}")
        try:
            component, priority, port = int(bits[1]), int(bits[3]), int(bits[5])
        except ValueError:
            raise SdpError(f"malformed candidate {value!r}") from None
        if not (1 <= component <= 256 and 0 < port < 65536 and 0 <= priority < 2**32):
            raise SdpError(f"candidate out of range {value!r}")
        return cls(bits[0], component, bits[2].lower(), priority, bits[4], port, bits[7])

    def line(self) -> str:
        return (
            f"a=candidate:{self.foundation} {self.component} {self.transport} "
            f"{self.priority} {self.host} {self.port} typ {self.type}"
        )


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _split_lines(sdp: str) -> list[str]:
    if len(sdp.encode("utf-8", "replace")) > MAX_SDP_BYTES:
        raise SdpError(f"SDP larger than {MAX_SDP_BYTES} bytes")
    lines = [line for line in sdp.replace("\r\n", "\n").split("\n") if line]
    if len(lines) > MAX_LINES:
        raise SdpError(f"SDP has more than {MAX_LINES} lines")
    if not lines or lines[0] != "v=0":
        raise SdpError("SDP must start with v=0")
    for line in lines:
        if len(line) > MAX_LINE_CHARS or not _LINE.fullmatch(line):
            raise SdpError(f"malformed SDP line {line[:60]!r}")
    return lines


def _join(lines: list[str]) -> str:
    return "\r\n".join(lines) + "\r\n"


def addresses(sdp: str) -> list[str]:
    """Every IP address or host name the SDP names (o=, c=, a=rtcp, candidates and
    their raddr), in order; ``0.0.0.0`` included."""
    found: list[str] = []
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if line.startswith(("o=", "c=")) or line.startswith("a=rtcp:"):
            parts = line.split()
            if len(parts) >= 3 and parts[-2] in ("IP4", "IP6"):
                found.append(parts[-1])
        elif line.startswith("a=candidate:"):
            bits = line.split()
            if len(bits) > 4:
                found.append(bits[4])
            if "raddr" in bits:
                index = bits.index("raddr")
                if index + 1 < len(bits):
                    found.append(bits[index + 1])
    return found


def media_kinds(sdp: str) -> tuple[str, ...]:
    return tuple(line[2:].split(" ", 1)[0] for line in _split_lines(sdp) if line.startswith("m="))


def _rewrite(line: str, host: str) -> str | None:
    """The line with its address set to ``host`` (a mesh address), or None to drop it;
    other lines unchanged."""
    if line.startswith("o="):
        parts = line.split()
        if len(parts) != 6:
            raise SdpError("malformed o= line")
        return " ".join([*parts[:4], "IP6", host])
    if line.startswith("c="):
        return f"c=IN IP6 {host}"
    if line.startswith("a=rtcp:"):
        port = line[len("a=rtcp:") :].split()[0]
        if not port.isdigit():
            raise SdpError("malformed a=rtcp line")
        return f"a=rtcp:{port} IN IP6 {host}"
    return line


def outgoing(sdp: str, own: ipaddress.IPv6Address) -> str:
    """The SDP to send: only ``own`` (this node's mesh address) named anywhere."""
    host = str(own)
    out: list[str] = []
    for line in _split_lines(sdp):
        if line.startswith("a=candidate:"):
            cand = Candidate.parse(line[len("a=candidate:") :])
            if _ip(cand.host) == own and cand.type == "host" and cand.transport == "udp":
                out.append(cand.line())  # drops any raddr/rport
            continue
        rewritten = _rewrite(line, host)
        if rewritten is not None:
            out.append(rewritten)
    result = _join(out)
    leaked = [a for a in addresses(result) if _ip(a) != own]
    if leaked:  # pragma: no cover - the rewrite above makes this unreachable
        raise SdpError(f"outgoing SDP would name {', '.join(leaked)}")
    if not any(line.startswith("a=candidate:") for line in out):
        raise SdpError("outgoing SDP has no candidate on this node's mesh address")
    return result


@dataclass(frozen=True)
class IncomingSdp:
    sdp: str
    media: tuple[str, ...]
    dropped: tuple[str, ...]  # candidates refused: "host port"


def _sections(lines: list[str]) -> list[list[str]]:
    sections: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    return sections


def _check_shape(lines: list[str]) -> tuple[str, ...]:
    sections = _sections(lines)
    session, medias = sections[0], sections[1:]
    if not 1 <= len(medias) <= len(MEDIA_KINDS):
        raise SdpError("SDP must carry one audio and/or one video section")
    kinds = tuple(m[0][2:].split(" ", 1)[0] for m in medias)
    if len(set(kinds)) != len(kinds) or any(k not in MEDIA_KINDS for k in kinds):
        raise SdpError(f"unsupported media sections {', '.join(kinds)}")
    if not any(line.startswith("a=group:BUNDLE ") for line in session):
        raise SdpError("SDP is not bundled (no a=group:BUNDLE)")
    for media in medias:
        present = {line[2:].split(":", 1)[0] for line in [*session, *media] if line[:2] == "a="}
        missing = [n for n in _NEEDED if n not in present]
        if missing:
            raise SdpError(f"{media[0][2:7]} section lacks a={', a='.join(missing)}")
    return kinds


def incoming(sdp: str, peer: ipaddress.IPv6Address) -> IncomingSdp:
    """Validate the peer's SDP and keep only candidates on ``peer``."""
    lines = _split_lines(sdp)
    kinds = _check_shape(lines)
    host = str(peer)
    out: list[str] = []
    dropped: list[str] = []
    kept = 0
    for line in lines:
        if line.startswith("a=candidate:"):
            cand = Candidate.parse(line[len("a=candidate:") :])
            if _ip(cand.host) == peer and cand.transport == "udp" and cand.type == "host":
                out.append(cand.line())
                kept += 1
            else:
                dropped.append(f"{cand.host} {cand.port}")
            continue
        rewritten = _rewrite(line, host)
        if rewritten is not None:
            out.append(rewritten)
    if not kept:
        raise SdpError(f"SDP has no candidate on the caller's mesh address {host}")
    result = _join(out)
    _parse_with_aiortc(result)
    return IncomingSdp(result, kinds, tuple(dropped))


def _parse_with_aiortc(sdp: str) -> None:
    from aiortc import sdp as aiortc_sdp

    try:
        aiortc_sdp.SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises whatever it trips on
        raise SdpError(f"SDP does not parse: {exc}") from None
