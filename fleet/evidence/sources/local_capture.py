"""A capture on a local interface (a switch mirror port): the same pcap stream, from a local tcpdump.

Capturing needs CAP_NET_RAW, held either by the worker (root) or by tcpdump
itself (`setcap cap_net_raw,cap_net_admin+eip $(which tcpdump)`). Only tcpdump
can tell which: probing a raw socket from the worker would refuse a host
where tcpdump holds the capability. So the check starts tcpdump and waits for
the pcap header it writes once the capture is open; when tcpdump exits first,
its terse error becomes a CaptureUnavailable saying what to do.

A mirror port often keeps the 802.1Q tags, so the filter also takes tagged
frames (`pcap_stream.capture_filter(vlan=True)`).

`LocalCapture` is the `interface NAME` source of an inventory's `capture:`.
"""
from __future__ import annotations

import select
import shutil
import subprocess
import time

from fleet.config.inventory import Capture
from fleet.evidence.wire.pcap import SIP_PORTS, PcapFormatError, capture_filter, _interface
from fleet.evidence.sources.base import BACKOFF, SourceContext
from fleet.evidence.sources.capture import CaptureThread
from fleet.evidence.sources.targets import capture_ports

OPEN_TIMEOUT = 5.0       # how long tcpdump may take to open the interface and write its pcap header


class CaptureUnavailable(RuntimeError):
    """The local capture cannot run here; the text says why and what would fix it."""


def local_capture_argv(interface: str, ports: tuple[int, ...] = SIP_PORTS, hosts: tuple[str, ...] = ()) -> list[str]:
    return ["tcpdump", "-U", "-n", "-s", "0", "-w", "-", "-i", _interface(interface),
            capture_filter(ports, hosts, vlan=True)]


def _unavailable(interface: str, stderr: str) -> CaptureUnavailable:
    """tcpdump's exit message as what is missing and how to fix it."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "no message"
    low = stderr.lower()
    if "permission" in low or "operation not permitted" in low:
        return CaptureUnavailable(f"capturing on {interface} needs CAP_NET_RAW: run the worker as root or grant it to "
                                  f"tcpdump (setcap cap_net_raw,cap_net_admin+eip $(which tcpdump)); tcpdump said: {last}")
    if "no such device" in low or "doesn't exist" in low or "no suitable device" in low:
        return CaptureUnavailable(f"no network interface named {interface} on this host (tcpdump said: {last})")
    return CaptureUnavailable(f"tcpdump cannot capture on {interface}: {last}")


def start_local_capture(interface: str, ports: tuple[int, ...] = SIP_PORTS, hosts: tuple[str, ...] = (),
                        timeout: float = OPEN_TIMEOUT) -> subprocess.Popen:
    """Start tcpdump on `interface` and wait until the capture is open; read its stdout with
    pcap_stream.iter_pcap (the pcap header is still there to read). The caller ends it.

    Raises CaptureUnavailable when tcpdump is missing or exits before opening the capture (no capability, no
    such interface, a filter it refuses), with what tcpdump said."""
    argv = local_capture_argv(interface, ports, hosts)
    if shutil.which("tcpdump") is None:
        raise CaptureUnavailable("capture on a local interface needs tcpdump (Debian package tcpdump)")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + timeout
    while True:
        # tcpdump writes the pcap header (with -U, at once) when the capture is open: readable stdout means it runs
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, min(0.2, deadline - time.monotonic())))
        if ready:
            try:                # readable stdout is the header, or EOF from a tcpdump on its way out: tell which
                proc.wait(0.3)
            except subprocess.TimeoutExpired:
                return proc
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")
            proc.stdout.close()
            proc.stderr.close()
            raise _unavailable(interface, err)
        if time.monotonic() >= deadline:          # running but silent: it opened (some builds buffer the header)
            return proc


def check_capture(interface: str) -> None:
    """Raise CaptureUnavailable unless a capture on `interface` can start here: starts tcpdump (as the worker
    would) and stops it again, so a capability granted to tcpdump counts."""
    proc = start_local_capture(interface, timeout=OPEN_TIMEOUT)
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()


class LocalCapture(CaptureThread):
    """tcpdump on a local interface (a switch mirror port)."""

    label = "local capture"

    def run_once(self) -> None:
        self.targets.refresh(force=True)
        try:
            self.ports = capture_ports(self.targets.wire)
            proc = start_local_capture(self.capture.interface or "any", self.filter_ports())
        except CaptureUnavailable:
            self.failures = len(BACKOFF)       # not worth retrying quickly: it needs the host changed
            raise
        assert proc.stdout is not None
        fd = proc.stdout.fileno()

        def read(timeout: float) -> bytes | None:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                return b""
            data = proc.stdout.read1(65536)     # type: ignore[union-attr]
            return data or None

        try:
            if not self.pump(read) and not self.stopping.is_set():
                err = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace").strip().splitlines()
                raise PcapFormatError(f"tcpdump ended: {err[-1] if err else 'no message'}")
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except Exception:
                proc.kill()


async def start(ctx: SourceContext, capture: Capture) -> LocalCapture:
    """Start the capture on the local interface the inventory names."""
    source = LocalCapture(ctx.site, ctx.sink, capture, ctx.targets)
    source.start()
    return source
