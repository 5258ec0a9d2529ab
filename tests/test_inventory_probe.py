"""`fleet inventory check --probe`: every device reached read-only, exactly the broken ones named, nothing changed."""
from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import paramiko
import pytest
import yaml

from conftest import lab_spec, run_fleet, start_collector
from fleet.state.store import K, Store

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def lab(lab_factory):
    return lab_factory(lab_spec("probe", phones=3, boot_protocol="ftp", models=["SoundPoint IP 650", "VVX 410"]))


def _tree(path: Path) -> dict[str, str]:
    """The boot directory's files, less the logs the phones upload on their own every minute (not the probe's doing)."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and not p.name.endswith(".log")}


MUTATING = {"set", "add", "del", "delete", "replace", "change", "flush", "-A", "-D", "-I", "-F", "-X", "-N"}


def _changes(argv: list[str]) -> bool:
    """A router command that changes something (ip link set, tc qdisc add, iptables -A ...); reads are allowed."""
    return bool(MUTATING & set(argv))


def _device_state(lab) -> dict:
    """What a probe must leave alone: boot files, the router's commands and link, each phone's boots."""
    st = lab.status()
    site = st["sites"][0]
    return {"boot": _tree(lab.state / "boot-hq"),
            "router_changes": [c for c in site["router"]["commands"] if _changes(c.get("argv") or [])],
            "link": site["router"].get("link"),
            "boots": {p["mac"]: p["boot_count"] for p in st["phones"]}}


def _probe(lab, inventory: Path, redis_url: str):
    out = run_fleet(["inventory", "check", str(inventory), "--probe", "--json", "--timeout", "3"], redis_url, timeout=120)
    assert out.stdout.strip(), f"no JSON (exit {out.returncode}): {out.stderr[-2000:]}"
    return out.returncode, json.loads(out.stdout)


def test_probe_reaches_every_device_of_the_lab(lab, redis_url):
    before = _device_state(lab)
    code, doc = _probe(lab, lab.inventory, redis_url)
    failed = [c for c in doc["checks"] if not c["ok"]]
    assert code == 0 and not failed, failed
    devices = {c["device"] for c in doc["checks"]}
    phones = {p["mac"] for p in lab.status()["phones"]}
    assert devices == {"boot server", "router", "switch poe-hq", "collector syslog", "collector events"} | \
        {f"phone {m}" for m in phones}
    switch = next(c for c in doc["checks"] if c["device"] == "switch poe-hq")
    assert switch["detail"].startswith(f"{len(phones)} port(s) read: 1.1 on (deliveringPower)"), switch
    # each phone read by its family's control: the SoundPoint IP 650 (UC 4.0) by state polling, the VVX by REST
    methods = {c["detail"].split(" (", 1)[0] for c in doc["checks"] if c["device"].startswith("phone ")}
    assert methods == {"state polling GET /polling/deviceHandler", "REST GET /api/v1/mgmt/device/info"}, doc["checks"]
    assert _device_state(lab) == before
    boot = next(c for c in doc["checks"] if c["device"] == "boot server")
    assert boot["detail"] == "read the <MAC>.cfg of every phone (3); no 000000000000.cfg there", boot
    # the firmware each phone reported is kept where `fleet status` and the reports read the phone's own word
    store = Store(redis_url)
    reported = {p["mac"]: store.r.hget(K.phone(p["mac"]), "firmware") for p in lab.status()["phones"]}
    said = {c["device"][len("phone "):]: c["detail"] for c in doc["checks"] if c["device"].startswith("phone ")}
    assert all(fw and f"firmware {fw}" in said[mac] for mac, fw in reported.items()), (reported, said)


def _broken_inventory(lab, tmp_path: Path) -> tuple[Path, str]:
    """The lab's inventory with a wrong router host key, a wrong boot password and one phone at a dead address."""
    inv = yaml.safe_load(lab.inventory.read_text())
    secrets = yaml.safe_load(Path(inv["secrets_file"]).read_text())
    site = inv["sites"][0]
    boot_secret = site["boot_server"]["credentials"]
    secrets[boot_secret]["password"] = "not-the-password"
    (tmp_path / "secrets.yml").write_text(yaml.safe_dump(secrets))
    (tmp_path / "secrets.yml").chmod(0o600)
    inv["secrets_file"] = str(tmp_path / "secrets.yml")
    router = site["router"]
    other = paramiko.RSAKey.generate(1024)   # any key but the router's
    (tmp_path / "known_hosts").write_text(f"[{router['address']}]:{router['port']} ssh-rsa {other.get_base64()}\n")
    router["known_hosts"] = str(tmp_path / "known_hosts")
    dead = site["phones"][1]
    dead["address"] = dead["address"].rsplit(".", 1)[0] + ".249"   # in the lab's range, nothing listens there
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(inv, sort_keys=False))
    return path, dead["mac"]


def test_probe_names_exactly_the_broken_devices_and_changes_nothing(lab, redis_url, tmp_path):
    before = _device_state(lab)
    inventory, dead_mac = _broken_inventory(lab, tmp_path)
    code, doc = _probe(lab, inventory, redis_url)
    failed = {c["device"]: c["detail"] for c in doc["checks"] if not c["ok"]}
    assert code == 1, doc
    assert set(failed) == {"router", "boot server", f"phone {dead_mac.lower()}"}, failed
    assert "host key does not match" in failed["router"]
    assert ": refused: " in failed[f"phone {dead_mac.lower()}"] and "connection refused" in failed[f"phone {dead_mac.lower()}"]
    assert "not-the-password" not in json.dumps(doc)
    assert _device_state(lab) == before


def test_check_without_probe_validates_only(lab, redis_url, tmp_path):
    out = run_fleet(["inventory", "check", str(lab.inventory), "--json"], redis_url)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["valid"] and doc["phones"] == 3 and "checks" not in doc
    bad = tmp_path / "bad.yml"
    bad.write_text(lab.inventory.read_text().replace("driver: linux_ssh", "driver: cisco_telnet"))
    out = run_fleet(["inventory", "check", str(bad)], redis_url)
    assert out.returncode == 2 and "bad.yml" in out.stderr and "driver" in out.stderr, out.stderr


def _rows(doc: dict) -> dict[str, dict]:
    return {c["device"]: c for c in doc["checks"]}


def test_probe_passes_while_the_sites_collector_runs_and_fails_when_another_program_holds_its_port(
        lab, redis_url, tmp_path):
    """Issue 19: before, the probe failed whenever the site's own collector ran (its ports were "in use")."""
    collector = start_collector(redis_url, lab.inventory, ("hq",), tmp_path / "collector.log")
    try:
        code, doc = _probe(lab, lab.inventory, redis_url)
    finally:
        collector.stop()
    failed = [c for c in doc["checks"] if not c["ok"]]
    assert code == 0 and not failed, failed
    rows = _rows(doc)
    for what in ("collector syslog", "collector events"):
        assert rows[what]["detail"].startswith(f"in use by this site's fleet collector (pid {collector.pid} on host "
                                               f"{socket.gethostname()}, alive "), rows[what]
    # the collector has stopped (its record withdrawn); a program of no concern to fleet takes the events port
    events = yaml.safe_load(lab.inventory.read_text())["sites"][0]["collector"]["events"]
    host, _, port = events.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind((host, int(port)))
        other.listen()
        code, doc = _probe(lab, lab.inventory, redis_url)
    failed = {c["device"]: c["detail"] for c in doc["checks"] if not c["ok"]}
    assert code == 1 and failed == {"collector events": "in use by another program: no fleet collector of this site "
                                                        "has reported in fleet's Redis"}, failed


def test_a_wrong_boot_server_path_fails_the_probe(lab, redis_url, tmp_path):
    """Issue 19: before, a directory without the phones' files passed ("logged in; no 000000000000.cfg there")."""
    inv = yaml.safe_load(lab.inventory.read_text())
    inv["sites"][0]["boot_server"]["url"] += "polycom/"       # the files are in the server's top directory
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(inv, sort_keys=False))
    code, doc = _probe(lab, path, redis_url)
    failed = {c["device"]: c for c in doc["checks"] if not c["ok"]}
    assert code == 1 and set(failed) == {"boot server"}, failed
    row = failed["boot server"]
    assert row["target"].endswith("/polycom/"), row
    assert row["detail"].startswith(f"no <MAC>.cfg nor master file at {row['target']}: is the boot server path right?"), row
