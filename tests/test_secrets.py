"""Secrets stay where they belong (issue 8, item 3).

Planted secrets (a secrets file and an environment variable) must reach only
the parameters the catalogue marks secret: everywhere else they are refused
when the inventory or playbook is loaded, and again by the worker's resolver
when a forged plan in Redis asks for them. Dry runs and stored plans show
`***`; URLs lose their credentials in every message; phones get digest unless
the inventory says basic; a finished rollout leaves no backups behind.
"""
from __future__ import annotations

import base64
import json
import re
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from conftest import BIN, free_port, lab_spec, run_fleet, start_lab, wait_until
from fleet.config import inventory
from fleet.phoneconf import polycom
from soundpoint import catalogue
from fleet.phoneconf import secrets as secret_params
from fleet.config.inventory import Credentials, Phone
from soundpoint.redact import redact, redact_url
from fleet.rollout.playbook import RolloutPlaybook
from fleet.rollout.plan import config_hash, plan
from soundpoint.yamlfile import FileError

SIP_SECRET = "planted-SIP-secret-4711"
ROUTER_SECRET = "planted-ROUTER-secret-0815"
ENV_SECRET = "planted-ENV-secret-9999"
ADMIN_SECRET = "planted-ADMIN-secret-1234"
PLANTED = (SIP_SECRET, ROUTER_SECRET, ENV_SECRET, ADMIN_SECRET)


def _env() -> dict:
    """The CLI's environment with the planted variable, and no Redis: a dry run needs none."""
    env = {k: v for k, v in os.environ.items() if k != "FLEET_REDIS_URL"}
    return env | {"SITE_TEST_PLANTED": ENV_SECRET, "COLUMNS": "400"}


def write_inventory(tmp: Path, phone_params: dict | None = None, site_params: dict | None = None,
                    fleet_params: dict | None = None, address: str = "127.0.0.2", http_port: int = 80,
                    boot: str | None = None, http_auth: str | None = None, site: str = "hq") -> Path:
    (tmp / "secrets.yml").write_text(yaml.safe_dump({
        "admin": {"username": "Polycom", "password": ADMIN_SECRET},
        "router": {"username": "root", "password": ROUTER_SECRET},
        "sip_1001": {"password": SIP_SECRET},
    }))
    (tmp / "secrets.yml").chmod(0o600)
    boot_dir = tmp / "boot"
    boot_dir.mkdir(exist_ok=True)
    phone = {"mac": "0004f2000001", "model": "SoundPoint IP 650", "address": address, "http_port": http_port,
             "credentials": "admin",
             "params": {"reg.1.address": "1001", "reg.1.auth.password": "secret:sip_1001"} | (phone_params or {})}
    if http_auth:
        phone["http_auth"] = http_auth
    doc = {"name": "t", "secrets_file": "secrets.yml", "firmware_family": "uc-4.0",
           "params": fleet_params or {},
           "sites": [{"name": site, "gateway": "127.0.0.1", "boot_server": {"url": boot or f"file://{boot_dir}/"},
                      "router": {"driver": "linux_ssh", "address": "127.0.0.1", "credentials": "router",
                                 "wan_interface": "wan0"},
                      "params": {"reg.1.server.1.address": "voip.example", "reg.1.server.1.expires": "60"}
                      | (site_params or {}),
                      "phones": [phone]}]}
    path = tmp / "inventory.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def write_playbook(tmp: Path, params: dict, **extra) -> Path:
    path = tmp / f"pb-{time.time_ns()}.yml"
    path.write_text(yaml.safe_dump({"kind": "rollout", "name": "t", "params": params,
                                    "strategy": {"canary": 0, "wave_size": 1}} | extra, sort_keys=False))
    return path


def fleet_cli(args: list[str], env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "fleet", *args], env=env or _env(), capture_output=True, text=True, timeout=timeout)


def _examples() -> list[str]:
    """One concrete name per catalogue entry (x = 1, y = 1)."""
    out = []
    for rx, _ in polycom.CATALOGUE:
        name = re.sub(r"\(\?P<[a-z]>[^)]*\)", "1", rx.pattern.strip("^$")).replace("\\", "")
        assert catalogue.lookup(name) is not None, name
        out.append(name)
    return out


NON_SECRET = [n for n in _examples() if not catalogue.lookup(n).secret]
SECRET = [n for n in _examples() if catalogue.lookup(n).secret]
REFS = ("secret:router", "secret:sip_1001", "secret:admin", "env:SITE_TEST_PLANTED")


# ------------------------------------------------------------------ catalogue and load-time rejection
def test_catalogue_marks_the_password_parameters_secret():
    assert {"reg.1.auth.password", "apps.statePolling.password", "apps.push.password", "device.auth.localAdminPassword",
            "device.auth.localUserPassword", "device.prov.password"} <= set(SECRET)
    assert "reg.1.label" in NON_SECRET and "reg.1.displayName" in NON_SECRET and "reg.1.auth.userId" in NON_SECRET


@pytest.mark.parametrize("name", NON_SECRET)
def test_no_non_secret_parameter_accepts_a_reference_anywhere(name, tmp_path):
    """Every non-secret parameter, every layer of the inventory and the playbook: refused when loaded."""
    for ref in REFS:
        for layer in ("phone_params", "site_params", "fleet_params"):
            path = write_inventory(tmp_path, **{layer: {name: ref}})
            with pytest.raises(FileError) as exc:
                inventory.load(path)
            msg = str(exc.value)
            line = next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if f"{name}: " in ln and ref in ln)
            assert msg.startswith(f"{path}:{line}: ") and f"params.{name}: " in msg and "only in secret parameters" in msg, msg
            assert not any(s in msg for s in PLANTED)
        with pytest.raises(ValueError, match="only in secret parameters"):
            RolloutPlaybook.model_validate({"kind": "rollout", "name": "t", "params": {name: ref}})


@pytest.mark.parametrize("name", SECRET)
def test_secret_parameters_take_references_not_values(name, tmp_path):
    path = write_inventory(tmp_path, phone_params={name: "hunter2-literal"})
    with pytest.raises(FileError, match=f"{name.replace('.', '[.]')}: a secret parameter takes a reference") as exc:
        inventory.load(path)
    assert "hunter2" not in str(exc.value)
    for ref in REFS:
        inventory.load(write_inventory(tmp_path, phone_params={name: ref}))


def test_cli_rejects_a_reference_in_a_label_with_file_line_and_parameter(tmp_path):
    inv = write_inventory(tmp_path)
    pb = write_playbook(tmp_path, {"reg.1.server.1.expires": 120, "reg.1.label": "env:SITE_TEST_PLANTED"})
    res = fleet_cli(["rollout", "run", str(pb), "--inventory", str(inv), "--dry-run"])
    assert res.returncode == 2, res.stdout + res.stderr
    text = " ".join(res.stderr.split())   # Rich wraps long lines
    line = next(i for i, ln in enumerate(pb.read_text().splitlines(), 1) if "reg.1.label" in ln)
    assert f"{pb}:{line}: params.reg.1.label: secret:/env: references are allowed only in secret parameters" in text, text
    assert "Traceback" not in res.stderr and not any(s in res.stdout + res.stderr for s in PLANTED)
    # the other example: the expiry that crashed the dry run
    pb = write_playbook(tmp_path, {"reg.1.server.1.expires": "secret:router"})
    res = fleet_cli(["rollout", "run", str(pb), "--inventory", str(inv), "--dry-run"])
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    bad_inv = write_inventory(tmp_path, phone_params={"reg.1.displayName": "secret:router"})
    res = fleet_cli(["rollout", "run", str(write_playbook(tmp_path, {"reg.1.server.1.expires": 120})),
                     "--inventory", str(bad_inv), "--dry-run"])
    text = " ".join(res.stderr.split())
    line = next(i for i, ln in enumerate(bad_inv.read_text().splitlines(), 1) if "reg.1.displayName" in ln)
    assert res.returncode == 2 and f"{bad_inv}:{line}: sites[0].phones[0].params.reg.1.displayName:" in text, text


def test_interpolation_cannot_smuggle_a_reference_into_a_parameter(tmp_path):
    """`{site.gateway}` expands after loading: the planner checks the expanded value again."""
    path = write_inventory(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["sites"][0]["gateway"] = "secret:router"
    path.write_text(yaml.safe_dump(doc))
    # the inventory itself refuses such a gateway ...
    with pytest.raises(FileError, match="gateway address 'secret:router' is neither"):
        inventory.load(path)
    # ... and should one get through (a model built in code), the planner checks the expanded value again
    doc["sites"][0]["gateway"] = "127.0.0.1"
    path.write_text(yaml.safe_dump(doc))
    inv = inventory.load(path)
    site = inv.sites[0]
    inv = inv.model_copy(update={"sites": [site.model_copy(update={"gateway": "secret:router"})]})
    pb = RolloutPlaybook.model_validate({"kind": "rollout", "name": "t", "params": {"reg.1.label": "{site.gateway}"}})
    from fleet.rollout.plan import PlanError

    with pytest.raises(PlanError, match="reg.1.label: secret:/env: references are allowed only in secret parameters"):
        plan(inv, pb, "r1")


# ------------------------------------------------------------------ the worker's resolver
@pytest.mark.parametrize("name", NON_SECRET)
def test_worker_resolver_refuses_references_in_non_secret_parameters(name, tmp_path, monkeypatch):
    monkeypatch.setenv("SITE_TEST_PLANTED", ENV_SECRET)
    secrets = inventory.Secrets(inventory.load(write_inventory(tmp_path)))
    for ref in REFS:
        with pytest.raises(secret_params.SecretPlacementError, match="refusing") as exc:
            secrets.resolve_param(name, ref)
        assert not any(s in str(exc.value) for s in PLANTED)
        # a forged plan: the reference in the masked parameters, or smuggled in as a "secret reference"
        for masked, refs in (({name: ref}, {}), ({name: "***"}, {name: ref})):
            with pytest.raises(secret_params.SecretPlacementError):
                secret_params.resolve(masked, refs, secrets.resolve_param)


def test_worker_resolver_resolves_secret_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("SITE_TEST_PLANTED", ENV_SECRET)
    secrets = inventory.Secrets(inventory.load(write_inventory(tmp_path)))
    masked = {"reg.1.address": "1001", "reg.1.auth.password": "***", "apps.statePolling.password": "***"}
    refs = {"reg.1.auth.password": "secret:sip_1001", "apps.statePolling.password": "env:SITE_TEST_PLANTED"}
    assert secret_params.resolve(masked, refs, secrets.resolve_param) == {
        "reg.1.address": "1001", "reg.1.auth.password": SIP_SECRET, "apps.statePolling.password": ENV_SECRET}
    with pytest.raises(secret_params.SecretPlacementError, match="no reference"):
        secret_params.resolve(masked, {}, secrets.resolve_param)


# ------------------------------------------------------------------ dry run and the stored plan
def test_dry_run_shows_stars_for_secrets_and_hashes_follow_references(tmp_path):
    inv_path = write_inventory(tmp_path)
    pb = write_playbook(tmp_path, {"reg.1.auth.password": "env:SITE_TEST_PLANTED", "apps.statePolling.password":
                                   "secret:admin", "reg.1.server.1.expires": 120})
    for extra in ([], ["--json"]):
        res = fleet_cli(["rollout", "run", str(pb), "--inventory", str(inv_path), "--dry-run", *extra])
        assert res.returncode == 0, res.stderr
        out = res.stdout + res.stderr
        assert "***" in out and not any(s in out for s in PLANTED)
        assert "secret:" not in out and "env:" not in out, "not even the references are shown"
    doc = json.loads(res.stdout)
    diff = doc["phones"][0]["diff"]
    assert diff["reg.1.auth.password"] == ["***", "***"] and diff["apps.statePolling.password"] == [None, "***"]
    assert diff["reg.1.server.1.expires"] == ["60", "120"]
    text = fleet_cli(["rollout", "run", str(pb), "--inventory", str(inv_path), "--dry-run"]).stdout
    assert "0004f2000001 reg.1.auth.password: *** -> ***" in " ".join(text.split())
    # the hash is taken over the references: changing only a reference changes it
    inv = inventory.load(inv_path)
    hashes = {ref: plan(inv, RolloutPlaybook.model_validate({"kind": "rollout", "name": "t", "params": {
        "reg.1.auth.password": ref}}), "r").phones[0].config_hash for ref in ("secret:sip_1001", "secret:admin")}
    assert len(set(hashes.values())) == 2
    p = plan(inv, RolloutPlaybook.model_validate({"kind": "rollout", "name": "t", "params": {"reg.1.label": "x"}}), "r")
    assert p.phones[0].config_hash == config_hash(p.phones[0].pushed_params())


def _redis_dump(url: str) -> str:
    import redis as redis_mod

    r = redis_mod.Redis.from_url(url, decode_responses=True)
    parts = []
    for key in r.scan_iter("*"):
        kind = r.type(key)
        if kind == "hash":
            parts.append(json.dumps(r.hgetall(key)))
        elif kind == "string":
            parts.append(r.get(key) or "")
        elif kind == "list":
            parts.extend(r.lrange(key, 0, -1))
        elif kind == "stream":
            parts.extend(json.dumps(f) for _, f in r.xrange(key))
    return "\n".join(parts)


def test_the_plan_in_redis_holds_no_secret_value(tmp_path, redis_url, monkeypatch):
    from fleet.rollout.driver import create
    from fleet.state.store import RolloutStore, Store

    monkeypatch.setenv("SITE_TEST_PLANTED", ENV_SECRET)
    inv_path = write_inventory(tmp_path)
    pb = write_playbook(tmp_path, {"reg.1.auth.password": "env:SITE_TEST_PLANTED", "reg.1.server.1.expires": 90})
    store = Store(redis_url)
    rid, *_ = create(str(pb), str(inv_path), store)
    meta = RolloutStore(store).get(rid)
    entry = meta["plan"]["phones"][0]
    assert entry["params"]["reg.1.auth.password"] == "***" and entry["diff"]["reg.1.auth.password"] == ["***", "***"]
    assert entry["secret_refs"] == {"reg.1.auth.password": "env:SITE_TEST_PLANTED"}
    dump = _redis_dump(redis_url)
    assert rid in dump and not any(s in dump for s in PLANTED)


# ------------------------------------------------------------------ URLs in messages
def test_urls_lose_their_credentials():
    assert redact_url("redis://:Pa55@127.0.0.1:6379/0") == "redis://***@127.0.0.1:6379/0"
    assert redact("STOR via ftp://PlcmSpIp:PlcmSpIp@10.0.0.3/boot failed") == "STOR via ftp://***@10.0.0.3/boot failed"
    assert redact("http://admin:a/b#c@h:80/x and https://h/y") == "http://***@h:80/x and https://h/y"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0" and redact_url(None) == ""
    from fleet.drivers.errors import DeviceRefused
    from fleet.drivers.publish import open_publisher

    assert "Pa55" not in str(DeviceRefused("boot server ftp://u:Pa55@h/", "ftp://u:Pa55@h/x.cfg: refused"))
    with pytest.raises(ValueError) as exc:
        open_publisher("gopher://u:Pa55@h/", Credentials())
    assert "Pa55" not in str(exc.value) and "gopher://***@h/" in str(exc.value)


def test_cannot_reach_redis_hides_the_password():
    env = _env() | {"FLEET_REDIS_URL": f"redis://fleet:Redis-Pa55-word@127.0.0.1:{free_port()}/0"}
    res = fleet_cli(["rollout", "status", "nothing"], env=env)
    assert res.returncode == 3 and "cannot reach Redis at redis://***@127.0.0.1" in res.stderr, res.stderr
    assert "Redis-Pa55-word" not in res.stdout + res.stderr


# ------------------------------------------------------------------ digest first, basic only when configured
class SpoofedPhone:
    """A tiny HTTP server on its own loopback address that records every Authorization header and answers 401."""

    def __init__(self, host: str, scheme: str) -> None:
        self.headers: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                outer.headers.append(self.headers.get("Authorization", ""))
                self.send_response(401)
                challenge = ('Digest realm="PolycomSPIP", nonce="abc123", qop="auth"' if scheme == "digest"
                             else 'Basic realm="PolycomSPIP"')
                self.send_header("WWW-Authenticate", challenge)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _any

            def log_message(self, *a) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def basic_passwords(self) -> list[str]:
        out = []
        for h in self.headers:
            if h.lower().startswith("basic "):
                out.append(base64.b64decode(h.split(" ", 1)[1]).decode(errors="replace"))
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _ask_every_way(phone: Phone, creds: Credentials) -> None:
    """Every path that authenticates to a phone: REST driver, call-state check, collector poller."""
    import asyncio

    from fleet.evidence.sources.poller import Poller
    from fleet.drivers.control.polling import polling_in_call
    from fleet.drivers.control.rest import RestPhone
    from fleet.drivers.errors import DriverError

    for call in (lambda: RestPhone(phone, creds, timeout=3).restart(), lambda: RestPhone(phone, creds, timeout=3).uptime(),
                 lambda: polling_in_call(phone, creds)):
        with pytest.raises(DriverError) as exc:
            call()
        assert "401" in str(exc.value) and creds.password not in str(exc.value)

    async def poll():
        async with Poller(concurrency=2, timeout=3) as poller:
            return await poller.poll([(phone, creds), (phone.model_copy(update={"model": "VVX 410"}), creds)])

    results = asyncio.run(poll())
    assert all(not r.ok and "authentication" in r.error for r in results), results


@pytest.mark.parametrize("challenge", ["digest", "basic"])
def test_spoofed_phone_never_gets_the_password_in_basic_form_unless_configured(challenge):
    """`http_auth: digest` keeps Basic off every path; unset, only REST sends Basic (Poly's documented method:
    user Polycom, conformance rest-auth-challenge-basic) and state polling stays digest; `basic` is Basic."""
    creds = Credentials(username="Polycom", password=ADMIN_SECRET)
    spoof = SpoofedPhone("127.0.0.87", challenge)
    try:
        phone = Phone(mac="0004f2000001", model="SoundPoint IP 650", address="127.0.0.87", http_port=spoof.port,
                      credentials="admin", http_auth="digest")
        _ask_every_way(phone, creds)
        assert spoof.headers, "the clients reached the spoofed phone"
        assert spoof.basic_passwords() == [], "no Basic header with http_auth: digest"
        assert not any(ADMIN_SECRET in h for h in spoof.headers)
        if challenge == "digest":
            assert any(h.startswith("Digest ") for h in spoof.headers), "the digest challenge was answered"
        # unset: state polling still never sends Basic; REST (UC Software 5) sends it first, as Poly documents
        spoof.headers.clear()
        from fleet.drivers.control.polling import polling_in_call
        from fleet.drivers.errors import DriverError

        with pytest.raises(DriverError):
            polling_in_call(phone.model_copy(update={"http_auth": None}), creds)
        assert spoof.basic_passwords() == [], "state polling never sends Basic unless configured"
        # the inventory says this phone needs basic: then every path gets basic
        spoof.headers.clear()
        _ask_every_way(phone.model_copy(update={"http_auth": "basic"}), creds)
        assert spoof.basic_passwords() and set(spoof.basic_passwords()) == {f"Polycom:{ADMIN_SECRET}"}
    finally:
        spoof.close()


def test_requests_to_phones_never_go_through_a_proxy_the_environment_names(monkeypatch):
    """HTTP_PROXY in the operator's shell must not carry a phone's admin login to a proxy: REST, state polling,
    the web UI and the collector's poller all go straight to the phone (fleet.drivers.lan_http)."""
    from fleet.drivers.control import web_ui
    from fleet.drivers.errors import DriverError

    creds = Credentials(username="Polycom", password=ADMIN_SECRET)
    spoof, proxy = SpoofedPhone("127.0.0.87", "digest"), SpoofedPhone("127.0.0.88", "basic")
    try:
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.88:{proxy.port}")
        phone = Phone(mac="0004f2000001", model="SoundPoint IP 650", address="127.0.0.87", http_port=spoof.port,
                      credentials="admin")
        _ask_every_way(phone, creds)
        with pytest.raises(DriverError):
            web_ui.reboot(phone, creds, timeout=3)
        assert proxy.headers == [], f"the proxy was sent {len(proxy.headers)} requests"
        assert len(spoof.headers) >= 5, spoof.headers
    finally:
        spoof.close()
        proxy.close()


def test_http_auth_layers_fleet_site_phone(tmp_path):
    path = write_inventory(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["http_auth"] = "basic"
    doc["sites"][0]["phones"].append({"mac": "0004f2000002", "model": "VVX 410", "address": "127.0.0.3",
                                      "credentials": "admin", "http_auth": "digest", "firmware_family": "uc-5.x"})
    path.write_text(yaml.safe_dump(doc))
    assert [p.http_auth for p in inventory.load(path).sites[0].phones] == ["basic", "digest"]
    doc["http_auth"] = None
    doc["sites"][0]["http_auth"] = "basic"
    path.write_text(yaml.safe_dump(doc))
    assert [p.http_auth for p in inventory.load(path).sites[0].phones] == ["basic", "digest"]
    doc["sites"][0]["http_auth"] = "plain"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(FileError, match="http_auth"):
        inventory.load(path)


# ------------------------------------------------------------------ a real worker and a forged plan in Redis
def _wait_state(rs, rid: str, mac: str, states: tuple[str, ...], timeout: float = 40) -> dict:
    return wait_until(lambda: (st := rs.phone(rid, mac)).get("state") in states and st, timeout,
                      f"phone {mac} in {states}", state=lambda: rs.phone(rid, mac))


def test_worker_refuses_a_forged_plan_and_asks_a_spoofed_phone_only_with_digest(tmp_path, redis_url, worker_factory):
    """A plan written into Redis by someone else: the worker resolves no secret into a label, publishes nothing."""
    from celery import Celery

    from fleet.state.store import RolloutStore, Store

    spoof = SpoofedPhone("127.0.0.88", "basic")
    try:
        # a site of its own: the module's lab worker serves site.hq
        inv_path = write_inventory(tmp_path, address="127.0.0.88", http_port=spoof.port, site="forged")
        worker = worker_factory(inv_path, "forged", collect=False)
        rs = RolloutStore(Store(redis_url))
        client = Celery(broker=redis_url, backend=redis_url)
        forged = {
            "label": ({"reg.1.label": "secret:router", "reg.1.address": "1001"}, {}),
            "smuggled": ({"reg.1.label": "***", "reg.1.address": "1001"}, {"reg.1.label": "env:SITE_TEST_PLANTED"}),
        }
        for what, (params, refs) in forged.items():
            rid = f"forged-{what}-{time.time_ns()}"
            entry = {"mac": "0004f2000001", "site": "forged", "model": "SoundPoint IP 650", "params": params, "diff": {},
                     "config_hash": f"{abs(hash(what)):016x}"[:16], "secret_refs": refs}
            rs.create(rid, "forged", {"rollout": rid, "phones": [entry], "waves": [["0004f2000001"]],
                                      "max_unavailable": {"forged": 1}, "budget_total": 0, "budget_per_site": None}, {})
            client.send_task("fleet.rollout_push", args=[rid, "0004f2000001", 1], queue="site.forged")
            st = _wait_state(rs, rid, "0004f2000001", ("failed",))
            # the worker's plan check refuses it before the resolver would
            assert st["error"].startswith("refused: ") and "secret parameter" in st["error"], st
        client.close()
        assert list((tmp_path / "boot").iterdir()) == [], "nothing was published"
        assert spoof.basic_passwords() == [], "no Basic header reached the spoofed phone"
        assert not any(s in _redis_dump(redis_url) for s in PLANTED)
        worker.stop()
        assert not any(s in worker.log.read_text() for s in PLANTED)
    finally:
        spoof.close()


# ------------------------------------------------------------------ backups of a finished rollout
@pytest.fixture(scope="module")
def small_lab(tmp_path_factory, worker_factory):
    lab = start_lab(tmp_path_factory.mktemp("secrets-lab"), lab_spec("secrets", phones=4))
    try:
        lab.worker = worker_factory(lab.inventory, "hq")
        yield lab
    finally:
        lab.down()


def _backups(lab) -> list[str]:
    return sorted(f.name for f in (lab.state / "boot-hq").iterdir() if ".before-" in f.name)


def test_finished_rollout_leaves_no_backups_unless_asked_to_keep_them(small_lab, redis_url, tmp_path):
    from fleet.state.store import RolloutStore, Store

    rs = RolloutStore(Store(redis_url))
    strategy = {"canary": 1, "wave_size": 3, "max_unavailable": 2, "progress_deadline": 120}
    verify = {"registered_to": [1], "within": 30}
    assert _backups(small_lab) == []
    # kept when the playbook asks for it
    pb = write_playbook(tmp_path, {"reg.1.server.1.expires": 14}, strategy=strategy, verify=verify, keep_backups=True)
    res = run_fleet(["rollout", "run", str(pb), "--inventory", str(small_lab.inventory), "--json"], redis_url, timeout=200)
    kept = json.loads(res.stdout)
    assert kept["status"] == "done", res.stderr[-2000:]
    kept_files = _backups(small_lab)
    assert kept_files and all(f.endswith(f".before-{kept['id']}") for f in kept_files), kept_files
    # by default: removed by the site's worker once the rollout is done
    pb = write_playbook(tmp_path, {"reg.1.server.1.expires": 16}, strategy=strategy, verify=verify)
    res = run_fleet(["rollout", "run", str(pb), "--inventory", str(small_lab.inventory), "--json"], redis_url, timeout=200)
    out = json.loads(res.stdout)
    assert out["status"] == "done" and out["counts"] == {"total": 4, "verified": 4}, res.stderr[-2000:]
    marks = [v for rec in rs.phones(out["id"], rs.macs(out["id"]), full=True).values() for f, v in rec.items()
             if f.startswith("backed_up:")]
    assert "yes" in marks, f"the rollout backed files up before changing them: {marks}"
    wait_until(lambda: not any(out["id"] in f for f in _backups(small_lab)), 30, "the rollout's backups removed",
               step=0.2, state=lambda: _backups(small_lab))
    assert _backups(small_lab) == kept_files, f"left behind: {_backups(small_lab)}"
    # recorded once the deletions are done and the publisher closed: a moment after the files are gone
    wait_until(lambda: rs.get_field(out["id"], "backups_removed:hq"), 30, "the worker's record of the removal",
               step=0.1, state=lambda: rs.get(out["id"]).get("status"))


def test_digest_is_enough_for_the_virtual_phones(small_lab):
    """Digest by default does not cost the real path anything: the lab's phones answer polls and REST with it."""
    import asyncio

    from fleet.evidence.sources.poller import Poller
    from fleet.drivers.control.polling import polling_in_call
    from fleet.drivers.control.rest import RestPhone

    inv = inventory.load(small_lab.inventory)
    secrets = inventory.Secrets(inv)
    # unset, REST sends Basic first (Poly's method); `http_auth: digest` must still reach every lab phone
    targets = [(p.model_copy(update={"http_auth": "digest"}), secrets.credentials(p.credentials))
               for p in inv.sites[0].phones]

    async def poll():
        async with Poller(concurrency=4, timeout=5) as poller:
            return await poller.poll(targets) + await poller.poll(targets)   # the second round reuses challenges

    results = asyncio.run(poll())
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    for phone, creds in targets:
        assert polling_in_call(phone, creds) is False
        if phone.family.rest:
            assert RestPhone(phone, creds).uptime() >= 0


def test_a_plan_stored_before_masking_still_renders_its_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("SITE_TEST_PLANTED", ENV_SECRET)
    secrets = inventory.Secrets(inventory.load(write_inventory(tmp_path)))
    assert secret_params.resolve({"reg.1.auth.password": "secret:sip_1001", "reg.1.label": "x"}, {},
                                 secrets.resolve_param) == {"reg.1.auth.password": SIP_SECRET, "reg.1.label": "x"}


def test_backup_removal_spares_failed_rollbacks_and_refuses_odd_ids(tmp_path):
    from fleet.rollout import backups as rollout_backups
    from fleet.drivers.publish import open_publisher

    boot = tmp_path / "b"
    boot.mkdir()
    pub = open_publisher(f"file://{boot}/", Credentials())
    for mac in ("0004f2000001", "0004f2000002", "0004f2000003"):
        for name in (f"{mac}.cfg", f"{mac}-fleet.cfg"):
            (boot / f"{name}.before-r1").write_text("old")
    (boot / "0004f2000001.cfg.before-r2").write_text("another rollout's")
    phones = {"0004f2000001": {"state": "verified", "backed_up:0004f2000001.cfg": "yes",
                               "backed_up:0004f2000001-fleet.cfg": "absent"},
              "0004f2000002": {"state": "failed", "backing_up:0004f2000002-fleet.cfg": "1"},
              "0004f2000003": {"state": "rollback_failed", "backed_up:0004f2000003.cfg": "yes"}}
    assert rollout_backups.remove(pub, "r1", phones) == (2, 1)
    assert sorted(f.name for f in boot.iterdir()) == [
        "0004f2000001-fleet.cfg.before-r1", "0004f2000001.cfg.before-r2", "0004f2000002.cfg.before-r1",
        "0004f2000003-fleet.cfg.before-r1", "0004f2000003.cfg.before-r1"]
    for rid in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(ValueError, match="not a plain name"):
            rollout_backups.remove(pub, rid, phones)


def test_rollouts_leave_no_secret_in_redis_or_the_worker_log(small_lab, redis_url, tmp_path):
    """After real rollouts that rendered SIP passwords into the phones' files: none of them is in Redis or a log."""
    res = run_fleet(["rollout", "run", str(write_playbook(tmp_path, {"reg.1.server.1.expires": 18},
                                                           verify={"registered_to": [1], "within": 30})),
                     "--inventory", str(small_lab.inventory), "--json"], redis_url, timeout=200)
    assert json.loads(res.stdout)["status"] == "done", res.stderr[-2000:]
    planted = [v["password"] for v in yaml.safe_load((small_lab.state / "secrets.yml").read_text()).values()
               if isinstance(v, dict) and len(str(v.get("password", ""))) >= 6]
    boot = "".join(f.read_text() for f in (small_lab.state / "boot-hq").glob("*-fleet.cfg"))
    assert any(p in boot for p in planted), "the SIP passwords were rendered into the phones' files"
    texts = {"redis": _redis_dump(redis_url), "worker log": small_lab.worker.log.read_text()}
    for name, text in texts.items():
        leaked = [p for p in planted if p in text]
        assert not leaked, f"{len(leaked)} secrets in the {name}"


def test_worker_never_puts_an_infrastructure_login_or_fleet_setting_into_a_phone_parameter(tmp_path, monkeypatch):
    """A plan forged in Redis may name any secret in a secret parameter: not the router's or boot server's login."""
    doc = yaml.safe_load(Path(write_inventory(tmp_path)).read_text())
    site = doc["sites"][0]
    site["router"] = {"driver": "linux_ssh", "address": "127.0.0.1", "credentials": "router_login", "wan_interface": "wan0"}
    site["boot_server"]["credentials"] = "boot_login"
    path = tmp_path / "with-router.yml"
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("FLEET_REDIS_URL", "redis://:hunter2hunter2@127.0.0.1:1/0")
    secrets = inventory.Secrets(inventory.load(path))
    for ref in ("secret:router_login", "secret:boot_login", "env:FLEET_REDIS_URL"):
        with pytest.raises(secret_params.SecretPlacementError, match="refusing") as exc:
            secrets.resolve_param("reg.1.auth.password", ref)
        assert "hunter2" not in str(exc.value)
