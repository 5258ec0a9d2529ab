"""Router drivers are chosen by name from one registry; a name not in it is an inventory error at load time."""
import importlib

import pytest

from conftest import SMALL_INVENTORY
from fleet.config import inventory, platforms
from fleet.drivers import router as routers
from soundpoint.yamlfile import FileError

INV = SMALL_INVENTORY.replace("driver: linux_ssh", "driver: DRIVER")


@pytest.mark.parametrize("name", sorted(platforms.PLATFORMS))
def test_every_registered_driver_module_has_connect_and_modes(name):
    module = importlib.import_module(platforms.get(name).module)
    assert callable(module.connect)
    assert module.MODES and set(module.MODES) <= set(routers.OUTAGE_MODES)
    assert routers.supported_modes(name) == module.MODES


def test_a_registered_driver_loads(tmp_path):
    path = tmp_path / "inv.yml"
    path.write_text(INV.replace("DRIVER", "snmp"))
    assert inventory.load(path).sites[0].router.driver == "snmp"


def test_an_unknown_driver_names_the_line_and_the_known_drivers(tmp_path):
    path = tmp_path / "inv.yml"
    path.write_text(INV.replace("DRIVER", "cisco_ios"))
    with pytest.raises(FileError) as exc:
        inventory.load(path)
    message = str(exc.value)
    assert message.startswith(f"{path}:8: sites[0].router.driver")
    assert "'cisco_ios'" in message and "linux_ssh, snmp" in message


def test_a_module_path_name_is_not_a_driver():
    # the old lookup imported f"fleet.drivers.router.{driver}": any module beside the drivers was reachable
    for name in ("ssh_base", "__init__", "linux_ssh.connect", "../snmp"):
        with pytest.raises(ValueError, match="known drivers: linux_ssh, snmp"):
            routers.driver_module(name)


TWO_SITES = SMALL_INVENTORY.replace("DRIVER", "linux_ssh") + """  - name: branch
    gateway: 127.10.0.1
    boot_server: {url: "http://127.10.0.3/", credentials: boot}
    router: {driver: linux_ssh, address: 127.10.0.1, credentials: r, wan_interface: wan0ROUTER_EXTRA}
    phones:
      - {mac: "0004f2000002", model: VVX 410, address: 127.0.0.3, credentials: admin}
"""


def _load(tmp_path, text: str):
    path = tmp_path / "inv.yml"
    path.write_text(text)
    return path, lambda: inventory.load(path)


def test_one_router_in_two_sites_without_saying_so_is_refused_naming_the_line(tmp_path):
    """Leases are per site: two experiments, one per site, would both cut the one WAN and end each other's outage."""
    path, load = _load(tmp_path, TWO_SITES.replace("ROUTER_EXTRA", ""))
    with pytest.raises(FileError) as exc:
        load()
    message = str(exc.value)
    assert message.startswith(f"{path}:8: sites[0].router.address"), message
    assert "also the router of site branch (sites[1])" in message and "shared_with" in message, message


def test_one_router_shared_openly_by_two_sites_loads(tmp_path):
    text = TWO_SITES.replace("ROUTER_EXTRA", ", shared_with: [hq]").replace(
        "wan_interface: wan0}\n    phones:\n      - {mac: \"0004f2000001\"",
        "wan_interface: wan0, shared_with: [branch]}\n    phones:\n      - {mac: \"0004f2000001\"")
    _, load = _load(tmp_path, text)
    inv = load()
    assert inv.site("hq").router.shared_with == ["branch"] and inv.site("branch").router.shared_with == ["hq"]


def test_a_shared_router_reached_another_way_is_refused(tmp_path):
    text = TWO_SITES.replace("ROUTER_EXTRA", ", shared_with: [hq], state_dir: /var/lib/other").replace(
        "wan_interface: wan0}\n    phones:\n      - {mac: \"0004f2000001\"",
        "wan_interface: wan0, shared_with: [branch]}\n    phones:\n      - {mac: \"0004f2000001\"")
    path, load = _load(tmp_path, text)
    with pytest.raises(FileError, match=r"sites\[0\]\.router\.state_dir.*site branch \(sites\[1\]\) shares this router"):
        load()


def test_shared_with_naming_a_site_without_this_router_is_refused(tmp_path):
    text = SMALL_INVENTORY.replace("DRIVER", "linux_ssh").replace("wan_interface: wan0}", "wan_interface: wan0, shared_with: [hq]}")
    _, load = _load(tmp_path, text)
    with pytest.raises(FileError, match=r"sites\[0\]\.router\.shared_with.*not another site"):
        load()


@pytest.mark.parametrize("state_dir", ["/tmp", "/tmp/", "/tmp/..", "/var/lib/../tmp", "/var/lib/./x", "/dev/shm", "/"])
def test_a_shared_or_dotted_state_dir_is_refused_at_load_naming_the_line(tmp_path, state_dir):
    text = SMALL_INVENTORY.replace("DRIVER", "linux_ssh").replace("wan_interface: wan0}", f"wan_interface: wan0, state_dir: {state_dir}}}")
    path, load = _load(tmp_path, text)
    with pytest.raises(FileError) as exc:
        load()
    assert str(exc.value).startswith(f"{path}:8: sites[0].router.state_dir"), str(exc.value)


def _two_routers(hq: str, branch: str) -> str:
    return TWO_SITES.replace("ROUTER_EXTRA", "").replace("address: 127.10.0.1, credentials: r, wan_interface: wan0}\n    phones:\n      - {mac: \"0004f2000001\"",
                                                          f"address: '{hq}', credentials: r, wan_interface: wan0}}\n    phones:\n      - {{mac: \"0004f2000001\"").replace(
        "address: 127.10.0.1, credentials: r, wan_interface: wan0}\n    phones:\n      - {mac: \"0004f2000002\"",
        f"address: '{branch}', credentials: r, wan_interface: wan0}}\n    phones:\n      - {{mac: \"0004f2000002\"")


@pytest.mark.parametrize("hq, branch", [
    ("localhost", "127.0.0.1"),                # a name and the address it resolves to (/etc/hosts here)
    ("Router.Example.", "router.example"),     # one name, spelled two ways (compared without resolving it)
    ("::1", "0:0::1"),                         # one IPv6 address, written two ways
    ("::ffff:127.10.0.9", "127.10.0.9"),       # an IPv4-mapped IPv6 address and its IPv4 one
])
def test_one_router_written_two_ways_is_still_one_router(tmp_path, hq, branch):
    text = _two_routers(hq, branch)
    assert f"address: '{hq}'," in text and f"address: '{branch}'," in text
    path, load = _load(tmp_path, text)
    with pytest.raises(FileError) as exc:
        load()
    message = str(exc.value)
    assert message.startswith(f"{path}:8: sites[0].router.address"), message
    assert f"also the router of site branch (sites[1], as {branch})" in message, message


def test_two_routers_with_different_addresses_load(tmp_path):
    _, load = _load(tmp_path, _two_routers("127.10.0.1", "127.10.0.2"))
    assert [s.router.address for s in load().sites] == ["127.10.0.1", "127.10.0.2"]


def test_a_router_name_that_cannot_be_resolved_loads_with_a_warning(tmp_path, caplog, monkeypatch):
    from fleet.config import router_identity

    def no_dns(*args, **kwargs):
        raise OSError("no resolver here")

    monkeypatch.setattr(router_identity.socket, "getaddrinfo", no_dns)
    _, load = _load(tmp_path, _two_routers("router.branch.example", "127.10.0.2"))
    with caplog.at_level("WARNING", logger="fleet.config.router_identity"):
        load()
    assert "router address router.branch.example could not be resolved" in caplog.text, caplog.text


@pytest.mark.parametrize("lock_dir", ["/run", "/tmp/", "/run/../tmp"])
def test_a_shared_or_dotted_wan_lock_dir_is_refused_at_load_naming_the_line(tmp_path, lock_dir):
    text = SMALL_INVENTORY.replace("wan_interface: wan0}", f"wan_interface: wan0, wan_lock_dir: {lock_dir}}}")
    path, load = _load(tmp_path, text)
    with pytest.raises(FileError) as exc:
        load()
    assert str(exc.value).startswith(f"{path}:8: sites[0].router.wan_lock_dir"), str(exc.value)
