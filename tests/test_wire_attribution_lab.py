"""Issue 17, point 2, on the virtual lab with real UDP: a host on the site's LAN that is not a phone sends
REGISTERs for a phone's user to both of the phone's servers (the provider through the site router, whose capture
fleet reads over SSH, and the Kamailio gateway, whose siptrace HEP fleet reads), and answers each challenge with
made-up credentials. Before issue 17 that one exchange showed the phone `down(401)` on both servers; now the
phone stays registered and `fleet status --json` (and the table) counts the spoofer's messages as foreign, per
evidence source.

One lab (a free net). Marked `lab`; without Kamailio the gateway is the lab's own
registrar and only the router capture is checked.
"""
from __future__ import annotations

import json
import socket

import pytest
import yaml

from conftest import lab_spec, run_fleet, wait_until
from fleet.state.observe import REGISTERED
from fleet.state.store import Store
from hil import kamailio
from sipwire import message as sip

pytestmark = pytest.mark.lab
KAMAILIO_MISSING = kamailio.unavailable(siptrace=True)


@pytest.fixture(scope="module")
def lab(lab_factory, worker_factory):
    spec = lab_spec("attrib", phones=2)
    spec["syslog_registration_line"] = False     # the wire is the only per-server evidence
    spec["timing"]["dns_ttl"] = 300
    if not KAMAILIO_MISSING:
        spec["sites"][0]["gateway"] = "kamailio"
        spec["sites"][0]["collector"]["hep"] = f"127.0.0.1:{_free_port()}"
    lab = lab_factory(spec)
    worker_factory(lab.inventory)
    return lab


def _free_port() -> int:
    from soundpoint.redisboot import free_port
    return free_port()


def _spoof(server: tuple[str, int], user: str, spoofer: str) -> list[int]:
    """From `spoofer` (a host on the phones' LAN that is no phone): REGISTER `user` (expires=0: "remove the binding"), answer the challenge with made-up
    credentials; the status codes received."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((spoofer, 0))
    sock.settimeout(5)
    local, codes = sock.getsockname(), []
    call_id, tag = sip.new_call_id(local[0]), sip.new_tag()
    uri = f"sip:{server[0]}"
    try:
        for cseq in (1, 2):
            extra = [("Expires", "0")]
            if cseq == 2:
                extra.append(("Authorization", f'Digest username="{user}", realm="x", nonce="forged", uri="{uri}", '
                                               'response="00000000000000000000000000000000", algorithm=MD5'))
            req = sip.make_request("REGISTER", uri, local=local, from_uri=f"sip:{user}@{server[0]}",
                                   to_uri=f"sip:{user}@{server[0]}", call_id=call_id, cseq=cseq, from_tag=tag,
                                   contact=f"<sip:{user}@{local[0]}:{local[1]}>", extra=extra)
            sock.sendto(req.encode(), server)
            codes.append(sip.parse(sock.recv(65535)).status)
    finally:
        sock.close()
    return codes


def test_a_spoofed_register_from_the_lan_is_foreign_on_both_sources_and_changes_no_state(lab, redis_url, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")        # `fleet status`'s table unwrapped
    inv = yaml.safe_load(lab.inventory.read_text())
    site = inv["sites"][0]
    phones = {p["mac"]: p["params"]["reg.1.address"] for p in site["phones"]}
    gateway = (site["gateway"]["address"] if isinstance(site["gateway"], dict) else site["gateway"], 5060)
    sources = {"router capture"} | (set() if KAMAILIO_MISSING else {"hep"})
    store = Store(redis_url)

    def all_registered():
        states = {mac: store.phone_state(mac) for mac in phones}
        ok = all(st.servers.get(s, {}).get("state") == REGISTERED for st in states.values() for s in (1, 2))
        return states if ok else None

    wait_until(all_registered, 60, "every phone registered at both servers from the wire",
               state=lambda: {m: store.phone_state(m).to_dict()["servers"] for m in phones})
    victim, user = next(iter(phones.items()))
    spoofer = f"127.{lab.net + 100}.0.200"             # on the phones' own network (hil.lab.phone_ip's plan), not a phone
    provider_public = (f"127.{lab.net + 50}.0.10", 5060)   # the provider as the site's phones reach it (hil.lab.public_ip)
    told = {"provider": _spoof(provider_public, user, spoofer), "gateway": _spoof(gateway, user, spoofer)}
    assert told == {"provider": [401, 401], "gateway": [401, 401]}, told

    def status_rows() -> list[dict]:
        res = run_fleet(["status", "--json"], redis_url, timeout=60)
        assert res.returncode == 0, res.stderr[-2000:]
        # this lab's phones only: the suite's Redis also holds the rows of labs run before in this process
        return [r for r in json.loads(res.stdout) if r["mac"] in phones]

    def shown_or_down():
        """The collector has seen the spoof: it shows as foreign on every source, or (the old defect) as the
        phone's state."""
        state = store.phone_state(victim)
        if any(state.servers.get(s, {}).get("state") != REGISTERED for s in (1, 2)):
            return ("down", state)
        rows = status_rows()
        foreign = {f["source"]: f["foreign"] for f in rows[0]["evidence_foreign"]} if rows else {}
        return ("foreign", rows) if all(foreign.get(s, {}).get(spoofer, 0) >= 2 for s in sources) else None

    what, seen = wait_until(shown_or_down, 30, f"the spoof from {spoofer} counted as foreign by {sorted(sources)}", step=1.0,
                            state=lambda: (store.phone_state(victim).to_dict()["servers"],
                                           store.site_evidence([site["name"]])))
    assert what == "foreign", f"a LAN host's REGISTER set the phone's state: {seen.to_dict()}"
    assert all(r["evidence_foreign"] == seen[0]["evidence_foreign"] for r in seen), "per site: on every phone's row"
    state = store.phone_state(victim)
    for s in (1, 2):
        assert state.servers[s]["state"] == REGISTERED and state.servers[s].get("code") != 401, state.to_dict()
    table = run_fleet(["status"], redis_url, timeout=60)
    assert table.returncode == 0 and "foreign SIP" in table.stdout and spoofer in table.stdout, table.stdout[-3000:]
