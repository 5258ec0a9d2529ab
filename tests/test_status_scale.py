"""Issue 22: `fleet status --json` at fleet scale reads every row in one reply and writes it in pieces, byte for
byte what it wrote before; `--site` checks its site without walking every key; and the command starts without
Celery, pydantic, YAML, rich or redis-py (its own bare client, fleet.state.resp, reads; whatever that client
declines or fails at, redis-py does, with its usual messages). bench/status.py measures the time; these say what
it rests on.

Real Redis, real `fleet` processes."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid

import pytest
import redis

from conftest import BIN
from fleet.state import resp, status_json
from fleet.state.observe import Observation
from fleet.state.store import Keys, Store, status_json_quick
from soundpoint.redisboot import free_port

SERVERS = [{"index": 1, "address": "sip.example.com:5060", "register": True},
           {"index": 2, "address": "192.168.100.2:5060", "register": True}]


def _site(store: Store, n: int) -> tuple[str, list[str]]:
    site = f"sc{uuid.uuid4().hex[:6]}"
    rnd = random.Random(site)
    macs = [f"{rnd.getrandbits(48):012x}" for _ in range(n)]
    store.register_phones(site, [{"mac": m, "model": "VVX 410", "address": f"10.0.{i // 200}.{i % 200 + 2}",
                                  "servers": SERVERS} for i, m in enumerate(macs)])
    now = time.time()
    store.record_observations([Observation(m, now, "syslog", server=s, state="registered", address="x")
                               for m in macs for s in (1, 2)])
    return site, macs


def _reference(store: Store, macs: list[str], unseen: dict, errors: dict, foreign: dict) -> str:
    """The output as `fleet status --json` wrote it before issue 22 (one f-string per phone, sorted MACs)."""
    out = []
    for mac in sorted(macs):
        row = store.r.hget(Keys.phone(mac), "row")
        site = json.loads(row)["site"]
        out.append(f'{row[:-1]}, "unobservable": {json.dumps(unseen.get(mac, []))}, "evidence_errors": '
                   f'{json.dumps(errors.get(site, []))}, "evidence_foreign": {json.dumps(foreign.get(site, []))}}}')
    return "[" + ",".join(out) + "]"


def test_status_json_is_byte_for_byte_the_former_output_in_mac_order_with_every_report(redis_url, monkeypatch):
    monkeypatch.setattr(status_json, "CHUNK_ROWS", 7)        # many pieces, and joins between them
    store = Store(redis_url)
    plain, plain_macs = _site(store, 40)
    noisy, noisy_macs = _site(store, 30)
    unseen = [{"mac": noisy_macs[3], "reg": 1, "server": 2, "reason": "not observable on the wire"}]
    sources = [{"source": "hep", "running": False, "error": "no HEP packet", "since": 1.0,
                "foreign": {"10.9.9.9": 3}}]
    store.set_site_evidence(noisy, unseen, sources)
    errors = {noisy: [sources[0]]}
    foreign = {noisy: [{"source": "hep", "foreign": {"10.9.9.9": 3}, "total": 3}]}
    got_noisy = store.status_json(noisy)
    assert got_noisy == _reference(store, noisy_macs, {noisy_macs[3]: unseen}, errors, foreign)
    assert store.status_json(plain) == _reference(store, plain_macs, {}, {}, {})
    everything = json.loads(store.status_json())
    mine = [r for r in everything if r["site"] in (plain, noisy)]
    assert [r["mac"] for r in mine] == sorted(plain_macs + noisy_macs)
    assert [r["mac"] for r in everything] == sorted(r["mac"] for r in everything)


def test_a_row_gives_its_mac_and_site_without_being_decoded():
    row = json.dumps({"mac": "0004f2000001", "site": "hq", "model": "VVX", "x": {"site": "not this"}}).encode()
    assert status_json.row_mac(row) == "0004f2000001" and status_json.row_site(row) == "hq"
    assert status_json.row_site(b'{"mac": "0004f2000001"}') is None
    assert b"".join(status_json.pieces([], {}, {}, {})) == b"[]"


def test_has_site_knows_registered_and_reporting_sites_only(redis_url):
    store = Store(redis_url)
    site, _ = _site(store, 2)
    reporting = f"rep{uuid.uuid4().hex[:6]}"
    store.set_site_evidence(reporting, [], [])
    assert store.has_site(site) and store.has_site(reporting)
    assert not store.has_site(f"none{uuid.uuid4().hex[:6]}")
    assert {site, reporting} <= set(store.site_names())


def test_fleet_status_json_starts_without_celery_pydantic_yaml_rich_or_redis_py(redis_url):
    store = Store(redis_url)
    site, macs = _site(store, 3)
    code = ("import sys; sys.argv = ['fleet', 'status', '--json', '--site', sys.argv[1]]\n"
            "from fleet.cli import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'celery', 'kombu', 'pydantic', 'yaml', 'rich',"
            " 'redis'}),"
            " file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, site], env=dict(os.environ, FLEET_REDIS_URL=redis_url),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [r["mac"] for r in json.loads(done.stdout)] == sorted(macs)
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr


def test_the_bare_client_reads_what_the_store_reads(redis_url):
    store = Store(redis_url)
    plain, _ = _site(store, 5)
    noisy, macs = _site(store, 4)
    store.set_site_evidence(noisy, [{"mac": macs[1], "reg": 1, "server": 2, "reason": "not observable"}],
                            [{"source": "hep", "error": "no HEP packet", "foreign": {"10.9.9.9": 2}}])
    for site in (plain, noisy, None):
        assert b"".join(status_json_quick(redis_url, site)) == b"".join(store.status_json_pieces(site))
    assert status_json_quick(redis_url, f"none{uuid.uuid4().hex[:6]}") is None     # the caller says there is none


@pytest.mark.parametrize("url", ["redis://h", "redis://h:6390/3", "REDIS://u:p%40ss@H:1/0", "redis://:pw@[::1]:7/",
                                 "redis://h/0/", "redis://%68ost/2"])
def test_the_bare_client_reads_a_url_as_redis_py_does(url):
    from redis.connection import parse_url

    host, port, username, password, db = resp.parse_url(url)
    want = parse_url(url)
    assert (host, port, username, password, db) == (want.get("host", "localhost"), want.get("port", 6379),
                                                    want.get("username"), want.get("password"), want.get("db", 0))


@pytest.mark.parametrize("url", ["rediss://h", "unix:///tmp/r.sock", "redis://h/0?socket_timeout=3", "redis://u@h",
                                 "redis://h/x"])
def test_the_bare_client_declines_what_only_redis_py_reads(url):
    with pytest.raises(resp.Unsupported):
        resp.parse_url(url)


def _status(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "fleet", "status", *args], env=dict(os.environ, FLEET_REDIS_URL=url, COLUMNS="250"),
                          capture_output=True, text=True, timeout=120)


def test_a_url_only_redis_py_reads_gives_the_same_list(redis_url):
    site, _ = _site(Store(redis_url), 3)
    assert _status(f"{redis_url}?socket_timeout=30", "--json", "--site", site).stdout == \
        _status(redis_url, "--json", "--site", site).stdout != ""


def test_json_fails_as_the_table_fails(redis_url):
    """What the bare client cannot do, redis-py then fails at: the same message and exit code as the table's."""
    site, _ = _site(Store(redis_url), 1)
    wrong_password = redis.connection.parse_url(redis_url)
    refused = f"redis://fleet:pw@127.0.0.1:{free_port()}/0"     # nothing listens there
    urls = [refused, redis_url.replace(f":{wrong_password['password']}@", ":wrong@"),
            redis_url.replace("redis://fleet:", "redis://nobody:")]
    for url in urls:
        for args in ([], ["--site", site]):
            table, listed = _status(url, *args), _status(url, "--json", *args)
            assert listed.returncode == table.returncode == 3, (url, listed.stderr, table.stderr)
            assert listed.stderr == table.stderr and listed.stdout == "", (listed.stderr, table.stderr)



def test_each_sites_rows_hash_holds_exactly_its_phones_rows_through_moves_info_and_forgetting(redis_url):
    """The rows `fleet status --json` reads with HVALS are the phones' own rows: after observations, facts read
    from the phone, a phone moved to another site and one forgotten; and the read gives what SORT ... GET gave."""
    store = Store(redis_url)
    a, a_macs = _site(store, 12)
    b, b_macs = _site(store, 5)
    store.set_phone_info({a_macs[0]: {"firmware": "5.9.1"}})
    moved = a_macs[1]
    store.register_phones(b, [{"mac": moved, "model": "VVX 410", "address": "10.9.9.9", "servers": SERVERS}])
    store.forget_phones([a_macs[2]])
    for site in (a, b):
        rows = store.r.hgetall(Keys.site_rows(site))
        members = set(store.r.smembers(Keys.site_phones(site))) - ({moved} if site == a else set())
        assert set(rows) == members, (site, set(rows) ^ members)
        assert all(rows[m] == store.r.hget(Keys.phone(m), "row") for m in rows)
    assert '"5.9.1"' in store.r.hget(Keys.site_rows(a), a_macs[0])
    assert moved not in store.r.hgetall(Keys.site_rows(a)) and moved in store.r.hgetall(Keys.site_rows(b))
    assert store.r.sismember(Keys.site_phones(a), moved)      # the old site still lists it, as before: read the old way
    # the site read and the quick read agree with the rows themselves, in MAC order
    for site, macs in ((a, [m for m in a_macs if m != a_macs[2]]), (b, b_macs + [moved]), (None, None)):
        got = b"".join(status_json_quick(redis_url, site))
        if macs is not None:
            assert [r["mac"] for r in json.loads(got)] == sorted(macs)
        else:      # the whole fleet: each phone once, the moved one at its new site
            rows = {r["mac"]: r for r in json.loads(got)}
            assert len(rows) == len(json.loads(got)) and rows[moved]["site"] == b and a_macs[2] not in rows
        assert got == b"".join(store.status_json_pieces(site))


def test_a_store_written_before_the_rows_hashes_reads_as_before(redis_url):
    """Phones whose rows are only in their own hash (an older controller wrote them): the count differs, and the
    read falls back to SORT ... GET, so nothing goes missing from `fleet status --json`."""
    store = Store(redis_url)
    site, macs = _site(store, 9)
    before = b"".join(status_json_quick(redis_url, site))
    store.r.delete(Keys.site_rows(site))
    assert b"".join(status_json_quick(redis_url, site)) == before
    assert b"".join(store.status_json_pieces(site)) == before
    whole = json.loads(b"".join(status_json_quick(redis_url)))
    assert set(macs) <= {r["mac"] for r in whole}
    assert json.loads(b"".join(store.status_json_pieces())) == whole
