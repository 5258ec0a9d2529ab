"""HEP v3 (the HOMER encapsulation protocol) parsed directly: SIP servers export their traffic in it.

Kamailio's siptrace, Asterisk's res_hep, FreeSWITCH's capture server and
OpenSIPS' proto_hep send each SIP message they receive or send as one UDP
datagram: "HEP3", a 16-bit total length, then chunks of (vendor id, type id,
chunk length including its 6-byte header, value). The framing is small enough
that a library would add more surface than it saves. Generic chunks (vendor 0)
we use: 1 IP family, 2 IP protocol, 3/4 IPv4 source/destination, 5/6 IPv6
source/destination, 7/8 ports, 9/10 time (seconds, microseconds), 11 protocol
type (1 = SIP), 12 capture agent id, 14 auth key (Kamailio's siptrace `auth_key`), 15 payload, 16 compressed payload
(zlib/gzip), 17 correlation id. Unknown chunks and vendor chunks are skipped,
as the protocol intends.
"""
from __future__ import annotations

import ipaddress
import socket
import struct
import zlib
from dataclasses import dataclass

from fleet.evidence.wire.decode import Datagram

MAGIC = b"HEP3"
PROTO_SIP = 1
MAX_PAYLOAD = 65535


class HepError(ValueError):
    """A datagram that is not well-formed HEP v3; the text says what is wrong."""


@dataclass(slots=True)
class HepPacket:
    """One decoded HEP datagram (read-only by convention; not frozen, as that costs per packet)."""
    family: int                    # 2 = IPv4, 10 = IPv6 (as the protocol numbers them)
    ip_proto: int                  # 17 = UDP, 6 = TCP
    src: tuple[str, int]
    dst: tuple[str, int]
    t: float                       # capture time the agent stamped
    proto_type: int                # 1 = SIP
    agent_id: int | None
    payload: bytes
    correlation_id: bytes = b""
    auth_key: bytes | None = None  # chunk 14 as sent (None: the datagram carries none)

    def datagram(self) -> Datagram:
        return Datagram(self.t, self.src, self.dst, self.payload)


def parse(data: bytes) -> HepPacket:
    """Parse one HEP v3 datagram; raise HepError (and nothing else) on anything malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise HepError("datagram is not bytes")
    data = bytes(data)
    if len(data) < 6:
        raise HepError(f"datagram of {len(data)} bytes is shorter than the HEP header")
    if data[:4] != MAGIC:
        if data[:1] in (b"\x01", b"\x02"):
            raise HepError("HEP version 1 or 2 datagram; only HEP v3 is accepted")
        raise HepError("no HEP3 magic")
    total = struct.unpack_from("!H", data, 4)[0]
    if total < 6 or total > len(data):
        raise HepError(f"total length {total} does not fit the {len(data)}-byte datagram")
    pos = 6
    fields: dict[int, bytes] = {}
    unpack = _CHUNK.unpack_from
    while pos < total:
        if total - pos < 6:
            raise HepError(f"chunk header truncated at offset {pos}")
        vendor, ctype, clen = unpack(data, pos)
        if clen < 6 or pos + clen > total:
            raise HepError(f"chunk {vendor}:{ctype} at offset {pos} has bad length {clen}")
        if vendor == 0 and ctype not in fields:
            fields[ctype] = data[pos + 6:pos + clen]
        pos += clen
    return _packet(fields)


_CHUNK = struct.Struct("!HHH")


# required generic chunks: type -> (size in bytes, name for the error message)
_REQUIRED = ((1, 1, "IP family"), (2, 1, "IP protocol"), (7, 2, "source port"), (8, 2, "destination port"),
             (9, 4, "timestamp"), (11, 1, "protocol type"))
_OPTIONAL = ((10, 4, "timestamp microseconds"), (12, 4, "capture agent id"))
_FROM_BYTES = int.from_bytes


def _packet(fields: dict[int, bytes]) -> HepPacket:
    v: dict[int, int] = {}
    for ctype, size, name in _REQUIRED:
        raw = fields.get(ctype)
        if raw is None:
            raise HepError(f"missing {name} chunk ({ctype})")
        if len(raw) != size:
            raise HepError(f"{name} chunk ({ctype}) has {len(raw)} bytes, expected {size}")
        v[ctype] = _FROM_BYTES(raw, "big")
    for ctype, size, name in _OPTIONAL:
        raw = fields.get(ctype)
        if raw is not None:
            if len(raw) != size:
                raise HepError(f"{name} chunk ({ctype}) has {len(raw)} bytes, expected {size}")
            v[ctype] = _FROM_BYTES(raw, "big")
    family = v[1]
    if family == 2:
        src_raw, dst_raw, size, af = fields.get(3), fields.get(4), 4, socket.AF_INET
    elif family == 10:
        src_raw, dst_raw, size, af = fields.get(5), fields.get(6), 16, socket.AF_INET6
    else:
        raise HepError(f"unknown IP family {family}")
    if src_raw is None or dst_raw is None or len(src_raw) != size or len(dst_raw) != size:
        raise HepError(f"source or destination address missing or not {size} bytes for family {family}")
    usecs = v.get(10, 0)
    if usecs >= 1_000_000:
        raise HepError(f"timestamp microseconds out of range: {usecs}")
    payload = fields.get(15)
    if payload is None:
        if 16 not in fields:
            raise HepError("missing payload chunk (15 or 16)")
        payload = _inflate(fields[16])
    return HepPacket(family, v[2], (socket.inet_ntop(af, src_raw), v[7]), (socket.inet_ntop(af, dst_raw), v[8]),
                     v[9] + usecs / 1e6, v[11], v.get(12), payload, fields.get(17, b""), fields.get(14))


def _inflate(raw: bytes) -> bytes:
    """Compressed payloads are zlib or gzip depending on the agent; never inflate past MAX_PAYLOAD."""
    for wbits in (47, -15):       # 47: zlib or gzip header auto-detected; -15: raw deflate
        try:
            d = zlib.decompressobj(wbits)
            out = d.decompress(raw, MAX_PAYLOAD + 1)
        except zlib.error:
            continue
        if len(out) > MAX_PAYLOAD:
            raise HepError("compressed payload inflates past 65535 bytes")
        return out
    raise HepError("compressed payload is neither zlib, gzip nor raw deflate")


def _chunk(ctype: int, value: bytes) -> bytes:
    return struct.pack("!HHH", 0, ctype, 6 + len(value)) + value


def encode(src: tuple[str, int], dst: tuple[str, int], t: float, payload: bytes, *, ip_proto: int = 17,
           proto_type: int = PROTO_SIP, agent_id: int | None = 2001, correlation_id: bytes = b"",
           auth_key: bytes | None = None) -> bytes:
    """Build a HEP v3 datagram as a capture agent does (for the lab, tests and the bench)."""
    s, d = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    if s.version != d.version:
        raise ValueError("source and destination must be the same IP version")
    v4 = s.version == 4
    secs = int(t)
    usecs = min(999_999, int(round((t - secs) * 1e6)))
    body = b"".join([
        _chunk(1, bytes([2 if v4 else 10])), _chunk(2, bytes([ip_proto])),
        _chunk(3 if v4 else 5, s.packed), _chunk(4 if v4 else 6, d.packed),
        _chunk(7, struct.pack("!H", src[1])), _chunk(8, struct.pack("!H", dst[1])),
        _chunk(9, struct.pack("!I", secs)), _chunk(10, struct.pack("!I", usecs)),
        _chunk(11, bytes([proto_type])),
        _chunk(12, struct.pack("!I", agent_id)) if agent_id is not None else b"",
        _chunk(14, auth_key) if auth_key is not None else b"",
        _chunk(17, correlation_id) if correlation_id else b"",
        _chunk(15, payload),
    ])
    total = 6 + len(body)
    if total > 65535:
        raise ValueError("HEP datagram would exceed 65535 bytes")
    return MAGIC + struct.pack("!H", total) + body
