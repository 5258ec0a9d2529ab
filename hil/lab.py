"""A running virtual lab: provider, DNS, and per site a router, gateway, boot server and phones.

Address plan (N = the lab file's `net`, k = site number):
  provider registrar 127.(N+40).0.10:5060, its DNS 127.(N+40).0.53:5353   (WAN side)
  site k router LAN 127.(N+k).0.1 (SSH :2222, gateway registrar :5060), boot server 127.(N+k).0.3
  site k public relay addresses 127.(N+50+k).0.10 (provider) and .53 (DNS): reachable only through the router
  site k phones 127.(N+100+k).a.b, powered by the site's PoE switch 127.(N+k).0.4 (SNMP :1161), port 1.(i+1)
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

import aiohttp
import asyncssh
from aiohttp import web

from soundpoint import bootfiles, families

from . import inventory_export, limits
from .bootserver import FtpBootServer, HttpBootServerProcess
from .dns_server import DnsServer
from .groundtruth import GroundTruth
from .kamailio import KamailioGateway
from .labfile import LabFile, SiteSpec
from .phone import VirtualPhone
from .phone_types import PhoneSpec, set_fault
from .poe_switch import PoeSwitchAgent, port_of
from .registrar import Registrar
from .router import Forward, UserspaceRouter
from .http_mux import SharedHttpListener
from .sip_mux import SharedSipSocket

SIP_PORT = 5060
DNS_PORT = 5353
SSH_PORT = 2222
SNMP_PORT = 1161
HEP_TAP_PORT = 9060     # on the router's LAN address: the Kamailio gateway's siptrace
BOOT_HTTP_PORT = 8080
BOOT_FTP_PORT = 2121
PHONE_HTTP_PORT = 8080


def phone_ip(net: int, k: int, i: int) -> str:
    return f"127.{net + 100 + k}.{i // 250}.{i % 250 + 2}"


def phone_mac(net: int, k: int, i: int) -> str:
    """Unique across labs (net) and sites (k); 0004 keeps a Polycom-like prefix."""
    return f"0004{net:02x}{k:02x}{i:04x}"


@dataclass
class SiteRuntime:
    spec: SiteSpec
    k: int
    router: UserspaceRouter
    gateway: Registrar | KamailioGateway
    boot_dir: Path
    boot_http: HttpBootServerProcess | None = None
    boot_ftp: FtpBootServer | None = None
    phones: list[VirtualPhone] = field(default_factory=list)
    boot_user: str = "PlcmSpIp"
    boot_password: str = ""
    switch: PoeSwitchAgent | None = None


class Lab:
    def __init__(self, spec: LabFile, state_dir: Path) -> None:
        self.spec = spec
        self.state_dir = state_dir
        self.truth = GroundTruth()
        self.sites: list[SiteRuntime] = []
        self.provider: Registrar | None = None
        self.dns: DnsServer | None = None
        self.sip_users: dict[str, str] = {}
        self.hep_keys: dict[str, str] = {}      # site -> its Kamailio gateway's HEP auth key (collector.hep_auth_key)
        self.admin_password = secrets.token_urlsafe(9)
        self.snmp_community = secrets.token_urlsafe(9)
        self.snmp_auth, self.snmp_priv = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
        self.snmp_agents: list = []
        self.switch_community = secrets.token_urlsafe(9)
        self.switch_auth, self.switch_priv = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
        self.http_session: aiohttp.ClientSession | None = None
        self.control: web.AppRunner | None = None
        self.started_at = time.time()
        self.stopping = asyncio.Event()
        self.fatal: str | None = None       # why the lab stopped itself (out of descriptors), None: it did not
        self.sip_socket: SharedSipSocket | None = None
        self.http_listener: SharedHttpListener | None = None
        self.may_raise_hard_limit = True    # False: act as an unprivileged user would (bench/lab_scale.py)
        self._unhook = lambda: None

    # ------------------------------------------------------------ addresses
    @property
    def net(self) -> int:
        """The lab's net: `hil up` has replaced `auto` by the net it claimed (hil.netlock) before the lab starts."""
        if self.spec.net == "auto":
            raise RuntimeError(f"lab {self.spec.name}: net `auto` is chosen by hil.netlock.claim before the lab starts")
        return self.spec.net

    def lan_ip(self, k: int, host: int) -> str:
        return f"127.{self.net + k}.0.{host}"

    def public_ip(self, k: int, host: int) -> str:
        return f"127.{self.net + 50 + k}.0.{host}"

    @property
    def provider_ip(self) -> str:
        return f"127.{self.net + 40}.0.10"

    @property
    def dns_ip(self) -> str:
        return f"127.{self.net + 40}.0.53"

    # ------------------------------------------------------------ start
    async def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        self.descriptors = limits.ensure(self.descriptor_budget(), self.may_raise_hard_limit)  # before opening any
        self._unhook = limits.on_exhausted(self.fail)
        limits.install_loop_hook(asyncio.get_running_loop())
        if self.spec.shared_sip:
            self.sip_socket = await SharedSipSocket.open()
            if self.spec.http:     # with it, one HTTP listener for every phone (hil.http_mux)
                self.http_listener = await SharedHttpListener.open()
        self.http_session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5),
                                                  connector=aiohttp.TCPConnector(limit=0))
        for k, site in enumerate(self.spec.sites):
            for i in range(site.phones.count):
                self.sip_users[inventory_export.extension(site, k, i)] = secrets.token_urlsafe(9)
        self.provider = Registrar("provider", self.provider_ip, SIP_PORT, self.spec.provider.realm, self.sip_users,
                                  max_expires=self.spec.provider.max_expires)
        await self.provider.start()
        # The provider's name resolves to the provider's public address; each site reaches it via its router relay.
        # One shared public address for all sites keeps the DNS zone the same everywhere.
        located = {self.spec.provider.name: SIP_PORT} if self.spec.provider.naptr_srv else {}
        self.dns = await DnsServer.start(self.dns_ip, DNS_PORT, {}, ttl=self.spec.timing.dns_ttl, located=located)
        client_key = self._key("router_client_key")
        host_key = self._key("router_host_key")
        (self.state_dir / "router_authorized_keys").write_text(client_key.export_public_key().decode())
        known_hosts = []
        for k, site in enumerate(self.spec.sites):
            rt = await self._start_site(k, site, host_key)
            self.sites.append(rt)
            known_hosts.append(f"[{rt.router.lan_ip}]:{SSH_PORT} {host_key.export_public_key().decode().strip()}")
        (self.state_dir / "known_hosts").write_text("\n".join(known_hosts) + "\n")
        for rt in self.sites:
            for phone in rt.phones:
                await phone.start(http=self.spec.http)
        await self._start_control()

    def descriptor_budget(self) -> limits.Budget:
        """What this lab file needs open at once (hil.limits.estimate)."""
        return limits.estimate(self.spec, shared_sip=self.spec.shared_sip, shared_http=self.spec.shared_sip)

    def fail(self, reason: str) -> None:
        """Stop the lab now, with `reason` (hil.limits: out of descriptors). Running on without the sockets it
        needs would answer wrongly; `hil up` and `hil status` show the reason (the state directory's `fatal`)."""
        if self.fatal is None:
            self.fatal = reason
            try:
                (self.state_dir / "fatal").write_text(reason + "\n")
            except OSError:
                pass
        self.stopping.set()

    def _key(self, name: str) -> asyncssh.SSHKey:
        """Keys survive `hil down`/`hil up`, so a known_hosts entry stays valid (a stable host key)."""
        path = self.state_dir / name
        if path.exists():
            return asyncssh.read_private_key(str(path))
        key = asyncssh.generate_private_key("ssh-ed25519")
        key.write_private_key(str(path))
        os.chmod(path, 0o600)
        return key

    async def _start_site(self, k: int, site: SiteSpec, host_key: asyncssh.SSHKey) -> SiteRuntime:
        lan, public = self.lan_ip(k, 1), self.public_ip(k, 10)
        wan_ip = f"127.{self.net + 40}.{k + 1}.1"
        router = UserspaceRouter(f"router-{site.name}", lan, wan_ip, [
            Forward((public, SIP_PORT), (self.provider_ip, SIP_PORT)),
            Forward((self.public_ip(k, 53), DNS_PORT), (self.dns_ip, DNS_PORT), questions=True),
        ])
        self.dns.views[wan_ip] = {self.spec.provider.name.lower(): public}  # type: ignore[union-attr]
        await router.start_relay()
        gateway = await self._start_gateway(k, site, router)
        tools = self.state_dir / "router-tools"
        router.tools(tools)
        ctl = self.state_dir / f"router-{site.name}.sock"
        await router.start_control(ctl)
        await router.start_ssh(lan, SSH_PORT, self.state_dir / "router_host_key", self.state_dir / "router_authorized_keys",
                               tools, ctl, username="admin")
        from .snmp_agent import SnmpAgent

        self.snmp_agents.append(SnmpAgent(router, lan, SNMP_PORT, self.snmp_community, "fleet", self.snmp_auth, self.snmp_priv))
        boot_dir = self.state_dir / f"boot-{site.name}"
        boot_dir.mkdir(exist_ok=True)
        rt = SiteRuntime(site, k, router, gateway, boot_dir, boot_password=secrets.token_urlsafe(9))
        rt.boot_http = HttpBootServerProcess(boot_dir, self.lan_ip(k, 3), BOOT_HTTP_PORT, rt.boot_user, rt.boot_password)
        await rt.boot_http.start()
        rt.boot_ftp = FtpBootServer(boot_dir, self.lan_ip(k, 3), BOOT_FTP_PORT, rt.boot_user, rt.boot_password)
        rt.boot_ftp.start()
        self._write_provisioning(rt)
        boot_url = (f"http://{rt.boot_user}:{rt.boot_password}@{self.lan_ip(k, 3)}:{BOOT_HTTP_PORT}/" if site.boot_protocol == "http"
                    else f"ftp://{rt.boot_user}:{rt.boot_password}@{self.lan_ip(k, 3)}:{BOOT_FTP_PORT}/")
        boot_url += site.boot_master or ""    # the boot-server address names the master file (ftp://host/campus.cfg)
        for i in range(site.phones.count):
            spec = PhoneSpec(mac=phone_mac(self.net, k, i), model=site.phones.models[i % len(site.phones.models)],
                             ip=phone_ip(self.net, k, i), boot_url=boot_url,
                             http_port=self.http_listener.port if self.http_listener is not None else PHONE_HTTP_PORT,
                             dns=(self.public_ip(k, 53), DNS_PORT), admin_password=self.admin_password,
                             boot_time=self.spec.timing.boot_time, boot_jitter=self.spec.timing.boot_jitter,
                             http_latency=self.spec.timing.http_latency, late_failover_s=self.spec.timing.late_failover_s,
                             fault=site.faults.get(i), family=self.spec.phone_family(k, i),
                             fixed_retry=self.spec.fixed_retry, firmware_version=self.spec.phone_version(k, i),
                             failover_behaviour=site.phones.behaviour_of(i),
                             source_validation=site.phones.source_validation,
                             sip_port=self.sip_socket.port if self.sip_socket is not None else SIP_PORT)
            phone = VirtualPhone(spec, self.truth, self.http_session, sip_socket=self.sip_socket,
                                 http_listener=self.http_listener)
            phone.syslog_registration_line = self.spec.syslog_registration_line
            rt.phones.append(phone)
        rt.switch = PoeSwitchAgent(f"poe-{site.name}", rt.phones, self.lan_ip(k, 4), SNMP_PORT, self.switch_community,
                                   "fleet", self.switch_auth, self.switch_priv)
        self.snmp_agents.append(rt.switch)
        return rt

    async def _start_gateway(self, k: int, site: SiteSpec, router: UserspaceRouter) -> Registrar | KamailioGateway:
        """The site's gateway registrar on the router's LAN address: the lab's own (its SIP shown to the router's
        captures, as tcpdump on the LAN side would see it) or Kamailio (`kamcmd` reachable over the router's SSH,
        siptrace sending HEP to the site's collector)."""
        lan, name, realm = self.lan_ip(k, 1), f"gateway-{site.name}", f"{site.name}.gateway"
        if site.gateway == "kamailio":
            collector = None
            if site.collector.hep:
                host, _, port = site.collector.hep.rpartition(":")
                collector = (host, int(port))
            # siptrace goes to the router, which shows the SIP to its captures and passes the HEP on to the collector
            await router.start_hep_tap((lan, HEP_TAP_PORT), collector)
            # as the phones' outbound proxy it relays the provider's requests to the router's relay address for the
            # provider (what the phones' DNS view resolves its name to), so a WAN cut stops the relayed leg too
            upstream = (self.public_ip(k, 10), SIP_PORT) if site.outbound_proxy == "gateway" else None
            if site.collector.hep_auth_key:
                self.hep_keys[site.name] = secrets.token_urlsafe(18)
            kam = KamailioGateway(name, lan, SIP_PORT, realm, self.sip_users, self.state_dir / f"kamailio-{site.name}",
                                  (lan, HEP_TAP_PORT), upstream=upstream, hep_auth_key=self.hep_keys.get(site.name))
            await kam.start()
            router.kamailio_ctl = kam.ctl
            return kam
        gateway = Registrar(name, lan, SIP_PORT, realm, self.sip_users)
        await gateway.start()
        router.tap_endpoint(gateway.endpoint)  # type: ignore[arg-type]
        return gateway

    # ------------------------------------------------------------ provisioning files and inventory
    def server_params(self, k: int, site: SiteSpec) -> dict[str, str]:
        params: dict[str, str] = {}
        for y, srv in enumerate(site.servers, start=1):
            address = {"provider": self.spec.provider.name, "gateway": self.lan_ip(k, 1)}.get(srv.address, srv.address)
            p = f"reg.1.server.{y}."
            params.update({p + "address": address, p + "port": str(srv.port), p + "expires": str(srv.expires),
                           p + "expires.overlap": str(srv.overlap), p + "register": str(srv.register_),
                           p + "retryTimeOut": str(srv.retry_timeout_ms), p + "retryMaxCount": str(srv.retry_max_count),
                           })
            if any(families.get(f).failover_controls for f in self.spec.site_families(k)):
                # UC Software 4.1.6+ only (the others ignore them): the retry backoff and, for a fallback,
                # failOver.reRegisterOn (the phone's default 0 would never register there)
                params.update({p + "registerRetry.baseTimeOut": f"{self.spec.timing.retry_interval:g}",
                               p + "registerRetry.maxTimeOut": f"{self.spec.retry_max:g}"})
                if y > 1:
                    params[p + "failOver.reRegisterOn"] = str(srv.re_register)
        if site.outbound_proxy == "gateway":
            params.update(self.proxy_params(k, site))
        return params

    def proxy_params(self, k: int, site: SiteSpec) -> dict[str, str]:
        """`outbound_proxy: gateway`: the gateway's address as the line's outbound proxy (reg.1.outboundProxy.* where
        every family at the site has it, else the phone-wide voIpProt.SIP.outboundProxy.*), and
        useOutboundProxy=0 for the gateway's own server where a family has that switch (the proxy is the gateway:
        its requests go there either way, and no fallback depends on the proxy, TB 5844)."""
        fams = [families.get(f) for f in self.spec.site_families(k)]
        prefix = ("reg.1.outboundProxy." if all(f.lookup("reg.1.outboundProxy.address") for f in fams)
                  else "voIpProt.SIP.outboundProxy.")
        params = {prefix + "address": self.lan_ip(k, 1), prefix + "port": str(SIP_PORT)}
        if any(f.lookup("reg.1.server.1.useOutboundProxy") for f in fams):
            for y, srv in enumerate(site.servers, start=1):
                if srv.address == "gateway":
                    params[f"reg.1.server.{y}.useOutboundProxy"] = "0"
        return params

    def site_params(self, k: int, site: SiteSpec) -> dict[str, str]:
        params = self.server_params(k, site)
        events_host, _, events_port = site.collector.events.partition(":")
        params.update({
            "device.syslog.serverName": site.collector.syslog,
            "apps.telNotification.URL": f"http://{events_host}:{events_port}/events",
            "apps.telNotification.lineRegistrationEvent": "1",
            # device.* (syslog) takes effect only with device.set=1 and the parameter's own .set=1 (polycom.md "More
            # facts"; wazo-platform/wazo-provd-plugins:plugins/wazo-polycom/common/templates/base.tpl sets both)
            "device.set": "1",
            "device.syslog.serverName.set": "1",
            # requestor mode: state polling answers in the HTTP response (corpus polling-callstate-requestor-*)
            "apps.statePolling.responseMode": "0",
            "voIpProt.SIP.specialEvent.checkSync.alwaysReboot": "1",
            "log.upload.period": f"{self.spec.timing.log_upload_period:g}",
        })
        params.update({k2: str(v) for k2, v in site.params.items()})
        return params

    def _write_provisioning(self, rt: SiteRuntime) -> None:
        site = rt.spec
        (rt.boot_dir / "site.cfg").write_text(_config_xml(self.site_params(rt.k, site)))
        for i in range(site.phones.count):
            mac = phone_mac(self.net, rt.k, i)
            ext = inventory_export.extension(site, rt.k, i)
            own = {k2: str(v) for k2, v in site.phones.params_of.get(i, {}).items()}
            (rt.boot_dir / f"{mac}-reg.cfg").write_text(_config_xml({
                **own, "reg.1.address": ext, "reg.1.label": ext, "reg.1.auth.userId": ext,
                "reg.1.auth.password": self.sip_users[ext]}))
            if not site.boot_master:
                (rt.boot_dir / f"{mac}.cfg").write_text(_master_xml(f"{mac}-reg.cfg, site.cfg"))
        if site.boot_master:   # one master for every phone, named in their boot-server address (SIP 3.1 admin guide)
            (rt.boot_dir / site.boot_master).write_text(_master_xml(f"{bootfiles.MAC_MACRO}-reg.cfg, site.cfg"))

    def inventory(self) -> tuple[dict, dict]:
        """The inventory that `fleet` uses to reach this lab, and the secrets file it points to (hil.inventory_export)."""
        return inventory_export.export(self.spec, self.state_dir, SIP_PORT, [self._site_export(rt) for rt in self.sites],
                                       self._lab_secrets())

    def _lab_secrets(self, router_username: str = "admin") -> inventory_export.LabSecrets:
        """This lab's credentials; the namespace lab's router takes `root` (its real sshd)."""
        return inventory_export.LabSecrets(
            admin_password=self.admin_password, router_username=router_username,
            router_key_file=self.state_dir / "router_client_key", snmp_community=self.snmp_community,
            snmp_auth=self.snmp_auth, snmp_priv=self.snmp_priv, sip_users=self.sip_users, hep_keys=self.hep_keys,
            switch_community=self.switch_community, switch_auth=self.switch_auth, switch_priv=self.switch_priv)

    def _site_export(self, rt: SiteRuntime) -> inventory_export.SiteExport:
        """A site as fleet reaches it: the router's LAN address, the public relay to the lab DNS, the collector the
        lab file names, the boot server over its protocol, the userspace router's SSH on SSH_PORT."""
        site = rt.spec
        boot = (f"http://{self.lan_ip(rt.k, 3)}:{BOOT_HTTP_PORT}/" if site.boot_protocol == "http"
                else f"ftp://{self.lan_ip(rt.k, 3)}:{BOOT_FTP_PORT}/")
        return inventory_export.SiteExport(
            spec=site, k=rt.k, phones=[phone.spec for phone in rt.phones], gateway=self.lan_ip(rt.k, 1),
            dns=f"{self.public_ip(rt.k, 53)}:{DNS_PORT}", syslog=site.collector.syslog, events=site.collector.events,
            boot_url=boot, boot_user=rt.boot_user, boot_password=rt.boot_password,
            router=inventory_export.router_entry(self.state_dir, rt.router.lan_ip, rt.router.wan.name, site.name,
                                                 SSH_PORT, DNS_PORT),
            params=self.site_params(rt.k, site),
            switch=inventory_export.switch_entry(rt.switch.name, self.lan_ip(rt.k, 4), SNMP_PORT) if rt.switch else None,
            poe_ports=tuple(port_of(i) for i in range(len(rt.phones))))

    def write_inventory(self, path: Path) -> None:
        inventory_export.write(path, self.state_dir, *self.inventory())

    # ------------------------------------------------------------ control and status
    def status(self, since: float = 0.0) -> dict:
        return {"lab": self.spec.name, "started_at": self.started_at, "now": time.time(), "fatal": self.fatal,
                "ground_truth": self.truth.snapshot(),
                "phones": [p.summary() for rt in self.sites for p in rt.phones],
                "provider": self.provider.summary(since) if self.provider else None,
                "dns": ({"asked": [{"qtype": t, "name": n, "count": c} for (t, n), c in sorted(self.dns.asked.items())]}
                        if self.dns else None),
                "sites": [{"name": rt.spec.name, "router": rt.router.summary(), "gateway": rt.gateway.summary(since),
                           **({"switch": rt.switch.summary()} if rt.switch else {})} for rt in self.sites]}

    def find_phone(self, mac: str) -> VirtualPhone | None:
        return next((p for rt in self.sites for p in rt.phones if p.mac == mac.lower()), None)

    async def _start_control(self) -> None:
        app = web.Application()

        async def status(request: web.Request) -> web.Response:
            since = float(request.query.get("since", "0") or 0)
            return web.json_response(self.status(since))

        async def shutdown(request: web.Request) -> web.Response:
            self.stopping.set()
            return web.json_response({"ok": True})

        async def fault(request: web.Request) -> web.Response:
            """Lab-only: make a phone misbehave from its next boot (never-return, wrong-server, bad-boot-once)."""
            answer, status = set_fault([p for rt in self.sites for p in rt.phones], await request.json())
            return web.json_response(answer, status=status)

        async def call(request: web.Request) -> web.Response:
            """Lab-only: a phone places a call and holds it ({"mac": M, "number": "2000", "hold": seconds <= 600}),
            as its user would, so a test can find it in a call; the answer comes once the INVITE is sent."""
            body = await request.json()
            phone = self.find_phone(str(body.get("mac", "")))
            hold, number = body.get("hold", 60), str(body.get("number", "2000"))
            if phone is None or not isinstance(hold, (int, float)) or not 0 < hold <= 600 or not number.isdigit():
                return web.json_response({"error": "need a known mac, a number of digits and 0 < hold <= 600"}, status=400)
            phone._spawn(phone.place_call(number, hold=float(hold)))
            return web.json_response({"ok": True})

        async def hang_up(request: web.Request) -> web.Response:
            """Lab-only: end the call a phone holds ({"mac": M})."""
            phone = self.find_phone(str((await request.json()).get("mac", "")))
            if phone is None:
                return web.json_response({"error": "no such phone"}, status=404)
            phone.hang_up.set()
            return web.json_response({"ok": True, "in_call": phone.in_call})

        async def router_fault(request: web.Request) -> web.Response:
            """Lab-only: make the site router's commands slow ({"site": S, "slow": {"link set": 2.0}}), so a test can
            land a second task inside a cut, as a loaded router would let it."""
            body = await request.json()
            rt = next((r for r in self.sites if r.spec.name == body.get("site")), None)
            slow = body.get("slow") or {}
            if rt is None or not isinstance(slow, dict) or not all(isinstance(v, (int, float)) and 0 <= v <= 30 for v in slow.values()):
                return web.json_response({"error": "need a known site and slow: {substring: seconds <= 30}"}, status=400)
            rt.router.slow = {str(k): float(v) for k, v in slow.items()}
            return web.json_response({"ok": True})

        app.router.add_get("/status", status)
        app.router.add_post("/shutdown", shutdown)
        app.router.add_post("/fault", fault)
        app.router.add_post("/router-fault", router_fault)
        app.router.add_post("/call", call)
        app.router.add_post("/hang-up", hang_up)
        self.control = web.AppRunner(app, access_log=None)
        await self.control.setup()
        site = web.TCPSite(self.control, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        (self.state_dir / "control.json").write_text(json.dumps({"url": f"http://127.0.0.1:{port}", "pid": os.getpid(),
                                                                          "net": self.net}))

    async def stop(self) -> None:
        for rt in self.sites:
            # all at once: one by one, each stop waits a turn of a loop that still runs thousands of phones
            await asyncio.gather(*(p.stop() for p in rt.phones), return_exceptions=True)
            await rt.router.stop()
            rt.gateway.stop()
            if rt.boot_http:
                await rt.boot_http.stop()
            if rt.boot_ftp:
                rt.boot_ftp.stop()
        for agent in self.snmp_agents:
            agent.stop()
        if self.provider:
            self.provider.stop()
        if self.dns:
            self.dns.stop()
        if self.control:
            await self.control.cleanup()
        if self.http_session:
            await self.http_session.close()
        if self.sip_socket is not None:
            self.sip_socket.close()
        if self.http_listener is not None:
            await self.http_listener.close()
        self._unhook()
        (self.state_dir / "control.json").unlink(missing_ok=True)

    async def wait_ready(self, timeout: float) -> bool:
        """Ready when every phone that should register has a working server (faulty phones excepted), all at one
        moment. Each pass looks again only at the phones the last one found not ready, and the whole lab once
        those are (at 10,000 phones a pass over every phone five times a second was a tenth of the lab's CPU)."""
        def not_ready(phones) -> list:
            return [p for p in phones
                    if p.spec.fault is None and not (p.booted.is_set() and all(r.working for r in p.regs))]
        deadline = time.monotonic() + timeout
        every = [p for rt in self.sites for p in rt.phones]
        pending = not_ready(every)
        while time.monotonic() < deadline and not self.fatal:
            if not pending:
                pending = not_ready(every)
                if not pending:
                    return True
            await asyncio.sleep(0.2)
            pending = not_ready(pending)
        return False


def _master_xml(config_files: str) -> str:
    """A master file in the SIP 2.x/3.x template's shape (admin guide appendix A), listing `config_files`."""
    return (f'<?xml version="1.0" standalone="yes"?>\n<APPLICATION APP_FILE_PATH="sip.ld" '
            f'CONFIG_FILES="{config_files}" MISC_FILES="" LOG_FILE_DIRECTORY="" OVERRIDES_DIRECTORY=""/>\n')


def _config_xml(params: dict[str, str]) -> str:
    attrs = "\n  ".join(f"{k}={quoteattr(str(v))}" for k, v in sorted(params.items()))
    return f'<?xml version="1.0" standalone="yes"?>\n<polycomConfig>\n <reg\n  {attrs}/>\n</polycomConfig>\n'
