"""Router drivers are chosen by name from one registry; a name not in it is an inventory error at load time."""
import importlib

import pytest

from fleet import inventory
from fleet.drivers import router as routers
from soundpoint.yamlfile import FileError

INV = """name: lab
secrets_file: secrets.yml
provider: {name: voip.example}
sites:
  - name: hq
    gateway: 127.10.0.1
    boot_server: {url: "http://127.10.0.3/", credentials: boot}
    router: {driver: DRIVER, address: 127.10.0.1, credentials: r, wan_interface: wan0}
    phones:
      - {mac: "0004f2000001", model: VVX 410, address: 127.0.0.2, credentials: admin}
"""


@pytest.mark.parametrize("name", sorted(routers.DRIVERS))
def test_every_registered_driver_module_has_connect_and_modes(name):
    module = importlib.import_module(routers.DRIVERS[name])
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
