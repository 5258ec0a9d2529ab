"""The `router` capture: tcpdump on the site router, its pcap stdout streamed over the router's SSH.

The command is the router platform's (fleet.config.platforms: per driver, per capture flavour such as vyos's
sudo), filled in and quoted by fleet.evidence.wire.pcap.capture_command.
"""
from __future__ import annotations

from fleet.config import platforms
from fleet.config.inventory import Capture, Credentials, Site
from fleet.drivers.router import connect
from fleet.evidence.wire.pcap import PcapFormatError, capture_command
from fleet.evidence.sources.base import Sink, SourceContext
from fleet.evidence.sources.capture import CaptureThread
from fleet.evidence.sources.targets import Targets, capture_ports


class RouterCapture(CaptureThread):
    """tcpdump on the site router, its pcap stdout over the router's SSH."""

    label = "router capture"

    def __init__(self, site: Site, sink: Sink, capture: Capture, targets: Targets, credentials: Credentials) -> None:
        super().__init__(site, sink, capture, targets)
        self.credentials = credentials

    def command(self) -> str:
        assert self.site.router is not None
        template = platforms.get(self.site.router.driver).capture_template(self.capture.platform)
        return capture_command(template, self.capture.interface or "any", self.filter_ports())

    def run_once(self) -> None:
        assert self.site.router is not None
        self.targets.refresh(force=True)
        command = self.command()
        self.ports = capture_ports(self.targets.wire)
        router = connect(self.site.router, self.credentials)
        try:
            stream = router.stream(command, what="capture")     # type: ignore[attr-defined]
            try:
                if not self.pump(stream.read) and not self.stopping.is_set():
                    raise PcapFormatError(stream.ended())
            finally:
                stream.close()
        finally:
            router.close()


async def start(ctx: SourceContext, capture: Capture) -> RouterCapture:
    """Start the site's router capture (it needs the router's credentials)."""
    source = RouterCapture(ctx.site, ctx.sink, capture, ctx.targets, ctx.router_credentials("a router capture"))
    source.start()
    return source
