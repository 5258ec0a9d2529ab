"""The real daemons of a namespace lab: OpenSSH and net-snmp on the router, Kamailio as provider and gateway.

Each gets a configuration of its own in the lab's state directory (nothing
under /etc is read or written) and is started inside its namespace; the
processes are found again by namespace at teardown.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from .. import kamailio
from ..kamailio import Kamailio, KamailioConfig, KamailioError
from .ns import NetnsError, run

SSHD = "/usr/sbin/sshd"
SNMPD = "/usr/sbin/snmpd"


def missing_tools() -> list[str]:
    """What this machine lacks for a namespace lab, as Debian package names (empty when all is there)."""
    need = {"ip": "iproute2", "iptables": "iptables", "tc": "iproute2", "kamailio": "kamailio", "kamcmd": "kamailio",
            "ssh-keygen": "openssh-client"}
    missing = sorted({pkg for tool, pkg in need.items() if not shutil.which(tool)})
    if not os.path.exists(SSHD):
        missing.append("openssh-server")
    if not os.path.exists(SNMPD):
        missing.append("snmpd")
    if not kamailio.modules_path():
        missing.append("kamailio")
    return sorted(set(missing))


def preflight() -> str | None:
    """Why a namespace lab cannot start on this machine, or None."""
    if os.geteuid() != 0:
        return "backend netns needs root (network namespaces, sshd, snmpd)"
    missing = missing_tools()
    if missing:
        return f"backend netns needs these Debian packages: {' '.join(missing)} (apt-get install {' '.join(missing)})"
    return None


def _wait_for(path: Path, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise NetnsError(f"{what} did not start within {timeout:g}s (no {path})")
        time.sleep(0.05)


# ---------------------------------------------------------------- OpenSSH
def ssh_keys(state: Path) -> tuple[Path, Path]:
    """The router's host key and the controller's client key; kept across `hil down`/`up` (stable known_hosts)."""
    host, client = state / "router_ssh_host_key", state / "router_client_key"
    for key in (host, client):
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hil-netns", "-f", str(key)], check=True)
    (state / "router_authorized_keys").write_text(Path(f"{client}.pub").read_text())
    os.chmod(state / "router_authorized_keys", 0o600)
    return host, client


def start_sshd(ns: str, state: Path, name: str, address: str, port: int) -> None:
    host_key, _ = ssh_keys(state)
    cfg = state / f"sshd-{name}.conf"
    pid = state / f"sshd-{name}.pid"
    pid.unlink(missing_ok=True)
    cfg.write_text(f"""# hil namespace lab: the router's own sshd
Port {port}
ListenAddress {address}
HostKey {host_key}
PidFile {pid}
AuthorizedKeysFile {state / 'router_authorized_keys'}
PermitRootLogin prohibit-password
AllowUsers root
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
UseDNS no
MaxStartups 50:30:100
MaxSessions 50
""")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    run([SSHD, "-t", "-f", str(cfg)])
    run([SSHD, "-f", str(cfg)], ns=ns)
    _wait_for(pid, f"sshd in {ns}")


def known_hosts_line(state: Path, address: str, port: int) -> str:
    key = Path(f"{state / 'router_ssh_host_key'}.pub").read_text().split()
    return f"[{address}]:{port} {key[0]} {key[1]}"


# ---------------------------------------------------------------- net-snmp
def start_snmpd(ns: str, state: Path, name: str, address: str, port: int, community: str,
                user: str, auth: str, priv: str) -> None:
    """snmpd with a v2c read-write community and a v3 authPriv user (SHA/AES), both allowed to set ifAdminStatus."""
    persist = state / f"snmp-{name}"
    persist.mkdir(exist_ok=True)
    os.chmod(persist, 0o700)
    cfg = state / f"snmpd-{name}.conf"
    pid = state / f"snmpd-{name}.pid"
    pid.unlink(missing_ok=True)
    cfg.write_text(f"""agentAddress udp:{address}:{port}
rwcommunity {community} default
createUser {user} SHA {auth} AES {priv}
rwuser {user} priv
""")
    os.chmod(cfg, 0o600)
    env = dict(os.environ, MIBS="", SNMP_PERSISTENT_DIR=str(persist))
    res = subprocess.run(["ip", "netns", "exec", ns, SNMPD, "-C", "-c", str(cfg), "-p", str(pid),
                          "-Lf", str(state / f"snmpd-{name}.log")],
                         env=env, capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise NetnsError(f"snmpd in {ns} exited {res.returncode}: {res.stderr.strip()[-300:]}")
    _wait_for(pid, f"snmpd in {ns}")


# ---------------------------------------------------------------- Kamailio
def start_kamailio(ns: str, state: Path, name: str, role: str, address: str, port: int, realm: str,
                   users: dict[str, str], max_expires: int) -> Path:
    """Kamailio as a registrar (hil.kamailio's one configuration) inside namespace `ns`. Returns its ctl socket;
    the process ends with the namespace at teardown."""
    if not kamailio.modules_path():
        raise NetnsError("Kamailio's modules are not installed (apt-get install kamailio)")
    kam = Kamailio(KamailioConfig(address, port, realm, users, max_expires=max_expires, role=role),
                   state / f"kamailio-{name}")
    try:
        return kam.start(wrap=["ip", "netns", "exec", ns])
    except KamailioError as exc:
        raise NetnsError(f"{exc} (in {ns})") from None


# ---------------------------------------------------------------- the router's own network manager
ROUTE_KEEPER = r'''dev=$1; shift
ip monitor link | while read -r line; do
  case "$line" in
    *" $dev:"*"<"*UP*">"*|*" $dev@"*"<"*UP*">"*)
      case "$line" in *[\<,]UP[,\>]*) for r in "$@"; do ip route replace $r dev "$dev" 2>/dev/null; done ;; esac ;;
  esac
done
'''


def start_route_keeper(ns: str, dev: str, routes: list[str]) -> subprocess.Popen:
    """What networkd, ifupdown hooks or VyOS do on a managed router: put the static routes back whenever `dev`
    comes up. A plain Linux router has none, and then a link-down over SNMP (which cannot re-add routes) leaves the
    WAN without them; the lab starts this only where a test wants a managed router. Dies with the namespace."""
    return subprocess.Popen(["ip", "netns", "exec", ns, "sh", "-c", ROUTE_KEEPER, "hil-route-keeper", dev, *routes],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
