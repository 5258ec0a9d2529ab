"""Issue 19, the probe: the boot server must hold a master every phone reads (a wrong path fails), and a collector
address held by the site's own running collector passes while one held by anything else fails.

Unit tests: a `file://` boot directory, and the collector registry on the session's real Redis with this test
process standing in for the collector (tests/test_inventory_probe.py runs a real `fleet collector`).
"""
from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import free_port
from fleet.config import inventory
from fleet.sites.probe import check_boot_server, check_collector
from fleet.state import collectors as registry
from fleet.state.store import Store
from soundpoint import bootfiles

MACS = ["0004f2000001", "0004f2000002", "0004f2000003"]
MASTER = b'<?xml version="1.0" standalone="yes"?>\n<APPLICATION CONFIG_FILES="site.cfg"/>\n'


def _site(tmp_path: Path, boot_url: str, collector: dict | None = None, site: str = "hq"):
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump({
        "name": "unit", "firmware_family": "uc-5.x",
        "sites": [{"name": site, "gateway": "10.0.0.1", "boot_server": {"url": boot_url},
                   "collector": collector or {"syslog": "127.0.0.1:5514", "events": "127.0.0.1:8514"},
                   "phones": [{"mac": m, "model": "VVX 410", "address": f"10.0.1.{i + 2}", "credentials": "admin"}
                              for i, m in enumerate(MACS)]}]}, sort_keys=False))
    return inventory.load(path).site(site)


# ------------------------------------------------------------------------------------------------ boot server
def test_a_boot_directory_without_any_file_a_phone_reads_fails_the_probe(tmp_path):
    """Before: "logged in; no 000000000000.cfg there" passed; the phones' own files were never looked for."""
    (tmp_path / "wrong").mkdir()
    row = check_boot_server(_site(tmp_path, f"file://{tmp_path}/wrong/"), None, 2.0)
    assert not row.ok, row
    assert row.detail == (f"no <MAC>.cfg nor master file at file://{tmp_path}/wrong/: is the boot server path right? "
                          f"(looked for {bootfiles.DEFAULT_MASTER} and the 3 phones' <MAC>.cfg)")


def test_the_phones_own_files_pass_and_a_phone_without_one_is_named(tmp_path):
    boot = tmp_path / "boot"
    boot.mkdir()
    for mac in MACS[:2]:
        (boot / bootfiles.master_name(mac)).write_bytes(MASTER)
    site = _site(tmp_path, f"file://{boot}/")
    row = check_boot_server(site, None, 2.0)
    assert not row.ok and f"no <MAC>.cfg nor master file for 1 of 3 phones at file://{boot}/ ({MACS[2]})" in row.detail
    (boot / bootfiles.master_name(MACS[2])).write_bytes(MASTER)
    row = check_boot_server(site, None, 2.0)
    assert row.ok and row.detail == f"read the <MAC>.cfg of every phone (3); no {bootfiles.DEFAULT_MASTER} there"


def test_the_default_master_serves_every_phone_without_its_own_file(tmp_path):
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / bootfiles.DEFAULT_MASTER).write_bytes(MASTER)
    row = check_boot_server(_site(tmp_path, f"file://{boot}/"), None, 2.0)
    assert row.ok and row.detail.startswith(f"read {bootfiles.DEFAULT_MASTER} ({len(MASTER)} bytes)"), row


# ------------------------------------------------------------------------------------------------ collector
@pytest.fixture
def held(tmp_path):
    """A site whose collector addresses (free ports) this process holds, as its collector would: (site, store)."""
    syslog, events = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", int(syslog.rsplit(":", 1)[1])))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", int(events.rsplit(":", 1)[1])))
    tcp.listen()
    try:
        yield _site(tmp_path, "file:///nonexistent/", {"syslog": syslog, "events": events},
                    site=f"s{uuid.uuid4().hex[:8]}")
    finally:
        udp.close()
        tcp.close()


def _rows(site, store):
    return {r.device: r for r in check_collector(site, store)}


def test_addresses_held_by_the_sites_running_collector_pass(held, redis_url):
    store = Store(redis_url)
    record = registry.this_process(held.name, held.collector.syslog, held.collector.events)
    registry.announce(store, record)
    rows = _rows(held, store)
    host = socket.gethostname()
    for what in ("collector syslog", "collector events"):
        assert rows[what].ok, rows[what]
        assert rows[what].detail.startswith(f"in use by this site's fleet collector (pid {os.getpid()} on host {host}, "
                                            "alive "), rows[what]
        assert rows[what].detail.endswith(" s ago): ok")
    registry.withdraw(store, record)
    assert store.site_collector(held.name) == ({}, 0.0)


def test_addresses_held_by_anything_else_fail(held, redis_url):
    store = Store(redis_url)
    rows = _rows(held, store)                       # nothing reported: another program holds them
    assert not rows["collector events"].ok
    assert rows["collector events"].detail == ("in use by another program: no fleet collector of this site has "
                                               "reported in fleet's Redis")
    rows = _rows(held, None)                        # no Redis to ask: it cannot tell
    assert not rows["collector syslog"].ok and "no fleet Redis to ask" in rows["collector syslog"].detail


def test_a_collector_that_stopped_reporting_or_whose_process_is_gone_does_not_excuse_the_address(held, redis_url):
    store = Store(redis_url)
    host = socket.gethostname()
    record = registry.CollectorRecord(held.name, host, 2 ** 22 + 7, held.collector.syslog, held.collector.events, 0.0)
    registry.announce(store, record)                # fresh, but no such process here
    row = _rows(held, store)["collector events"]
    assert not row.ok and row.detail.endswith(": that process is gone"), row
    mine = registry.this_process(held.name, held.collector.syslog, held.collector.events)
    # its last heartbeat 20 s ago: the record's TTL as it is then (the reader's age is what is left of the TTL)
    store.set_site_collector(held.name, mine.to_fields(), registry.RECORD_TTL_S - 20)
    row = _rows(held, store)["collector events"]
    assert not row.ok and "last reported 20 s ago" in row.detail and "is something else listening there?" in row.detail


def test_a_collector_on_other_addresses_says_so(held, redis_url):
    store = Store(redis_url)
    registry.announce(store, registry.this_process(held.name, "127.0.0.1:1", "127.0.0.1:2"))
    row = _rows(held, store)["collector syslog"]
    assert not row.ok and "listens on 127.0.0.1:1 and 127.0.0.1:2, not here" in row.detail, row


def test_free_addresses_pass_without_any_collector(tmp_path, redis_url):
    site = _site(tmp_path, "file:///x/", {"syslog": f"127.0.0.1:{free_port()}", "events": f"127.0.0.1:{free_port()}"},
                 site=f"s{uuid.uuid4().hex[:8]}")
    assert [(r.ok, r.detail) for r in check_collector(site, Store(redis_url))] == [(True, "free"), (True, "free")]
