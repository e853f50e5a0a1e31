"""A real aiortc offer (audio+video, bundled) with a mesh host candidate, for SDP tests."""

from __future__ import annotations

MESH_A = "201:1111:2222:3333:4444:5555:6666:7777"
MESH_B = "202:aaaa:bbbb:cccc:dddd:eeee:ffff:1"

_MEDIA = """m={kind} 40000 UDP/TLS/RTP/SAVPF {pt}
c=IN IP6 {host}
a=sendrecv
a=mid:{mid}
a=rtcp:9 IN IP4 0.0.0.0
a=rtcp-mux
a=rtpmap:{pt} {codec}
a=candidate:f957a2332b1715da3b0ef8ba684454eb 1 udp 2130706431 {host} 40000 typ host
a=end-of-candidates
a=ice-ufrag:9IVZ
a=ice-pwd:YDM9YAKLLb9SQzpayVWTok
a=fingerprint:sha-256 {fp}
a=setup:actpass
"""


FP = ":".join(["3C"] * 32)


def offer(host: str = MESH_A, *, extra: str = "") -> str:
    head = "v=0\no=- 4005270052 4005270052 IN IP4 0.0.0.0\ns=-\nt=0 0\na=group:BUNDLE 0 1\n"
    audio = _MEDIA.format(kind="audio", pt=96, codec="opus/48000/2", mid=0, host=host, fp=FP)
    video = _MEDIA.format(kind="video", pt=97, codec="VP8/90000", mid=1, host=host, fp=FP)
    return (head + audio + extra + video).replace("\n", "\r\n")
