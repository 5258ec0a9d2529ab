"""Kamailio as a registrar for the lab and the interop tests: one configuration, one way to start and query it.

The namespace lab runs it as the provider and as each site's gateway, the
userspace lab runs it as a site's gateway (`gateway: kamailio`), and the
interop tests run it alone. All use this module, so what the lab proves about
Kamailio is proved about one configuration:

* digest authentication with each user's own password (an htable filled at
  start-up); a user not in the table is refused with 403, as a real site
  refuses an unknown extension;
* usrloc in memory with short timers (min_expires 1 s, timer 1 s), so bindings
  expire within an experiment;
* REGISTER saved, SUBSCRIBE and OPTIONS answered, INVITE routed to a binding;
* optionally an outbound proxy for one upstream server: a request whose Request-URI names a host other than
  Kamailio itself (`uri != myself`) is relayed statefully (tm) to a configured IP and port, unauthenticated
  (the upstream challenges the phone itself), so a phone that uses the gateway as its outbound proxy sends
  everything, the provider's REGISTERs included, through it;
* optionally `siptrace` sending every request and reply as HEP v3 to a
  collector (the HOMER convention real SIP servers follow): in transaction
  mode, so a relayed request shows both legs (in from the phone, out to the
  upstream) and both of its replies (in from the upstream, out to the phone);
* the `ctl` module's binrpc socket, for `kamcmd ul.dump`.

`Kamailio` is the one way to run it: it writes and checks the configuration,
starts the process (inside a namespace with `wrap`), waits until its control
socket is there, and stops it with its whole process group. The userspace lab
runs it through `KamailioGateway`, the namespace lab through
hil.netns.daemons.start_kamailio (its namespace and error type), the tests as
`with Kamailio(config, workdir) as server:`. Kamailio forks into the background
with a pid file; `stop` ends it by that pid. Started `attached`, it stays a
child of the caller instead and gets SIGTERM when the caller dies (so a killed
lab leaves no Kamailio holding its address).
"""
from __future__ import annotations

import functools
import glob
import hashlib
import ipaddress
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

TRACE_FLAG = 22
CTL_PATH_MAX = 100       # longest ctl socket path we give Kamailio (it fails above about 104)

CONFIG = """#!KAMAILIO
# hil: {role}
debug=1
log_stderror=no
fork=yes
children=2
auto_aliases=no
dns=no
rev_dns=no
listen=udp:{address}:{port}
mpath="{mpath}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "sanity.so"
loadmodule "auth.so"
loadmodule "htable.so"
loadmodule "ctl.so"
loadmodule "kex.so"
{siptrace_modules}
modparam("usrloc", "db_mode", 0)
modparam("usrloc", "timer_interval", 1)
modparam("registrar", "min_expires", 1)
modparam("registrar", "default_expires", 60)
modparam("registrar", "max_expires", {max_expires})
modparam("htable", "htable", "users=>size=10;")
modparam("ctl", "binrpc", "unix:{sock}")
{siptrace_params}
{jsonrpc}
event_route[htable:mod-init] {{
{users}
}}
request_route {{
{trace}
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (!sanity_check("1511", "7")) {{ exit; }}
    if (has_totag()) {{
        if (loose_route()) {{ t_relay(); exit; }}
        if (is_method("ACK")) {{ t_check_trans(); }}
{relay_in_dialog}        exit;
    }}
    if (is_method("ACK")) {{ t_check_trans(); exit; }}
{relay}    if (is_method("REGISTER|SUBSCRIBE|INVITE")) {{
        if ($sht(users=>$fU) == $null) {{ sl_send_reply("403", "Forbidden"); exit; }}
        if (!pv_www_authenticate("{realm}", "$sht(users=>$fU)", "0")) {{ www_challenge("{realm}", "0"); exit; }}
        consume_credentials();
    }}
    if (is_method("REGISTER")) {{ if (!save("location")) {{ sl_reply_error(); }} exit; }}
    if (is_method("SUBSCRIBE")) {{ sl_send_reply("200", "OK"); exit; }}
    if (is_method("INVITE")) {{
        if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
        record_route();
        t_relay();
        exit;
    }}
    if (is_method("OPTIONS")) {{ sl_send_reply("200", "OK"); exit; }}
    sl_send_reply("405", "Method Not Allowed");
}}
"""

# jsonrpcs over a FIFO beside the ctl socket, replies in the same private directory (Kamailio's own kamailio.cfg
# loads jsonrpcs with its FIFO in /run/kamailio; kamctl and fleet's gateway command speak JSON-RPC to it)
JSONRPC = """loadmodule "jsonrpcs.so"
modparam("jsonrpcs", "transport", 2)
modparam("jsonrpcs", "fifo_name", "{fifo}")
modparam("jsonrpcs", "fifo_reply_dir", "{reply_dir}/")
modparam("jsonrpcs", "fifo_mode", 0600)"""
SIPTRACE_MODULES = 'loadmodule "siptrace.so"'
SIPTRACE_PARAMS = """modparam("siptrace", "duplicate_uri", "sip:{host}:{port}")
modparam("siptrace", "hep_mode_on", 1)
modparam("siptrace", "hep_version", 3)
modparam("siptrace", "hep_capture_id", {capture_id})
modparam("siptrace", "trace_to_database", 0)
modparam("siptrace", "trace_flag", {flag})
modparam("siptrace", "trace_on", 1){auth_key}"""
# HEP v3 only: the key goes in chunk 14 of every datagram (Kamailio siptrace docs, parameter auth_key)
SIPTRACE_AUTH_KEY = '\nmodparam("siptrace", "auth_key", "{key}")'
TRACE_ROUTE = f"    setflag({TRACE_FLAG});\n    sip_trace();"
# Outbound proxy for one upstream: anything not for Kamailio itself goes there unchanged (no DNS: an address).
# In a dialog (BYE, the ACK of a 2xx) the same, so a call placed through the proxy can end.
RELAY = """    if (uri != myself) {{
        $du = "sip:{host}:{port}";
        if (!t_relay()) {{ sl_reply_error(); }}
        exit;
    }}
"""
RELAY_IN_DIALOG = """        if (uri != myself) {{ $du = "sip:{host}:{port}"; t_relay(); }}
"""


class KamailioError(RuntimeError):
    """Kamailio is missing, refused its configuration, or did not come up; the text says which."""


def modules_path(module: str = "tm.so") -> str | None:
    """Where Debian put Kamailio's modules (with a trailing slash, as `mpath` wants it), or None."""
    found = glob.glob(f"/usr/lib/*/kamailio/modules/{module}") + glob.glob(f"/usr/lib/kamailio/modules/{module}")
    return str(Path(found[0]).parent) + "/" if found else None


def unavailable(siptrace: bool = False) -> str | None:
    """Why Kamailio cannot run here (for a test's skip reason or the lab's error), or None."""
    if not shutil.which("kamailio") or not shutil.which("kamcmd"):
        return "Kamailio is not installed (Debian: apt-get install kamailio; `make test` does this as root)"
    if not modules_path():
        return "Kamailio's modules are not installed (Debian: apt-get install kamailio)"
    if siptrace and not modules_path("siptrace.so"):
        return "Kamailio's siptrace module is not installed (Debian: apt-get install kamailio)"
    return None


def _quote(value: str, what: str) -> str:
    if any(c in value for c in '"\\\n\r'):
        raise ValueError(f"a {what} for Kamailio must not contain quotes, backslashes or line breaks")
    return value


def _upstream(address: tuple[str, int]) -> tuple[str, int]:
    """The relay's upstream as Kamailio gets it: an IPv4 address and a port (Kamailio never resolves a name here)."""
    host, port = address
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"Kamailio's upstream must be an IPv4 address (no DNS here), not {host!r:.60}") from None
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"Kamailio's upstream port must be 1-65535, not {port!r:.20}")
    return host, port


@dataclass
class KamailioConfig:
    """What one Kamailio registrar is: where it listens, its realm and users, and where it sends HEP."""
    address: str
    port: int
    realm: str
    users: dict[str, str]
    max_expires: int = 3600
    hep: tuple[str, int] | None = None     # siptrace's HEP v3 destination, None = no tracing
    upstream: tuple[str, int] | None = None  # outbound proxy: where requests not for Kamailio itself go (an IP)
    capture_id: int = 2001
    role: str = "registrar"
    jsonrpc: bool = False                   # jsonrpcs' FIFO beside the ctl socket (rpc_fifo(sock))
    hep_auth_key: str | None = None        # siptrace's auth_key (HEP v3 chunk 14); None = datagrams carry none

    def render(self, sock: Path) -> str:
        mpath = modules_path()
        if not mpath:
            raise KamailioError(unavailable() or "Kamailio's modules are not installed")
        table = "\n".join(f'    $sht(users=>{_quote(u, "SIP user")}) = "{_quote(p, "SIP password")}";'
                          for u, p in sorted(self.users.items()))
        trace = self.hep is not None
        relay = relay_in_dialog = ""
        if self.upstream is not None:
            host, port = _upstream(self.upstream)
            relay = RELAY.format(host=host, port=port)
            relay_in_dialog = RELAY_IN_DIALOG.format(host=host, port=port)
        return CONFIG.format(
            relay=relay, relay_in_dialog=relay_in_dialog,
            role=self.role, address=self.address, port=self.port, mpath=mpath, sock=sock,
            realm=_quote(self.realm, "realm"), users=table, max_expires=self.max_expires,
            siptrace_modules=SIPTRACE_MODULES if trace else "",
            siptrace_params=SIPTRACE_PARAMS.format(
                host=self.hep[0], port=self.hep[1], capture_id=self.capture_id, flag=TRACE_FLAG,
                auth_key=SIPTRACE_AUTH_KEY.format(key=_quote(self.hep_auth_key, "HEP auth key"))
                if self.hep_auth_key else "") if self.hep else "",
            trace=TRACE_ROUTE if trace else "",
            jsonrpc=JSONRPC.format(fifo=rpc_fifo(sock), reply_dir=sock.parent) if self.jsonrpc else "")


def rpc_fifo(sock: Path) -> Path:
    """Where a Kamailio with `jsonrpc` has its JSON-RPC FIFO: beside its ctl socket (replies go to that directory)."""
    return sock.parent / "rpc.fifo"


@dataclass
class Kamailio:
    """One Kamailio process with its own work directory (configuration, pid file, control socket)."""
    config: KamailioConfig
    workdir: Path
    pid: int | None = field(default=None, init=False)
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @functools.cached_property
    def sock(self) -> Path:
        """The ctl socket. Kamailio refuses a binrpc path of more than about 104 characters (it exits 255 with
        nothing on stderr), which deep work directories (pytest-xdist's popen-gwN/...) reach: then the socket lives
        in a short private directory named after the work directory. Clients (kamcmd) have the same limit, so
        callers use this path; workdir/ctl.sock is then a symbolic link to it, for people looking there."""
        own = self.workdir / "ctl.sock"
        if len(str(own)) <= CTL_PATH_MAX:
            return own
        digest = hashlib.sha256(str(self.workdir.resolve()).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"hil-kam-{digest}" / "ctl.sock"

    def _prepare_sock(self) -> None:
        """Clear the last run's socket; for a short-path socket, its private directory and the link to it. The
        directory is in the shared temporary directory: one that someone else made (or a symbolic link planted
        under its name) is refused rather than used."""
        own, real = self.workdir / "ctl.sock", self.sock
        if real == own:
            real.unlink(missing_ok=True)
            return
        try:
            os.mkdir(real.parent, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(real.parent)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise KamailioError(f"{real.parent} is not a directory of ours; refusing it for Kamailio's ctl socket")
        os.chmod(real.parent, 0o700)
        real.unlink(missing_ok=True)
        if own.is_symlink() or own.exists():
            own.unlink()
        own.symlink_to(real)

    @property
    def pid_file(self) -> Path:
        return self.workdir / "kamailio.pid"

    @property
    def cfg_file(self) -> Path:
        return self.workdir / "kamailio.cfg"

    def write_config(self) -> Path:
        """Write and check the configuration (`kamailio -c`), so a bad one fails here with Kamailio's words."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._prepare_sock()
        self.pid_file.unlink(missing_ok=True)
        self.cfg_file.write_text(self.config.render(self.sock))
        os.chmod(self.cfg_file, 0o600)        # it holds the SIP passwords
        check = subprocess.run(["kamailio", "-c", "-f", str(self.cfg_file)], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise KamailioError(f"Kamailio refused {self.cfg_file}: {check.stderr.strip()[-600:]}")
        return self.cfg_file

    def start(self, wrap: list[str] | None = None, timeout: float = 10.0, attached: bool = False) -> Path:
        """Start it (inside `wrap`, e.g. `ip netns exec NS`); returns the control socket once it is there.
        `attached`: Kamailio's main process stays our child (-DD) and ends when we do."""
        self.write_config()
        argv = [*(wrap or []), "kamailio", "-f", str(self.cfg_file), "-P", str(self.pid_file), "-w", str(self.workdir)]
        if attached:
            # a process group of its own: stop() can end Kamailio's children with it, and Kamailio's own
            # shutdown (a signal to its group) reaches only them
            self.process = subprocess.Popen([*argv, "-DD"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, preexec_fn=_die_with_parent, process_group=0)
        else:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            if res.returncode != 0:
                # Kamailio's words first: the command line (long state paths) comes last, where a cut may fall
                raise KamailioError(f"Kamailio ({self.config.role}) exited {res.returncode}: {res.stderr.strip()[-600:]} "
                                    f"(`{' '.join(argv)}`)")
        deadline = time.monotonic() + timeout
        while not self.sock.exists():
            if self.process is not None and self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise KamailioError(f"Kamailio ({self.config.role}) exited {self.process.returncode}: {err.strip()[-600:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise KamailioError(f"Kamailio ({self.config.role}) did not start within {timeout:g}s (no {self.sock})")
            time.sleep(0.05)
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()           # logging goes to syslog (log_stderror=no); nothing more to read
        try:
            self.pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            self.pid = None
        return self.sock

    def stop(self) -> None:
        """End the main process, then whatever is left of its process group (a child that missed the main
        process's shutdown would otherwise live on, orphaned); a Kamailio already gone is fine."""
        pid = self.pid
        if pid is None and self.pid_file.exists():
            try:
                pid = int(self.pid_file.read_text().strip())
            except ValueError:
                pid = None
        if pid is None and self.process is not None:
            pid = self.process.pid
        if pid is None:
            self._remove_short_sock()
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if self.process is not None:
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.process = None
        else:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
        _kill_group(pid)
        self.pid = None
        self._remove_short_sock()

    def __enter__(self) -> "Kamailio":
        """Started (detached, readiness waited for) for a `with` block, and stopped at its end whatever happens."""
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _remove_short_sock(self) -> None:
        if self.sock != self.workdir / "ctl.sock":
            shutil.rmtree(self.sock.parent, ignore_errors=True)

    def kamcmd(self, *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
        return kamcmd(self.sock, *args, timeout=timeout)

    def ul_dump(self, brief: bool = False) -> str:
        return ul_dump(self.sock, brief=brief)


def _kill_group(pgid: int, wait_s: float = 5.0) -> None:
    """SIGKILL what is left of Kamailio's process group (its main process leads it: -DD started in a group of
    its own, or daemonised with setsid) and wait, up to `wait_s`, until the group is gone: a killed child lives on
    until init reaps it, holding the address a next start wants; nothing left is fine."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.02)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except OSError:
        pass


def kamcmd(sock: Path, *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
    """`kamcmd` against one Kamailio's control socket."""
    return subprocess.run(["kamcmd", "-s", f"unix:{sock}", *args], capture_output=True, text=True, timeout=timeout)


def ul_dump(sock: Path, brief: bool = False) -> str:
    """Kamailio's own view of its bindings (`kamcmd ul.dump`, optionally `brief`)."""
    return kamcmd(sock, "ul.dump", *(["brief"] if brief else [])).stdout


class KamailioGateway:
    """A site's gateway registrar played by Kamailio (lab file `gateway: kamailio`), in the place and with the
    interface of the built-in one (start, stop, summary), for hil.lab."""

    def __init__(self, name: str, host: str, port: int, realm: str, users: dict[str, str], workdir: Path,
                 hep: tuple[str, int] | None = None, upstream: tuple[str, int] | None = None,
                 hep_auth_key: str | None = None) -> None:
        """`upstream`: the site's phones use this gateway as their outbound proxy, and what is not for the gateway
        itself (the provider's REGISTERs) goes on to that address. `hep_auth_key`: the key its HEP carries."""
        self.name, self.host, self.port = name, host, port
        self.server = Kamailio(KamailioConfig(host, port, realm, users, hep=hep, upstream=upstream,
                                              role=f"{name} (site gateway)", hep_auth_key=hep_auth_key), workdir)

    @property
    def ctl(self) -> Path:
        return self.server.sock

    async def start(self) -> None:
        """In the event loop's own thread on purpose: the death signal is tied to the thread that forked, and a
        worker thread of to_thread may end before the lab does. It runs before any phone starts."""
        self.server.start(attached=True)

    def stop(self) -> None:
        self.server.stop()

    def summary(self, since: float = 0.0) -> dict:
        """Kamailio keeps its own books: ask it (`kamcmd ul.dump` over the router's SSH, or on `control_socket`)."""
        return {"name": self.name, "address": f"{self.host}:{self.port}", "platform": "kamailio",
                "control_socket": str(self.ctl), "hep": list(self.server.config.hep) if self.server.config.hep else None,
                "upstream": list(self.server.config.upstream) if self.server.config.upstream else None}
