"""A namespace lab: per site a LAN namespace (bridge, phones), a router namespace (real sshd, snmpd, Kamailio as
the on-site gateway, the kernel's forwarding, iptables and tc) and one WAN namespace for the provider (Kamailio,
DNS). The controller host joins each site LAN through a veth from the root namespace.

It serves the same control API and writes the same kind of inventory as the userspace lab, so `hil`, `fleet`
and the tests use both alike.
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from aiohttp import web

from .. import inventory_export, kamailio
from ..lab import Lab, phone_mac
from ..labfile import LabFile, SiteSpec
from ..phone_types import PhoneSpec
from . import daemons, plan
from .ns import NetnsError, Record, ip, ip_batch, run, teardown
from .plan import BOOT_HTTP_PORT, DNS_PORT, PHONE_HTTP_PORT, SIP_PORT, SNMP_PORT, SSH_PORT, SitePlan

WAN_IF = "wan0"


@dataclass
class NetnsSite:
    spec: SiteSpec
    k: int
    plan: SitePlan
    boot_dir: Path
    phones: list[PhoneSpec] = field(default_factory=list)
    boot_user: str = "PlcmSpIp"
    boot_password: str = ""
    proc: subprocess.Popen | None = None
    gateway_sock: Path | None = None

    @property
    def control(self) -> Path:
        return self.boot_dir.parent / f"site-{self.spec.name}.sock"


class NetnsLab(Lab):
    """Reuses the userspace lab's provisioning files (`server_params`, `_write_provisioning`); the rest is real."""

    def __init__(self, spec: LabFile, state_dir: Path) -> None:
        super().__init__(spec, state_dir)
        self.sites: list[NetnsSite] = []  # type: ignore[assignment]
        self.record = Record(state_dir, spec.net)
        self.provider_sock: Path | None = None
        self.dns_proc: subprocess.Popen | None = None

    # ------------------------------------------------------------ addresses
    def lan_ip(self, k: int, host: int) -> str:
        return SitePlan(self.net, k).lan_ip(host)

    def site_params(self, k: int, site: SiteSpec) -> dict[str, str]:
        """The phones report to the controller host's address on their LAN, at the ports the lab file names."""
        params = super().site_params(k, site)
        host = SitePlan(self.net, k).host_ip
        params["device.syslog.serverName"] = f"{host}:{site.collector.syslog.rpartition(':')[2]}"
        params["apps.telNotification.URL"] = f"http://{host}:{site.collector.events.rpartition(':')[2]}/events"
        return params

    # ------------------------------------------------------------ start
    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await asyncio.to_thread(teardown, self.net, self.state_dir)   # nothing half-built is left behind
            raise

    async def _start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        problem = daemons.preflight()
        if problem:
            raise NetnsError(problem)
        await asyncio.to_thread(teardown, self.net, self.state_dir)        # what a killed lab with this net left
        self.record.process(os.getpid())
        for k, site in enumerate(self.spec.sites):
            for i in range(site.phones.count):
                self.sip_users[inventory_export.extension(site, k, i)] = secrets.token_urlsafe(9)
        await asyncio.to_thread(self._build_wan)
        for k, site in enumerate(self.spec.sites):
            await asyncio.to_thread(self._build_site, k, site)
        await asyncio.to_thread(self._start_provider)
        known_hosts = []
        for k, site in enumerate(self.spec.sites):
            rt = await asyncio.to_thread(self._start_router, k, site)
            self.sites.append(rt)
            known_hosts.append(daemons.known_hosts_line(self.state_dir, rt.plan.router_lan, SSH_PORT))
        (self.state_dir / "known_hosts").write_text("\n".join(known_hosts) + "\n")
        for rt in self.sites:
            await self._start_phones(rt)
        await self._start_control()

    def _build_wan(self) -> None:
        wan = plan.wan_ns(self.net)
        self.record.namespace(wan)
        ip("addr", "add", f"{plan.provider_ip(self.net)}/32", "dev", "lo", ns=wan)
        ip("addr", "add", f"{plan.dns_ip(self.net)}/32", "dev", "lo", ns=wan)

    def _build_site(self, k: int, site: SiteSpec) -> None:
        p = SitePlan(self.net, k)
        lan, rtr, wan, host = plan.lan_ns(self.net, k), plan.router_ns(self.net, k), plan.wan_ns(self.net), plan.host_link(self.net, k)
        self.record.namespace(lan)
        self.record.namespace(rtr)
        ip("link", "add", "br0", "type", "bridge", ns=lan)
        ip("link", "set", "br0", "up", ns=lan)
        # the controller host's leg on the site LAN
        self.record.add("links", host)
        ip("link", "add", host, "type", "veth", "peer", "name", "host0", "netns", lan)
        ip("link", "set", "host0", "master", "br0", "up", ns=lan)
        ip("addr", "add", f"{p.host_ip}/24", "dev", host)
        ip("link", "set", host, "up")
        # the router: LAN leg on the bridge, WAN leg into the provider's namespace
        ip("link", "add", "lan0", "type", "veth", "peer", "name", f"r{k}", "netns", lan, ns=rtr)
        ip("link", "set", f"r{k}", "master", "br0", "up", ns=lan)
        ip("addr", "add", f"{p.router_lan}/24", "dev", "lan0", ns=rtr)
        ip("link", "set", "lan0", "up", ns=rtr)
        ip("link", "add", WAN_IF, "type", "veth", "peer", "name", f"site{k}", "netns", wan, ns=rtr)
        ip("addr", "add", f"{p.wan_ip}/30", "dev", WAN_IF, ns=rtr)
        ip("link", "set", WAN_IF, "up", ns=rtr)
        ip("addr", "add", f"{p.wan_peer}/30", "dev", f"site{k}", ns=wan)
        ip("link", "set", f"site{k}", "up", ns=wan)
        run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], ns=rtr)
        # the phones' and the boot server's addresses on the bridge
        ip_batch([f"addr add {p.boot_ip}/24 dev br0"] +
                 [f"addr add {p.phone_ip(i)}/24 dev br0" for i in range(site.phones.count)], lan)
        # routes: only between the lab's own ranges, never a default route
        ip("route", "add", str(plan.WAN_RANGE), "via", p.wan_peer, "dev", WAN_IF, ns=rtr)
        ip("route", "add", str(p.lan), "via", p.wan_ip, "dev", f"site{k}", ns=wan)
        ip("route", "add", str(plan.WAN_RANGE), "via", p.router_lan, "dev", "br0", ns=lan)
        if k == 0:
            # the controller host reaches the provider as a host on the first site's LAN would: through its router
            for addr in (plan.provider_ip(self.net), plan.dns_ip(self.net)):
                ip("route", "replace", f"{addr}/32", "via", p.router_lan, "dev", host)

    def _start_provider(self) -> None:
        wan = plan.wan_ns(self.net)
        self.dns_proc = subprocess.Popen(
            ["ip", "netns", "exec", wan, sys.executable, "-m", "hil.netns.dns_proc", plan.dns_ip(self.net), str(DNS_PORT),
             str(self.spec.timing.dns_ttl), f"{self.spec.provider.name}={plan.provider_ip(self.net)}"],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.record.process(self.dns_proc.pid)
        if self.dns_proc.stdout.readline().strip() != b"ready":  # type: ignore[union-attr]
            raise NetnsError("the provider's DNS did not start in the WAN namespace")
        self.provider_sock = daemons.start_kamailio(wan, self.state_dir, "provider", "the provider's registrar",
                                                    plan.provider_ip(self.net), SIP_PORT, self.spec.provider.realm,
                                                    self.sip_users, self.spec.provider.max_expires)

    def _start_router(self, k: int, site: SiteSpec) -> NetnsSite:
        p = SitePlan(self.net, k)
        rtr = plan.router_ns(self.net, k)
        daemons.start_sshd(rtr, self.state_dir, site.name, p.router_lan, SSH_PORT)
        daemons.start_snmpd(rtr, self.state_dir, site.name, p.router_lan, SNMP_PORT, self.snmp_community, "fleet",
                            self.snmp_auth, self.snmp_priv)
        boot_dir = self.state_dir / f"boot-{site.name}"
        boot_dir.mkdir(exist_ok=True)
        rt = NetnsSite(site, k, p, boot_dir, boot_password=secrets.token_urlsafe(9))
        rt.gateway_sock = daemons.start_kamailio(rtr, self.state_dir, f"gateway-{site.name}", "the on-site gateway",
                                                 p.router_lan, SIP_PORT, f"{site.name}.gateway", self.sip_users, 3600)
        self._write_provisioning(rt)  # type: ignore[arg-type]
        boot_url = f"http://{rt.boot_user}:{rt.boot_password}@{p.boot_ip}:{BOOT_HTTP_PORT}/" + (site.boot_master or "")
        for i in range(site.phones.count):
            rt.phones.append(PhoneSpec(mac=phone_mac(self.net, k, i), model=site.phones.models[i % len(site.phones.models)],
                                       ip=p.phone_ip(i), boot_url=boot_url, http_port=PHONE_HTTP_PORT,
                                       dns=(plan.dns_ip(self.net), DNS_PORT), admin_password=self.admin_password,
                                       boot_time=self.spec.timing.boot_time, boot_jitter=self.spec.timing.boot_jitter,
                                       http_latency=self.spec.timing.http_latency, fault=site.faults.get(i),
                                       family=self.spec.phone_family(k, i), fixed_retry=self.spec.fixed_retry,
                                       failover_behaviour=site.phones.behaviour_of(i)))
        return rt

    async def _start_phones(self, rt: NetnsSite) -> None:
        config = {"phones": [vars(s) for s in rt.phones], "http": self.spec.http, "control": str(rt.control),
                  "boot": {"root": str(rt.boot_dir), "host": rt.plan.boot_ip, "port": BOOT_HTTP_PORT,
                           "username": rt.boot_user, "password": rt.boot_password}}
        log = open(self.state_dir / f"site-{rt.spec.name}.log", "ab")
        rt.proc = subprocess.Popen(["ip", "netns", "exec", plan.lan_ns(self.net, rt.k), sys.executable, "-m", "hil.netns.site_proc"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        self.record.process(rt.proc.pid)
        rt.proc.stdin.write(json.dumps(config).encode() + b"\n")  # type: ignore[union-attr]
        rt.proc.stdin.close()  # type: ignore[union-attr]
        line = await asyncio.to_thread(rt.proc.stdout.readline)  # type: ignore[union-attr]
        if line.strip() != b"ready":
            raise NetnsError(f"the phones of site {rt.spec.name} did not start; see {self.state_dir / f'site-{rt.spec.name}.log'}")

    # ------------------------------------------------------------ inventory (hil.inventory_export)
    def inventory(self) -> tuple[dict, dict]:
        return inventory_export.export(self.spec, self.state_dir, SIP_PORT, [self._site_export(rt) for rt in self.sites],
                                       self._lab_secrets("root"))

    def _site_export(self, rt: NetnsSite) -> inventory_export.SiteExport:  # type: ignore[override]
        """A site as fleet reaches it: the router's LAN address, the WAN namespace's DNS, the controller host's own
        address on the LAN for the collector (at the ports the lab file names), the real sshd on SSH_PORT; the
        router namespace runs the real tcpdump on its lan0."""
        site, p = rt.spec, rt.plan
        return inventory_export.SiteExport(
            spec=site, k=rt.k, phones=rt.phones, gateway=p.router_lan, dns=f"{plan.dns_ip(self.net)}:{DNS_PORT}",
            syslog=f"{p.host_ip}:{site.collector.syslog.rpartition(':')[2]}",
            events=f"{p.host_ip}:{site.collector.events.rpartition(':')[2]}",
            boot_url=f"http://{p.boot_ip}:{BOOT_HTTP_PORT}/", boot_user=rt.boot_user, boot_password=rt.boot_password,
            router=inventory_export.router_entry(self.state_dir, p.router_lan, WAN_IF, site.name, SSH_PORT, DNS_PORT),
            params=self.site_params(rt.k, site))

    # ------------------------------------------------------------ ground truth and control
    async def _site_status(self, rt: NetnsSite) -> dict:
        conn = aiohttp.UnixConnector(path=str(rt.control))
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.get("http://site/status") as resp:
                return await resp.json()

    def router_state(self, rt: NetnsSite) -> dict:
        """The real router's WAN, read with the kernel's own tools (ground truth for tests)."""
        rtr = plan.router_ns(self.net, rt.k)
        link = json.loads(ip("-j", "link", "show", "dev", WAN_IF, ns=rtr) or "[]")
        flags = link[0]["flags"] if link else []
        return {"wan_state": {"name": WAN_IF, "admin_up": "UP" in flags,
                              "routes": [r for r in ip("route", "show", "dev", WAN_IF, ns=rtr, check=False).splitlines() if r],
                              "rules": run(["iptables", "-w", "-S", "FORWARD"], ns=rtr, check=False).splitlines()[1:],
                              "qdisc": run(["tc", "qdisc", "show", "dev", WAN_IF], ns=rtr, check=False).strip()}}

    async def full_status(self) -> dict:
        phones, truth = [], {}
        ready = True
        site_docs = []
        for rt in self.sites:
            doc = await self._site_status(rt)
            phones += doc["phones"]
            truth.update(doc["ground_truth"]["phones"])
            ready = ready and doc["ready"]
            site_docs.append({"name": rt.spec.name, "router": await asyncio.to_thread(self.router_state, rt),
                              "gateway": {"bindings": await asyncio.to_thread(kamailio.ul_dump, rt.gateway_sock, True)}})
        return {"lab": self.spec.name, "backend": "netns", "started_at": self.started_at, "now": time.time(),
                "ready": ready, "ground_truth": {"phones": truth}, "phones": phones,
                "provider": {"bindings": await asyncio.to_thread(kamailio.ul_dump, self.provider_sock, True)},
                "sites": site_docs}

    async def _start_control(self) -> None:
        self.stopping = asyncio.Event()
        app = web.Application()

        async def status(request: web.Request) -> web.Response:
            return web.json_response(await self.full_status())

        async def shutdown(request: web.Request) -> web.Response:
            self.stopping.set()
            return web.json_response({"ok": True})

        app.router.add_get("/status", status)
        app.router.add_post("/shutdown", shutdown)
        self.control = web.AppRunner(app, access_log=None)
        await self.control.setup()
        site = web.TCPSite(self.control, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        (self.state_dir / "control.json").write_text(json.dumps({"url": f"http://127.0.0.1:{port}", "pid": os.getpid(),
                                                                 "backend": "netns", "net": self.net}))

    async def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            docs = [await self._site_status(rt) for rt in self.sites]
            if all(d["ready"] for d in docs):
                return True
            await asyncio.sleep(0.2)
        return False

    async def stop(self) -> None:
        for rt in self.sites:
            if rt.proc and rt.proc.poll() is None:
                rt.proc.terminate()
        for rt in self.sites:
            if rt.proc:
                try:
                    await asyncio.to_thread(rt.proc.wait, 10)
                except subprocess.TimeoutExpired:
                    rt.proc.kill()
        if self.control:
            await self.control.cleanup()
        await asyncio.to_thread(teardown, self.net, self.state_dir)
        (self.state_dir / "control.json").unlink(missing_ok=True)


