"""A pcap byte stream read incrementally, a router platform's capture command filled in, and a pcap writer.

The wire evidence arrives as the stdout of `ssh router tcpdump -U -w - ...`
(or of a local tcpdump on a mirror port): a classic pcap stream that never
ends and arrives in arbitrary pieces. `PcapStreamParser.feed` takes whatever
bytes came and returns the complete records; a record cut at the end waits
for the rest. The classic format is small (24-byte file header, 16-byte record
headers, either byte order, micro- or nanosecond times), so it is framed here
and dpkt decodes what is inside the frames. A stream whose framing breaks
cannot be resynchronised reliably: the parser raises PcapFormatError, the
caller restarts the capture.

Experiments keep the capture they used: `PcapWriter` writes records back as a
pcap file that Wireshark opens.
"""
from __future__ import annotations

import asyncio
import shlex
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import BinaryIO

MAGIC_US = 0xA1B2C3D4
MAGIC_NS = 0xA1B23C4D
PCAPNG_MAGIC = 0x0A0D0D0A
MAX_RECORD = 262144              # tcpdump's largest snap length


class PcapFormatError(ValueError):
    """The byte stream is not (or no longer) a classic pcap stream; the text says where and why."""


@dataclass(frozen=True, slots=True)
class PcapRecord:
    t: float
    linktype: int
    frame: bytes
    orig_len: int

    @property
    def truncated(self) -> bool:
        return len(self.frame) < self.orig_len


class PcapStreamParser:
    """Push parser for a classic pcap stream: `feed(bytes) -> [PcapRecord]`, in any chunking."""

    def __init__(self, max_buffer: int = 4 * MAX_RECORD) -> None:
        self._buf = bytearray()
        self._rec: struct.Struct | None = None
        self._scale = 1e-6
        self.linktype: int | None = None
        self.snaplen: int | None = None
        self.offset = 0                 # bytes consumed so far, for error messages
        self.records = 0
        self.max_buffer = max_buffer

    def feed(self, data: bytes) -> list[PcapRecord]:
        self._buf += data
        out: list[PcapRecord] = []
        if self._rec is None:
            if len(self._buf) < 24:
                return out
            self._header(bytes(self._buf[:24]))
            del self._buf[:24]
            self.offset += 24
        rec, buf, pos, n = self._rec, self._buf, 0, len(self._buf)
        assert rec is not None
        while n - pos >= 16:
            sec, frac, incl, orig = rec.unpack_from(buf, pos)
            if incl > MAX_RECORD or (self.snaplen and incl > max(self.snaplen, 65535)):
                raise PcapFormatError(f"pcap record at byte {self.offset + pos} claims {incl} bytes "
                                      f"(snap length {self.snaplen}): the stream is corrupt")
            if n - pos - 16 < incl:
                break
            if frac * self._scale >= 1.0:
                raise PcapFormatError(f"pcap record at byte {self.offset + pos} has a sub-second field "
                                      f"out of range ({frac})")
            out.append(PcapRecord(sec + frac * self._scale, self.linktype or 0, bytes(buf[pos + 16:pos + 16 + incl]),
                                  max(orig, incl)))
            pos += 16 + incl
        if pos:
            del buf[:pos]
            self.offset += pos
        self.records += len(out)
        if len(buf) > self.max_buffer:
            raise PcapFormatError(f"pcap stream buffered {len(buf)} bytes without a complete record")
        return out

    @property
    def pending(self) -> int:
        """Bytes waiting for the rest of their record (non-zero at EOF means the stream was cut)."""
        return len(self._buf)

    def _header(self, head: bytes) -> None:
        for endian in ("<", ">"):
            magic = struct.unpack(endian + "I", head[:4])[0]
            if magic in (MAGIC_US, MAGIC_NS):
                major, minor, _zone, _sig, snaplen, linktype = struct.unpack(endian + "HHiIII", head[4:])
                if major != 2:
                    raise PcapFormatError(f"pcap version {major}.{minor} is not supported (2.4 is)")
                self._rec = struct.Struct(endian + "IIII")
                self._scale = 1e-9 if magic == MAGIC_NS else 1e-6
                self.snaplen = snaplen
                self.linktype = linktype & 0x0FFFFFFF     # the upper bits carry FCS flags
                return
        if struct.unpack("<I", head[:4])[0] == PCAPNG_MAGIC:
            raise PcapFormatError("the stream is pcapng; give tcpdump or dumpcap the option for classic pcap "
                                  "(dumpcap -P, tcpdump writes classic pcap by default)")
        raise PcapFormatError(f"not a pcap stream (first bytes {head[:4].hex()})")


def iter_pcap(stream: BinaryIO, chunk: int = 65536) -> Iterator[PcapRecord]:
    """Records from a blocking file-like object (a file, a pipe, a subprocess' stdout) until EOF.

    Uses read1 where the object has it, so records come out as soon as the capture flushes them."""
    parser = PcapStreamParser()
    read = getattr(stream, "read1", None) or stream.read
    while True:
        data = read(chunk)
        if not data:
            return
        yield from parser.feed(data)


async def aiter_pcap(reader: asyncio.StreamReader, chunk: int = 65536) -> AsyncIterator[PcapRecord]:
    """Records from an asyncio stream (an asyncssh or subprocess stdout) until EOF."""
    parser = PcapStreamParser()
    while True:
        data = await reader.read(chunk)
        if not data:
            return
        for record in parser.feed(data):
            yield record


class PcapWriter:
    """Writes records as a classic pcap file (microsecond times), e.g. the capture beside report.json."""

    def __init__(self, stream: BinaryIO, linktype: int, snaplen: int = 65535) -> None:
        self.stream = stream
        self.linktype = linktype
        stream.write(struct.pack("<IHHiIII", MAGIC_US, 2, 4, 0, 0, snaplen, linktype))

    def write(self, t: float, frame: bytes, orig_len: int | None = None) -> None:
        sec = int(t)
        usec = min(999_999, int(round((t - sec) * 1e6)))
        self.stream.write(struct.pack("<IIII", sec, usec, len(frame), orig_len or len(frame)) + frame)


# --- the capture command: a router platform's template (fleet.config.platforms) with its values quoted ---------

SIP_PORTS = (5060,)


def capture_command(template: str, interface: str, ports: tuple[int, ...] = SIP_PORTS,
                    hosts: tuple[str, ...] = ()) -> str:
    """The shell command that streams pcap of SIP on `interface`: `template` (a router platform's capture
    command, fleet.config.platforms.RouterPlatform.capture_template) with {iface} and {filter} filled in, both
    checked and quoted here, so no platform formats an unchecked value into a command."""
    return template.format(iface=shlex.quote(_interface(interface)), filter=shlex.quote(capture_filter(ports, hosts)))


def _interface(name: str) -> str:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "._-@:" for c in name) or name.startswith("-"):
        raise ValueError(f"capture interface {name!r} is not an interface name")
    return name


def capture_filter(ports: tuple[int, ...] = SIP_PORTS, hosts: tuple[str, ...] = (), vlan: bool = False) -> str:
    """A BPF filter for UDP on the given ports, IP fragments included (a fragment after the first
    carries no UDP header, so a port filter alone would lose the rest of a large REGISTER answer). A site's wire
    source passes its servers' SIP ports and its DNS ports (53 and the inventory's `dns` port): a phone's
    failed lookup is evidence too (dns_evidence).

    `vlan`: also 802.1Q-tagged frames (a switch mirror port often keeps the tags). In BPF, `vlan` shifts the
    offsets of everything after it, so the tagged alternative comes last: `(...) or (vlan and udp and (...))`."""
    if not ports or any(not isinstance(p, int) or not 0 < p < 65536 for p in ports):
        raise ValueError(f"capture ports must be 1..65535, got {ports!r}")
    port_expr = "(" + " or ".join(f"port {p}" for p in ports) + ")"
    expr = f"(udp and {port_expr}) or (ip[6:2] & 0x1fff != 0)"
    if vlan:
        expr = f"{expr} or (vlan and udp and {port_expr})"
    if hosts:
        import ipaddress
        for h in hosts:
            ipaddress.ip_address(h)         # raises ValueError naming the bad value
        expr = f"({expr}) and (" + " or ".join(f"host {h}" for h in hosts) + ")"
    return expr
