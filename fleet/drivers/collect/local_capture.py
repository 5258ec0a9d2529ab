"""A capture on a local interface (a switch mirror port): the same pcap stream, from a local tcpdump.

Capturing needs CAP_NET_RAW. Without it tcpdump prints a terse permission
error after it started; we check first and say what to do instead.
"""
from __future__ import annotations

import shutil
import socket
import subprocess

from .pcap_stream import SIP_PORTS, capture_filter, _interface


class CaptureUnavailable(RuntimeError):
    """The local capture cannot run here; the text says why and what would fix it."""


def check_capture(interface: str) -> None:
    """Raise CaptureUnavailable unless a capture on `interface` can start (tcpdump present, CAP_NET_RAW)."""
    _interface(interface)
    if shutil.which("tcpdump") is None:
        raise CaptureUnavailable("capture on a local interface needs tcpdump (Debian package tcpdump)")
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    except PermissionError:
        raise CaptureUnavailable(f"capturing on {interface} needs CAP_NET_RAW: run the worker as root or grant "
                                 "it (setcap cap_net_raw,cap_net_admin+eip $(which tcpdump))") from None
    except (AttributeError, OSError) as exc:
        raise CaptureUnavailable(f"raw capture is not available on this system: {exc}") from None
    with s:
        try:
            socket.if_nametoindex(interface)
        except OSError:
            if interface != "any":
                raise CaptureUnavailable(f"no network interface named {interface} on this host") from None


def local_capture_argv(interface: str, ports: tuple[int, ...] = SIP_PORTS, hosts: tuple[str, ...] = ()) -> list[str]:
    return ["tcpdump", "-U", "-n", "-s", "0", "-w", "-", "-i", _interface(interface), capture_filter(ports, hosts)]


def start_local_capture(interface: str, ports: tuple[int, ...] = SIP_PORTS,
                        hosts: tuple[str, ...] = ()) -> subprocess.Popen:
    """Start tcpdump on `interface`; read its stdout with pcap_stream.iter_pcap. The caller ends it."""
    check_capture(interface)
    return subprocess.Popen(local_capture_argv(interface, ports, hosts), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
