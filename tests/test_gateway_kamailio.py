"""Gateway bindings from a real Kamailio cannot be steered by what a phone puts in its headers.

usrloc keeps a REGISTER's User-Agent as sent, folding included, and kamcmd prints it raw: with one line's
credentials a REGISTER could plant a binding for another phone (a folded User-Agent that carries kamcmd-shaped
lines) or blind the source for every phone (a User-Agent ending in "{"). fleet's Kamailio command reads JSON-RPC
where jsonrpcs is there and kamcmd per AoR otherwise; both forms are run here against a real Kamailio, through a
real /bin/sh, with REGISTERs sent over UDP with digest authentication. Skipped (with the reason) without Kamailio.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from fleet.evidence.sources import gateway_bindings as gb
from fleet.evidence.wire.attribution import WireTarget
from fleet.state.observe import REGISTERED, UNREGISTERED
from soundpoint.redisboot import free_port
from hil import kamailio as kam
from sipwire import digest

pytestmark = pytest.mark.lab
PASSWORD = "gw-Secret-7"
REALM = "gw.example"
ATTACKER = "1003"
# kamcmd's own indentation for a second AoR block of `ul.dump`, the fake contact of 1002 in it
_FAKE_BLOCK = ["\t\t\t}", "\t\t}", "\t}", "\tInfo: {", "\t\tAoR: 1002", "\t\tHashID: 1", "\t\tContacts: {",
               "\t\t\tContact: {", "\t\t\t\tAddress: sip:1002@10.9.9.9:5060", "\t\t\t\tExpires: 3000"]
FOLDED = {"crlf": "\r\n".join(["Evil/1.0", *_FAKE_BLOCK]), "lf": "\n".join(["Evil/1.0", *_FAKE_BLOCK])}


@pytest.fixture(scope="module")
def kamailio(tmp_path_factory):
    reason = kam.unavailable()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("gw") / "kamailio"
    with kam.Kamailio(kam.KamailioConfig("127.0.0.1", free_port(), REALM, {u: PASSWORD for u in
                                         ("1001", "1002", "1003")}, role="gateway under test", jsonrpc=True),
                      work) as server:
        tools = work.parent / "bin"
        tools.mkdir()
        (tools / "kamcmd").write_text(f'#!/bin/sh\nexec {shutil.which("kamcmd")} -s "unix:{server.sock}" "$@"\n')
        (tools / "kamcmd").chmod(0o755)
        server.tools = tools
        yield server


def register(server: kam.Kamailio, user: str, user_agent: str, expires: int = 300) -> tuple[str, int]:
    """REGISTER `user` from a fresh port with this exact User-Agent (answering the digest challenge); returns
    the contact's address. Asserts Kamailio's 200."""
    port = server.config.port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
        src = s.getsockname()[1]
        call_id, tag = uuid.uuid4().hex, uuid.uuid4().hex[:8]

        def request(cseq: int, auth: str = "") -> bytes:
            lines = [f"REGISTER sip:127.0.0.1:{port} SIP/2.0",
                     f"Via: SIP/2.0/UDP 127.0.0.1:{src};branch=z9hG4bK{uuid.uuid4().hex[:12]};rport",
                     "Max-Forwards: 70", f"From: <sip:{user}@{REALM}>;tag={tag}", f"To: <sip:{user}@{REALM}>",
                     f"Call-ID: {call_id}", f"CSeq: {cseq} REGISTER",
                     f"Contact: <sip:{user}@127.0.0.1:{src}>;expires={expires}", f"User-Agent: {user_agent}"]
            lines += [f"Authorization: {auth}"] if auth else []
            return ("\r\n".join(lines + ["Content-Length: 0", "", ""])).encode()

        s.sendto(request(1), ("127.0.0.1", port))
        answer = s.recv(65535).decode(errors="replace")
        if " 401 " in answer.split("\r\n", 1)[0]:
            challenge = next(line.split(":", 1)[1].strip() for line in answer.split("\r\n")
                             if line.lower().startswith("www-authenticate:"))
            auth = digest.authorization(digest.parse_challenge(challenge), username=user, password=PASSWORD,
                                        method="REGISTER", uri=f"sip:127.0.0.1:{port}")
            s.sendto(request(2, auth), ("127.0.0.1", port))
            answer = s.recv(65535).decode(errors="replace")
        assert answer.startswith("SIP/2.0 200 "), answer[:300]
    return "127.0.0.1", src


def unregister_all(server: kam.Kamailio) -> None:
    for user in ("1001", "1002", "1003"):
        server.kamcmd("ul.rm", "location", f"s:{user}")


def gateway_answer(server: kam.Kamailio, form: str) -> str:
    """fleet's Kamailio command, run in /bin/sh as on the gateway: over JSON-RPC, or kamcmd per AoR."""
    fifo = kam.rpc_fifo(server.sock) if form == "json" else server.workdir / "no-such.fifo"
    env = dict(os.environ, PATH=f"{server.tools}:{os.environ['PATH']}", KAMAILIO_RPC_FIFO=str(fifo),
               KAMAILIO_RPC_REPLY_DIR=str(server.sock.parent))
    res = subprocess.run(["sh", "-c", gb.platform("kamailio").command], env=env, capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0, res.stderr[-1000:]
    return res.stdout


def _target(user: str, phone_ip: str = "") -> WireTarget:
    return WireTarget(mac=f"0004f2{int(user):06d}", reg=1, server=1, address=("127.0.0.1", 5060), user=user,
                      phone_ip=phone_ip)


@pytest.fixture(params=["json", "per-aor"])
def form(request, kamailio):
    unregister_all(kamailio)
    yield request.param
    unregister_all(kamailio)


@pytest.mark.parametrize("fold", sorted(FOLDED))
def test_a_folded_user_agent_plants_no_binding_for_another_phone(kamailio, form, fold):
    """1003's own credentials, a User-Agent carrying a kamcmd-shaped AoR block for 1002: 1002 (not registered)
    must read as unbound, and no binding of 1002 at 10.9.9.9 may appear."""
    register(kamailio, ATTACKER, FOLDED[fold])
    register(kamailio, "1001", "Honest/1.0")
    answer = gateway_answer(kamailio, form)
    assert ("@jsonrpc" in answer) == (form == "json"), answer[:300]
    bindings = gb.platform("kamailio").parse(answer, time.time())
    assert not [b for b in bindings if b.user == "1002" or "10.9.9.9" in b.contact], bindings
    obs = {o.mac[-4:]: o.state for o in gb.observations(bindings, [_target("1001"), _target("1002")], time.time())}
    assert obs == {"1001": REGISTERED, "1002": UNREGISTERED}, obs


def test_a_user_agent_ending_in_a_brace_does_not_blind_the_source(kamailio, form):
    """One phone's "{" must not make the whole answer unreadable: every other phone is still read."""
    register(kamailio, "1002", "Brace/1.0 {")
    register(kamailio, "1001", "Honest/1.0")
    answer = gateway_answer(kamailio, form)
    bindings = gb.platform("kamailio").parse(answer, time.time())       # before: GatewayOutputError ("cut")
    obs = {o.mac[-4:]: o.state for o in gb.observations(bindings, [_target("1001"), _target("1002"),
                                                                   _target("1003")], time.time())}
    assert obs["1001"] == REGISTERED and obs["1003"] == UNREGISTERED, obs
    assert obs.get("1002") in (REGISTERED, None), obs      # its own record: read, or unreadable, never unbound


def test_bindings_read_by_both_forms_agree(kamailio, form):
    """The same registrar read over JSON-RPC and per AoR gives the same bindings (contact, expiry within the
    second between the two reads, user agent)."""
    register(kamailio, "1001", "PolycomVVX-VVX_410-UA/6.4.0.1234", expires=120)
    register(kamailio, "1002", "Polycom SoundPoint IP", expires=600)
    got = {}
    for how in ("json", "per-aor"):
        bindings = gb.platform("kamailio").parse(gateway_answer(kamailio, how), time.time())
        got[how] = sorted((b.user, b.contact, b.user_agent, b.active) for b in bindings)
        assert {b.user: b.expires_in for b in bindings}["1001"] in range(115, 121), bindings
    assert got["json"] == got["per-aor"] and len(got["json"]) == 2, got


def test_a_folded_user_agent_cannot_say_where_a_shared_lines_binding_came_from(kamailio, form):
    """Review of issue 17: phone X (127.0.0.1) registers the shared AoR 1001 with a User-Agent folded into
    `Received: sip:10.0.0.6:5060` (phone Y's address). Before the fix the per-AoR reading kept that first Received:
    Y registered, X unregistered. Now the contact is unreadable per AoR (a key twice); over JSON-RPC the value stays
    a value, and Kamailio recorded no sender (no nathelper: `Received: [not set]`): on a shared AoR the Contact
    text cannot say whose binding it is, so neither phone gets an observation (never Y registered, never X down)."""
    register(kamailio, "1001", "X\r\n\t\t\tReceived: sip:10.0.0.6:5060")
    bindings = gb.platform("kamailio").parse(gateway_answer(kamailio, form), time.time())
    targets = [WireTarget(mac=mac, reg=1, server=1, address=("127.0.0.1", 5060), user="1001", phone_ip=ip)
               for mac, ip in (("0004f200000a", "127.0.0.1"), ("0004f200000b", "10.0.0.6"))]
    obs = {o.mac: o.state for o in gb.observations(bindings, targets, time.time())}
    assert obs == {}, (obs, bindings)
    if form == "json":
        assert [b.source_ip for b in bindings] == [""] and bindings.senders_recorded, bindings
