"""A worker thread keeps its site's boot-server publisher from one push to the next (fleet.drivers.publish.kept):
one connection and one Digest nonce for consecutive pushes, never one that failed, idled too long or belongs to
another thread. Against the lab's real HTTP boot server."""
from __future__ import annotations

import threading

import pytest

from fleet.config.inventory import Credentials
from fleet.drivers.errors import DeviceRefused
from fleet.drivers.publish import kept
from hil.bootserver import HttpBootServer

from test_publishers import _http_server

CREDS = Credentials("PlcmSpIp", "pw-123")


@pytest.fixture(autouse=True)
def _fresh_thread_cache():
    kept.close_all()
    yield
    kept.close_all()


def _push(url: str, name: str, data: bytes):
    """What a push does with its publisher: a read, then writes."""
    with kept.lent(url, CREDS) as pub:
        pub.read(name)
        pub.write(name, data)
        pub.write(name + ".bak", data)
        return pub


@pytest.fixture
def peers(monkeypatch):
    """The client address (host, port) of every request the lab's HTTP boot server takes: one per TCP connection."""
    seen: list[tuple] = []
    handle = HttpBootServer._handle

    async def recording(self, request):
        seen.append(request.transport.get_extra_info("peername"))
        return await handle(self, request)
    monkeypatch.setattr(HttpBootServer, "_handle", recording)
    return seen


def test_consecutive_pushes_on_one_thread_share_a_connection_and_answer_one_challenge(tmp_path, peers):
    (tmp_path / "boot").mkdir()
    with _http_server(tmp_path / "boot") as (url, server):
        first = _push(url, "a.cfg", b"<A/>")
        second = _push(url, "b.cfg", b"<B/>")
        seen = list(server.auth_seen)
    assert second is first
    assert len(peers) == 7 and len(set(peers)) == 1, peers      # seven requests over one TCP connection
    # the first write of the first push drew the only challenge; every later write answered its nonce unasked
    assert [scheme for method, scheme in seen if method == "PUT"] == ["", "Digest", "Digest", "Digest", "Digest"], seen
    assert (tmp_path / "boot" / "b.cfg").read_bytes() == b"<B/>"


def test_a_publisher_idle_past_the_limit_is_closed_and_a_fresh_one_lent(tmp_path, monkeypatch, peers):
    (tmp_path / "boot").mkdir()
    with _http_server(tmp_path / "boot") as (url, server):
        first = _push(url, "a.cfg", b"<A/>")
        other = _push(url.replace("127.0.0.1", "localhost"), "c.cfg", b"<C/>")   # another key, idle as long
        monkeypatch.setattr(kept, "IDLE_S", -1.0)      # every kept one is now too old
        second = _push(url, "b.cfg", b"<B/>")
        seen = list(server.auth_seen)
    assert second is not first
    assert first.pool.pool is None and other.pool.pool is None     # both closed at this lend, not left open
    assert len(set(peers[:3])) == 1 and peers[-1] not in peers[:6], peers
    # the fresh publishers drew challenges of their own
    assert [scheme for method, scheme in seen if method == "PUT"] == ["", "Digest", "Digest"] * 3, seen


def test_a_push_that_failed_closes_its_publisher_and_the_next_gets_a_fresh_one(tmp_path):
    (tmp_path / "boot").mkdir()
    with _http_server(tmp_path / "boot") as (url, server):
        lent = []
        with pytest.raises(DeviceRefused):
            with kept.lent(url, Credentials("PlcmSpIp", "wrong")) as pub:
                lent.append(pub)
                pub.write("a.cfg", b"<A/>")
        with pytest.raises(RuntimeError):
            with kept.lent(url, CREDS) as pub:
                lent.append(pub)
                pub.write("a.cfg", b"<A/>")
                raise RuntimeError("the push failed after its write (a record it could not write)")
        after = _push(url, "b.cfg", b"<B/>")
    assert after is not lent[0] and after is not lent[1]
    assert lent[0].pool.pool is None and lent[1].pool.pool is None


def test_each_thread_has_its_own_and_other_credentials_or_servers_get_their_own(tmp_path):
    (tmp_path / "boot").mkdir()
    with _http_server(tmp_path / "boot") as (url, _server):
        mine = _push(url, "a.cfg", b"<A/>")
        theirs = []
        t = threading.Thread(target=lambda: (theirs.append(_push(url, "b.cfg", b"<B/>")), kept.close_all()))
        t.start()
        t.join(10)
        assert theirs and theirs[0] is not mine
        with kept.lent(url, Credentials("PlcmSpIp", "pw-123", key_file="other")) as other:
            assert other is not mine
        assert _push(url, "c.cfg", b"<C/>") is mine


def test_other_schemes_are_opened_and_closed_per_use(tmp_path):
    (tmp_path / "files").mkdir()
    url = (tmp_path / "files").as_uri() + "/"
    with kept.lent(url, Credentials()) as first:
        first.write("a.cfg", b"<A/>")
    with kept.lent(url, Credentials()) as second:
        assert second.read("a.cfg") == b"<A/>"
    assert second is not first


def test_a_kept_connection_the_server_closed_meanwhile_costs_the_push_nothing(tmp_path, monkeypatch, peers):
    """The server dropped the kept connection (its keep-alive ran out) in the moment urllib3 looked and the request
    went: the lent publisher's first request goes once more on a fresh connection, and the push carries on."""
    import urllib3

    (tmp_path / "boot").mkdir()
    with _http_server(tmp_path / "boot") as (url, _server):
        first = _push(url, "a.cfg", b"<A/>")
        real = urllib3.HTTPConnectionPool.urlopen
        failed = []

        def closed_once(self, *a, **k):
            if not failed:
                failed.append(a[:2])
                raise urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))
            return real(self, *a, **k)
        monkeypatch.setattr(urllib3.HTTPConnectionPool, "urlopen", closed_once)
        again = _push(url, "b.cfg", b"<B/>")
        assert again is first and failed == [("GET", "/b.cfg")]
        assert (tmp_path / "boot" / "b.cfg").read_bytes() == b"<B/>"
        # a publisher's own (fresh) connection is not tried twice: that error is the push's
        failed.clear()
        kept.close_all()
        with pytest.raises(Exception, match="ProtocolError"):
            _push(url, "c.cfg", b"<C/>")
        assert failed == [("GET", "/c.cfg")]
