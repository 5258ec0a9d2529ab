"""Captured frames -> UDP datagrams (IPv4 fragments reassembled) -> SIP REGISTER messages.

The per-server evidence of issue 10 comes from SIP seen on the wire. A capture
hands us link-layer frames of whatever kind the capture point has (Ethernet
with VLAN tags on a mirror port, Linux "cooked" frames from `tcpdump -i any`,
raw IP from a tunnel); dpkt knows those layouts, so it decodes them and we
only reassemble IPv4 fragments (large REGISTER answers listing many contacts
do fragment) and pick out REGISTER traffic. Everything here is fed by devices
and networks we do not control: nothing raises, junk is counted and dropped.
"""
from __future__ import annotations

import socket
import struct
from collections import Counter
from dataclasses import dataclass

import dpkt

from sipwire.message import SipParseError

from fleet.evidence.wire import sip as wire_sip

# pcap link types we decode (tcpdump's DLT/LINKTYPE numbers)
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_RAW_ALT = (12, 14)      # DLT_RAW as some BSDs number it
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229


@dataclass(frozen=True, slots=True)
class Datagram:
    """One UDP datagram as the capture saw it (after reassembly): time, addresses and payload."""
    t: float
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


class FragmentReassembler:
    """IPv4 fragment reassembly with hard limits, because fragments are the classic way to exhaust memory.

    A datagram is kept until all its pieces arrived, `timeout` seconds passed since its first piece
    (RFC 791 suggests 15 s, Linux uses 30 s), or `max_pending` newer datagrams pushed it out.
    Overlapping pieces are rejected (the whole datagram is dropped), as modern stacks do.
    """

    def __init__(self, timeout: float = 30.0, max_pending: int = 1024, max_size: int = 65535) -> None:
        self.timeout = timeout
        self.max_pending = max_pending
        self.max_size = max_size
        # key -> [first_t, {offset: bytes}, total_len or None]
        self._pending: dict[tuple, list] = {}
        self.stats: Counter[str] = Counter()

    def add(self, t: float, key: tuple, offset: int, more: bool, data: bytes) -> bytes | None:
        """Add one piece; the whole payload once every piece is there, else None."""
        self.expire(t)
        entry = self._pending.get(key)
        if entry is None:
            if len(self._pending) >= self.max_pending:
                self._pending.pop(next(iter(self._pending)))
                self.stats["fragments_evicted"] += 1
            entry = self._pending[key] = [t, {}, None]
        end = offset + len(data)
        if end > self.max_size or (not more and entry[2] is not None and entry[2] != end):
            self._drop(key, "fragments_bad")
            return None
        pieces: dict[int, bytes] = entry[1]
        if offset in pieces:
            if pieces[offset] == data:
                self.stats["fragments_duplicate"] += 1
                return None
            self._drop(key, "fragments_overlap")
            return None
        pieces[offset] = data
        if not more:
            entry[2] = end
        total = entry[2]
        if total is None:
            return None
        pos, parts = 0, []
        for off in sorted(pieces):
            if off != pos:
                if off < pos:
                    self._drop(key, "fragments_overlap")
                return None
            parts.append(pieces[off])
            pos = off + len(pieces[off])
        if pos != total:
            if pos > total:
                self._drop(key, "fragments_bad")
            return None
        del self._pending[key]
        self.stats["fragments_reassembled"] += 1
        return b"".join(parts)

    def expire(self, now: float) -> None:
        while self._pending:
            key = next(iter(self._pending))
            if now - self._pending[key][0] < self.timeout:
                break
            self._drop(key, "fragments_timed_out")

    def _drop(self, key: tuple, why: str) -> None:
        self._pending.pop(key, None)
        self.stats[why] += 1

    def __len__(self) -> int:
        return len(self._pending)


class FrameDecoder:
    """Link-layer frame -> UDP Datagram or None. `stats` counts what was dropped and why.

    Truncated frames (a capture's snap length shorter than the packet, or a cut stream) are
    recognised by the UDP length field and dropped: half a SIP message must never be guessed at.
    """

    def __init__(self, reassembler: FragmentReassembler | None = None, fast_path: bool = True) -> None:
        self.reassembler = reassembler or FragmentReassembler()
        self.fast_path = fast_path
        self.stats: Counter[str] = Counter()

    def decode(self, t: float, linktype: int, frame: bytes) -> Datagram | None:
        if self.fast_path and linktype == LINKTYPE_ETHERNET:
            dg = self._plain_ethernet_udp(t, frame)
            if dg is not _NOT_PLAIN:
                return dg
        try:
            net = _network_layer(linktype, frame)
        except Exception:          # dpkt raises several types on malformed frames; all mean "not for us"
            self.stats["frames_malformed"] += 1
            return None
        if net is None:
            self.stats["frames_not_ip"] += 1
            return None
        try:
            return self._udp(t, net)
        except Exception:
            self.stats["frames_malformed"] += 1
            return None

    def _plain_ethernet_udp(self, t: float, frame: bytes):
        """The one layout that is nearly all of a SIP capture (untagged Ethernet II, IPv4 without options,
        unfragmented UDP) read with a single struct call: dpkt builds three objects per frame, which
        was a third of the decoder's time. Anything else (a VLAN tag, options, fragments, IPv6, an odd
        length) returns _NOT_PLAIN and goes to dpkt; a differential fuzz test holds both paths to the
        same answers."""
        if len(frame) < 42 or frame[12:15] != b"\x08\x00\x45":
            return _NOT_PLAIN
        total, flags_off, proto, sport, dport, ulen = _PLAIN.unpack_from(frame, 16)
        if proto != 17 or flags_off & 0x3FFF or total < 28 or 14 + total > len(frame):
            return _NOT_PLAIN
        if ulen < 8 or ulen > total - 20:
            self.stats["frames_truncated"] += 1
            return None
        return Datagram(t, (socket.inet_ntoa(frame[26:30]), sport), (socket.inet_ntoa(frame[30:34]), dport),
                        frame[42:34 + ulen])

    def decode_ip(self, t: float, packet: bytes) -> Datagram | None:
        """A raw IPv4/IPv6 packet (no link layer)."""
        return self.decode(t, LINKTYPE_RAW, packet)

    def _udp(self, t: float, ip) -> Datagram | None:
        if isinstance(ip, dpkt.ip.IP):
            if ip.p != dpkt.ip.IP_PROTO_UDP:
                self.stats["not_udp"] += 1
                return None
            src, dst = socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst)
            if ip.mf or ip.offset:
                raw = ip.data if isinstance(ip.data, bytes) else ip.data.pack_hdr() + bytes(ip.data.data)
                whole = self.reassembler.add(t, (ip.src, ip.dst, ip.id, ip.p), ip.offset * 8, bool(ip.mf), raw)
                if whole is None:
                    return None
                return self._from_udp_bytes(t, src, dst, whole)
            udp = ip.data
        elif isinstance(ip, dpkt.ip6.IP6):
            if 44 in getattr(ip, "extension_hdrs", {}):
                self.stats["ipv6_fragments_dropped"] += 1     # not reassembled: SIP phones here are IPv4
                return None
            if ip.p != dpkt.ip.IP_PROTO_UDP:
                self.stats["not_udp"] += 1
                return None
            src, dst = socket.inet_ntop(socket.AF_INET6, ip.src), socket.inet_ntop(socket.AF_INET6, ip.dst)
            udp = ip.data
        else:
            self.stats["frames_not_ip"] += 1
            return None
        if not isinstance(udp, dpkt.udp.UDP):
            self.stats["frames_truncated"] += 1
            return None
        data = udp.data
        if udp.ulen < 8 or len(data) < udp.ulen - 8:
            self.stats["frames_truncated"] += 1
            return None
        return Datagram(t, (src, udp.sport), (dst, udp.dport), bytes(data[:udp.ulen - 8]))

    def _from_udp_bytes(self, t: float, src: str, dst: str, whole: bytes) -> Datagram | None:
        if len(whole) < 8:
            self.stats["frames_truncated"] += 1
            return None
        sport, dport, ulen, _ = struct.unpack("!HHHH", whole[:8])
        if ulen < 8 or ulen > len(whole):
            self.stats["frames_truncated"] += 1
            return None
        return Datagram(t, (src, sport), (dst, dport), whole[8:ulen])


_NOT_PLAIN = object()
# from offset 16: total length, (id skipped), flags+fragment offset, (ttl skipped), protocol,
# (checksum, addresses skipped), then the UDP source port, destination port and length
_PLAIN = struct.Struct("!H2xHxB10xHHH")


def _network_layer(linktype: int, frame: bytes):
    """The dpkt IP/IP6 object inside a frame, or None when the frame carries something else."""
    if linktype == LINKTYPE_ETHERNET:
        pkt = dpkt.ethernet.Ethernet(frame).data
    elif linktype == LINKTYPE_LINUX_SLL:
        pkt = dpkt.sll.SLL(frame).data
    elif linktype == LINKTYPE_LINUX_SLL2:
        pkt = dpkt.sll2.SLL2(frame).data
    elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        pkt = dpkt.loopback.Loopback(frame).data
    elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6, *LINKTYPE_RAW_ALT):
        if not frame:
            return None
        version = frame[0] >> 4
        pkt = dpkt.ip.IP(frame) if version == 4 else dpkt.ip6.IP6(frame) if version == 6 else None
    else:
        return None
    return pkt if isinstance(pkt, (dpkt.ip.IP, dpkt.ip6.IP6)) else None


def ip_packet(dg: Datagram) -> bytes:
    """A datagram as a raw IPv4/IPv6 UDP packet (pcap LINKTYPE_RAW), so evidence that arrived as HEP can be
    kept in the experiment's pcap file beside the captured frames and opened in Wireshark."""
    udp = dpkt.udp.UDP(sport=dg.src[1], dport=dg.dst[1], data=dg.payload)
    udp.ulen = 8 + len(dg.payload)
    if ":" in dg.src[0]:
        ip6 = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, dg.src[0]),
                           dst=socket.inet_pton(socket.AF_INET6, dg.dst[0]), nxt=17, hlim=64, data=udp)
        ip6.plen = len(bytes(udp))
        return bytes(ip6)
    ip = dpkt.ip.IP(src=socket.inet_aton(dg.src[0]), dst=socket.inet_aton(dg.dst[0]), p=17, ttl=64, data=udp)
    ip.len = 20 + udp.ulen
    return bytes(ip)


def sip_message(payload: bytes, stats: Counter[str] | None = None) -> wire_sip.WireMessage | None:
    """The REGISTER or INVITE request, or the answer to one, in a UDP payload, parsed once; None for anything else.

    A cheap look at the first bytes keeps RTP, DNS and other SIP methods away from the parser; only
    well-formed messages (wire_sip's strict parser) get through, and a response naming both methods is still
    parsed only once (its CSeq says which it answers). One over wire_sip's size caps is counted in `stats` as
    "register_oversize" (a flood of huge REGISTERs shows as such, not as junk; an oversize INVITE counts there too).
    """
    if payload[:9] == b"REGISTER " or payload[:7] == b"INVITE ":
        pass
    elif payload[:8] == b"SIP/2.0 " and (b"REGISTER" in payload or b"INVITE" in payload):
        pass
    else:
        return None
    try:
        msg = wire_sip.parse(payload)
    except wire_sip.SipOversizeError:
        if stats is not None:
            stats["register_oversize"] += 1
        return None
    except SipParseError:
        return None
    method = msg.cseq[1]
    if method not in ("REGISTER", "INVITE") or (msg.is_request and msg.method != method):
        return None
    return msg


def register_message(payload: bytes, stats: Counter[str] | None = None) -> wire_sip.WireMessage | None:
    """The REGISTER request or REGISTER response in a UDP payload, or None for anything else (sip_message)."""
    msg = sip_message(payload, stats)
    return msg if msg is not None and msg.cseq[1] == "REGISTER" else None
