"""The virtual phone's web server speaks only corpus shapes (issue 16, review point 3).

Its digest challenges are the corpus entries `polling-auth-digest-challenge` (state polling) and
`rest-auth-challenge-digest` (REST), rendered with only the nonce replaced; while it reboots it gives no HTTP
answer at all (the connection is reset), where it used to answer a `503 booting` page no source shows.
"""
from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace

import aiohttp
import pytest

from hil.phone_power import Power
from hil.phone_web import WebApi
from sipwire import digest
from soundpoint import conformance


class _WebOnly(Power, WebApi):
    """The web server of a UC Software 5.8 phone (powered, not hung), with nothing else of a virtual phone behind it."""

    hung = False
    powered = True
    http_listener = None

    def __init__(self, port: int, booted: bool) -> None:
        self.booted = asyncio.Event()
        if booted:
            self.booted.set()
        self.spec = SimpleNamespace(ip="127.0.0.1", http_port=port, http_latency=0, admin_user="Polycom",
                                    admin_password="lab-Secret-9")
        self.params: dict[str, str] = {}
        self.model = {"rest": True, "firmware": "5.8.0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _get(booted: bool, path: str):
    phone = _WebOnly(_free_port(), booted)
    await phone._start_http()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            async with session.get(f"http://127.0.0.1:{phone.spec.http_port}{path}") as resp:
                return resp.status, dict(resp.headers), await resp.text()
    finally:
        await phone.http_runner.cleanup()


@pytest.mark.parametrize("path,entry_id", [
    ("/polling/callstateHandler", "polling-auth-digest-challenge"),
    ("/polling/deviceHandler", "polling-auth-digest-challenge"),
    ("/api/v1/mgmt/device/info", "rest-auth-challenge-digest"),
    ("/api/v2/webCallControl/callStatus", "rest-auth-challenge-digest"),
])
def test_a_request_without_a_login_gets_its_corpus_challenge(path, entry_id):
    entry = conformance.get(entry_id)
    status, headers, body = asyncio.run(_get(True, path))
    wanted = digest.parse_challenge(entry.answer["headers"]["WWW-Authenticate"])
    got = digest.parse_challenge(headers["WWW-Authenticate"])
    assert status == entry.status_code and body == entry.body, (status, body)
    assert {k: v for k, v in got.items() if k != "nonce"} == {k: v for k, v in wanted.items() if k != "nonce"}, got
    assert headers["WWW-Authenticate"].split(" ", 1)[0] == "Digest"
    assert got["nonce"] != wanted["nonce"], "a fresh nonce per challenge, not the entry's"


@pytest.mark.parametrize("path", ["/polling/callstateHandler", "/api/v1/mgmt/device/info"])
def test_a_rebooting_phone_resets_the_connection_instead_of_answering(path):
    with pytest.raises(aiohttp.ClientError) as caught:
        asyncio.run(_get(False, path))
    assert not isinstance(caught.value, aiohttp.ClientResponseError), caught.value


def test_the_challenge_follows_its_entry_not_a_copy_in_the_lab(monkeypatch):
    """Correcting an entry (say after a look at a real phone) corrects the lab: nothing of the header is the lab's."""
    import dataclasses

    real_get = conformance.get

    def corrected(entry_id: str):
        entry = real_get(entry_id)
        if entry_id != "rest-auth-challenge-digest":
            return entry
        header = 'Digest realm="Polycom UC Software", nonce="00aa", qop="auth", algorithm=MD5'
        return dataclasses.replace(entry, answer={**entry.answer, "headers": {"WWW-Authenticate": header}})

    monkeypatch.setattr(conformance, "get", corrected)
    _, headers, _ = asyncio.run(_get(True, "/api/v1/mgmt/device/info"))
    got = digest.parse_challenge(headers["WWW-Authenticate"])
    assert (got["realm"], got.get("algorithm")) == ("Polycom UC Software", "MD5"), headers
