"""What `tcpdump -U -w - -i IFACE FILTER` shows on the userspace router: pcap of the datagrams it relays.

A real site router run by fleet streams its SIP as pcap over SSH; the
userspace router has no kernel interfaces to capture on, so it writes the
same stream itself from the datagrams it relays: the LAN side (phones to the
provider's public address and to the gateway on the router) as `lan0`, the WAN
side (the router's own address to the provider) as `wan0`, both as `any`.
Frames are Ethernet/IPv4/UDP with the real addresses, ports and times, so the
stream decodes as a capture from a Linux box would. The pcap framing is written
here (24-byte header, 16-byte record headers) so hil needs nothing of fleet.

Only the filter words fleet's capture command uses are understood (`port N`,
`host A`); a fragment clause is accepted and matches nothing, since the relay
never fragments.
"""
from __future__ import annotations

import ipaddress
import re
import struct
import time
from dataclasses import dataclass, field

INTERFACES = ("lan0", "wan0")
LINKTYPE_ETHERNET = 1
SNAPLEN = 262144
MAX_BACKLOG = 4 * 1024 * 1024      # a reader this far behind loses the capture, as tcpdump drops in the kernel


class CaptureArgsError(ValueError):
    """tcpdump would refuse these arguments; the text is what it prints, `rc` its exit code."""

    def __init__(self, text: str, rc: int = 1) -> None:
        super().__init__(text)
        self.rc = rc


def pcap_header(snaplen: int = SNAPLEN, linktype: int = LINKTYPE_ETHERNET) -> bytes:
    """The classic pcap file header (microsecond times, little endian, version 2.4)."""
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)


def pcap_record(t: float, frame: bytes) -> bytes:
    sec = int(t)
    usec = min(999_999, int(round((t - sec) * 1e6)))
    return struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame


def _mac(ip: bytes) -> bytes:
    """A locally administered MAC derived from the address: stable per host, distinct per host."""
    return b"\x02\x00" + ip


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(src: tuple[str, int], dst: tuple[str, int], payload: bytes, ident: int = 0) -> bytes:
    """One Ethernet/IPv4/UDP frame (IP header checksum set; UDP checksum 0, which IPv4 allows)."""
    s, d = socket_ip(src[0]), socket_ip(dst[0])
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident & 0xFFFF, 0x4000, 64, 17, 0, s, d)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return _mac(d) + _mac(s) + b"\x08\x00" + ip + udp


def socket_ip(address: str) -> bytes:
    return ipaddress.IPv4Address(address).packed


@dataclass
class CaptureSpec:
    """What one `tcpdump` asked for: interfaces and the filter's ports and hosts (empty = any)."""
    interfaces: tuple[str, ...]
    ports: frozenset[int] = frozenset()
    hosts: frozenset[str] = frozenset()
    interface_name: str = "any"

    def matches(self, iface: str, src: tuple[str, int], dst: tuple[str, int]) -> bool:
        if iface not in self.interfaces:
            return False
        if self.ports and src[1] not in self.ports and dst[1] not in self.ports:
            return False
        return not self.hosts or src[0] in self.hosts or dst[0] in self.hosts

    def banner(self) -> str:
        # Ethernet on `any` too (a kernel would give Linux cooked frames there): every frame carries the same layout
        return f"tcpdump: listening on {self.interface_name}, link-type EN10MB (Ethernet), snapshot length {SNAPLEN} bytes\n"


_PORT = re.compile(r"\bport\s+(\d+)\b")
_HOST = re.compile(r"\bhost\s+(\S+?)\)*(?=\s|$)")


def parse_args(args: list[str]) -> CaptureSpec:
    """tcpdump's options as fleet's capture command uses them (-U -n -s N -w - -i IFACE, then a filter)."""
    iface, write, filt, i = None, None, [], 0
    while i < len(args):
        a = args[i]
        if a in ("-U", "-n", "-nn", "-p", "-q", "-l"):
            pass
        elif a in ("-s", "-i", "-w", "-B"):
            if i + 1 >= len(args):
                raise CaptureArgsError(f"tcpdump: option requires an argument -- '{a[1]}'")
            value = args[i + 1]
            i += 1
            if a == "-i":
                iface = value
            elif a == "-w":
                write = value
            elif not value.isdigit():
                raise CaptureArgsError(f"tcpdump: invalid {'snaplen' if a == '-s' else 'buffer size'} {value}")
        elif a.startswith("-"):
            raise CaptureArgsError(f"tcpdump: option {a} is not emulated on this router")
        else:
            filt.append(a)
        i += 1
    if write != "-":
        raise CaptureArgsError("tcpdump: this router only streams captures (-w -); it has no storage for a file")
    name = iface or INTERFACES[0]
    if name == "any":
        interfaces: tuple[str, ...] = INTERFACES
    elif name in INTERFACES:
        interfaces = (name,)
    else:
        raise CaptureArgsError(f"tcpdump: {name}: No such device exists\n(SIOCGIFHWADDR: No such device)")
    expr = " ".join(filt)
    ports = frozenset(int(p) for p in _PORT.findall(expr))
    if any(not 0 < p < 65536 for p in ports):
        raise CaptureArgsError(f"tcpdump: illegal port number in filter {expr!r}")
    hosts = set()
    for h in _HOST.findall(expr):
        try:
            hosts.add(str(ipaddress.ip_address(h)))
        except ValueError:
            raise CaptureArgsError(f"tcpdump: can't parse filter expression: unknown host '{h}'") from None
    return CaptureSpec(interfaces, ports, frozenset(hosts), name)


@dataclass
class Capture:
    """One running capture: its spec and where its pcap bytes go (an asyncio StreamWriter or anything with
    write() and transport.get_write_buffer_size())."""
    spec: CaptureSpec
    writer: object
    frames: int = 0
    dropped: int = 0
    closed: bool = False
    started: float = field(default_factory=time.time)

    def offer(self, t: float, iface: str, src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> None:
        if self.closed or not self.spec.matches(iface, src, dst):
            return
        transport = getattr(self.writer, "transport", None)
        if transport is not None and (transport.is_closing() or transport.get_write_buffer_size() > MAX_BACKLOG):
            self.dropped += 1
            return
        self.frames += 1
        self.writer.write(pcap_record(t, udp_frame(src, dst, payload, self.frames)))  # type: ignore[attr-defined]


def hep3_sip(data: bytes) -> tuple[float, tuple[str, int], tuple[str, int], bytes] | None:
    """(time, source, destination, SIP bytes) of one HEP v3 datagram over IPv4, or None for anything else.

    The Kamailio gateway's siptrace reports its SIP this way; the router puts it into its LAN captures, as
    tcpdump on a router that runs the gateway itself would see it."""
    if len(data) < 6 or data[:4] != b"HEP3":
        return None
    total = struct.unpack("!H", data[4:6])[0]
    if total > len(data):
        return None
    chunks: dict[int, bytes] = {}
    pos = 6
    while pos + 6 <= total:
        vendor, ctype, length = struct.unpack("!HHH", data[pos:pos + 6])
        if length < 6 or pos + length > total:
            return None
        if vendor == 0:
            chunks.setdefault(ctype, data[pos + 6:pos + length])
        pos += length
    try:
        src = (str(ipaddress.IPv4Address(chunks[3])), struct.unpack("!H", chunks[7])[0])
        dst = (str(ipaddress.IPv4Address(chunks[4])), struct.unpack("!H", chunks[8])[0])
        t = struct.unpack("!I", chunks[9])[0] + struct.unpack("!I", chunks[10])[0] / 1e6
        payload = chunks[15]
    except (KeyError, struct.error, ipaddress.AddressValueError):
        return None
    if chunks.get(11, b"\x01")[:1] != b"\x01":      # protocol type 1 = SIP
        return None
    return t, src, dst, payload
