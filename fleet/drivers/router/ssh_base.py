"""One SSH base for router platforms (paramiko): connect, host-key checking, timeouts, typed errors.

A platform is data (scrapli's lesson): shell snippets per outage mode, run
inside fixed scripts that carry the outage protocol. The scripts run on the
router under a per-outage lock, with the outage's state in files of a private
directory there, so the router itself decides what a late or repeated task
may still do:
- the cut arms the dead-man's switch and cuts under one lock, so a restore can
  never fall between the two;
- a restore that finds no cut leaves a "cancelled" mark, and the cut then
  does nothing;
- disarming kills the dead-man's shell before its sleep, and the dead-man
  re-checks the "restored" mark under the lock anyway, so disarming can never
  run a restore early;
- every rule carries the outage's tag and every qdisc our handle, so a
  repeated cut adds nothing and a restore removes exactly ours.

Nothing from a task is ever formatted into a command: every value reaches
the router as a quoted positional argument of a constant script.
"""
from __future__ import annotations

import shlex
import socket
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import paramiko

from fleet.config.inventory import Credentials, Router
from fleet.drivers.errors import DeviceRefused, DeviceTimeout, DriverError, HostKeyUnknown, MalformedAnswer
from fleet.drivers.router import CUT_OUTCOMES, OUTAGE_ID, RESTORE_OUTCOMES, Outage, RouterOutcome, WanState


@dataclass(frozen=True)
class Platform:
    """What differs between router platforms: per mode, a check that must pass before anything changes and
    the commands that cut; the scripts below supply the protocol. Snippets see $WAN, $TAG, $F, $PROB, $DELAY,
    $RATE, $DNSPORT and the helpers add_rule/mark."""
    precheck: dict[str, str]
    cut: dict[str, str]
    restore: str          # undo whatever the marks under $F say we did, leaving everything else alone
    state: str            # print "@section" headers followed by raw command output
    # where every controller finds the per-WAN outage lock on this platform's routers (the inventory's
    # router.wan_lock_dir overrides it, for a router whose /run is unusable and for labs sharing one host)
    wan_lock_dir: str = "/run/fleet"


# Common to every script: the private directory, checked before use. It holds the restore the dead-man runs as
# the SSH user (often root) and the marks that decide what a late task may do, so nobody but root and that user
# may be able to change it or any directory above it:
# - an absolute path without "." or ".." components and without symbolic links (give the real path);
# - every existing ancestor is a directory of root or of the SSH user, not writable by group or others, except a
#   sticky one (like /tmp): there nobody else can rename or remove an entry of root's or ours, and the entry below
#   is itself held to these rules;
# - the directory itself is ours and dedicated: one that existed writable by group or others (/tmp itself) is
#   refused, and so is one that holds other files without fleet's marker `.fleet-outages` (a home directory, /).
# A missing ancestor is made by us with a plain mkdir (umask 077), one component at a time, and checked once made:
# one that another user creates between our look and our mkdir makes the mkdir fail and is refused, never used
# (so a cut can never pass on a path whose restore would then be refused). The checks run before anything else.
#
# One outage per WAN interface: the lock and the record of the outage that holds the interface live in the WAN
# lock directory $L, a fixed place on the router that does not depend on the outage directory, so every
# controller sees it whatever its state_dir (the platform's default, /run/fleet: a tmpfs, emptied by a reboot,
# which also ends every outage). It is checked the same way, and must itself be root's or the SSH user's, not
# writable by group or others, and writable by the SSH user. A root SSH user makes it; for a non-root SSH user it
# must be made for that user at boot (systemd-tmpfiles: `d /run/fleet 0700 fleet - -`), and every controller
# reaching the router then logs in as that user: another one is refused, never given a lock of its own.
_PROLOGUE = r'''set -u
umask 077
D=${1:-$HOME/.fleet-outages}; ID=$2; WAN=$3; L=${4:-}
F="$D/$ID"; TAG="fleet-$ID"; W="$L/wan-$WAN"
WHAT="outage directory $D"
refuse_dir() { echo "fleet: $WHAT: $*; refusing it" >&2; exit 71; }
ME=$(id -u)
# $1 path -> "MODE UID" of an existing path (ls -ldn is POSIX and BusyBox)
mode_uid() { ls -ldn -- "$1" 2>/dev/null | { read -r m _ u _ && echo "$m $u"; }; }
check_ancestor() {
  if [ -L "$1" ]; then refuse_dir "$1 is a symbolic link (give the real path)"; fi
  set -- "$1" $(mode_uid "$1")
  case "$2" in d*) ;; *) refuse_dir "$1 is not a directory" ;; esac
  if [ "$3" != 0 ] && [ "$3" != "$ME" ]; then refuse_dir "$1 belongs to uid $3, neither root nor $(id -un)"; fi
  case "$2" in
    ?????w????*|????????w?*) case "$2" in ?????????[tT]*) ;; *) refuse_dir "$1 is writable by others than root and $(id -un)" ;; esac ;;
  esac
}
# $1 an absolute path: every directory above it checked, a missing one made (plain mkdir) and then checked
check_path() {
  case "$1" in /*) ;; *) refuse_dir "not an absolute path" ;; esac
  case "$1/" in */./*|*/../*) refuse_dir "it has a . or .. component (give its real path)" ;; esac
  a=""; rest=${1#/}
  check_ancestor /
  while :; do
    part=${rest%%/*}
    case "$rest" in */*) rest=${rest#*/} ;; *) rest="" ;; esac
    [ -n "$part" ] || { [ -n "$rest" ] && continue; break; }
    a="$a/$part"
    [ -n "$rest" ] || break
    if [ ! -e "$a" ] && [ ! -L "$a" ]; then
      mkdir "$a" 2>/dev/null || refuse_dir "$a could not be made by $(id -un) (or appeared meanwhile)"
    fi
    check_ancestor "$a"
  done
}
existed=0
if [ -e "$D" ] || [ -L "$D" ]; then existed=1; fi
check_path "$D"
if [ -L "$D" ]; then refuse_dir "it is a symbolic link"; fi
if [ "$existed" = 1 ]; then
  case "$(mode_uid "$D")" in
    d????w????*|d???????w?*) refuse_dir "it is writable by group or others (a shared directory, not a dedicated one)" ;;
  esac
else
  mkdir "$D" 2>/dev/null || refuse_dir "it could not be made by $(id -un) (or appeared meanwhile)"
fi
if [ ! -d "$D" ] || [ ! -O "$D" ]; then refuse_dir "it is not a directory of $(id -un)"; fi
if [ ! -e "$D/.fleet-outages" ]; then
  if [ "$existed" = 1 ] && [ -n "$(ls -A "$D" 2>/dev/null)" ]; then
    refuse_dir "it holds other files and no .fleet-outages marker (not a dedicated directory; create an empty one)"
  fi
  : > "$D/.fleet-outages"
fi
chmod 700 "$D"
# The WAN lock directory, checked (and made) by whoever takes or releases the interface; exits 71 if unsafe.
check_wan_dir() {
  WHAT="WAN lock directory $L"
  [ -n "$L" ] || refuse_dir "none given"
  check_path "$L"
  if [ -L "$L" ]; then refuse_dir "it is a symbolic link"; fi
  if [ ! -e "$L" ]; then
    mkdir "$L" 2>/dev/null || refuse_dir "$(id -un) cannot make it (for a non-root SSH user it must be made at boot, owned by that user: systemd-tmpfiles 'd $L 0700 $(id -un) - -')"
  fi
  set -- $(mode_uid "$L")
  case "${1:-}" in d*) ;; *) refuse_dir "it is not a directory" ;; esac
  if [ "$2" != 0 ] && [ "$2" != "$ME" ]; then
    refuse_dir "it belongs to uid $2, neither root nor $(id -un) (every controller reaching this router logs in as the user who owns it)"
  fi
  case "$1" in d????w????*|d???????w?*) refuse_dir "it is writable by group or others" ;; esac
  [ -w "$L" ] || refuse_dir "$(id -un) cannot write in it (it must be owned by the SSH user)"
  WHAT="outage directory $D"
}
# A dropped SSH session must not kill a script halfway (its cut done, its lock kept): hangups and broken pipes are
# ignored, and any other signal still releases what the script holds through the EXIT trap.
trap '' HUP PIPE
trap 'exit 143' INT TERM
LOCK=""; WL=""; WAN_TAKEN=0
cleanup() {
  if [ "$WAN_TAKEN" = 1 ]; then release_wan; fi
  if [ -n "$WL" ]; then rm -rf "$WL"; fi
  if [ -n "$LOCK" ]; then rm -rf "$LOCK"; fi
}
trap cleanup EXIT
# $1 a lock directory, $2 the pid of its dead holder as a waiter read it. Two waiters can both see that holder
# gone: the lock is removed under an flock of its own, and only while it still names that pid, so the second
# never removes the lock the first has taken meanwhile. Without flock (util-linux, or BusyBox's applet) a stale
# lock is not broken here: its waiters time out (the dead-man breaks its own outage's lock after a minute).
break_stale() {
  command -v flock >/dev/null 2>&1 || return 1
  ( flock -w 10 9 || exit 1
    h=$(cat "$1/pid" 2>/dev/null || true)
    if [ "$h" = "$2" ] && ! kill -0 "$h" 2>/dev/null; then rm -rf "$1" && exit 0; fi
    exit 1
  ) 9>>"$1.break"
}
# $1 tries (0.1 s apart), $2 the lock directory
mkdir_lock() {
  n=0
  until mkdir "$2" 2>/dev/null; do
    # a lock whose holder is gone (killed outright) is broken at once, whoever finds it
    holder=$(cat "$2/pid" 2>/dev/null || true)
    if [ -n "$holder" ] && ! kill -0 "$holder" 2>/dev/null && break_stale "$2" "$holder"; then
      continue
    fi
    n=$((n+1))
    if [ "$n" -ge "$1" ]; then return 1; fi
    sleep 0.1 2>/dev/null || sleep 1      # BusyBox without fractional sleep: wait a whole second
  done
  echo $$ > "$2/pid"
}
take_lock() { mkdir_lock "$1" "$F.lock" || return 1; LOCK="$F.lock"; }
# $W holds "ID SINCE DIR": the outage that holds the interface, and its outage directory (another controller's,
# maybe). $1-$3 such a record: does that outage hold the interface? One restored or cancelled, or that never got
# as far as its cut (no lock, no cutting mark), holds nothing; one whose directory we cannot read holds it.
holds_wan() {
  [ -n "$1" ] || return 1
  hd=${3:-$D}
  if [ "$1" = "$ID" ] && [ "$hd" = "$D" ]; then return 1; fi
  if [ ! -d "$hd" ] || [ ! -x "$hd" ]; then return 0; fi
  if [ -e "$hd/$1.restored" ] || [ -e "$hd/$1.cancelled" ]; then return 1; fi
  [ -e "$hd/$1.cutting" ] || [ -d "$hd/$1.lock" ]
}
take_wan() {
  check_wan_dir
  mkdir_lock 150 "$W.lock" || { echo "fleet: the outage lock of $WAN is busy" >&2; exit 75; }
  WL="$W.lock"
  h=""; since=""; hd=""
  if [ -e "$W" ]; then read -r h since hd < "$W" || true; fi
  if holds_wan "$h" "$since" "$hd"; then
    echo "fleet: $WAN is already in outage $h since $since (its record: $W); one outage per WAN interface at a time, so outage $ID is refused" >&2
    exit 77
  fi
  echo "$ID $(date +%s) $D" > "$W.new" && mv -f "$W.new" "$W"
  WAN_TAKEN=1
  rm -rf "$WL"; WL=""
}
release_wan() {
  WAN_TAKEN=0
  if ! ( check_wan_dir ); then echo "fleet: the record of outage $ID on $WAN was left in $L" >&2; return 0; fi
  if mkdir_lock 150 "$W.lock"; then WL="$W.lock"; fi
  h=""; since=""; hd=""
  if [ -e "$W" ]; then read -r h since hd < "$W" || true; fi
  if [ "$h" = "$ID" ] && [ "${hd:-$D}" = "$D" ]; then rm -f "$W"; fi
  if [ -n "$WL" ]; then rm -rf "$WL"; WL=""; fi
}
'''

# Positional arguments: D ID WAN L WHO. WHO is controller, deadman, or failed-cut (run by a cut that holds the lock).
RESTORE_SCRIPT = _PROLOGUE + r'''WHO=$5
if [ "$WHO" = deadman ]; then
  # a lock left by a killed script must not stop the dead-man: wait a minute, then break it
  take_lock 600 || { rm -rf "$F.lock"; take_lock 600 || exit 75; }
elif [ "$WHO" != failed-cut ]; then
  take_lock 150 || { echo "fleet: outage $ID is busy (its lock is held)" >&2; exit 75; }
fi
if [ -e "$F.restored" ]; then echo "outcome=already-restored"; echo "by=$(cut -d' ' -f1 "$F.restored")"; exit 0; fi
if [ ! -e "$F.cutting" ]; then
  [ "$WHO" = deadman ] && exit 0
  : > "$F.cancelled"
  echo "outcome=cancelled-before-cut"
  exit 0
fi
fail=0
@RESTORE@
if [ "$fail" != 0 ]; then echo "fleet: restore of outage $ID incomplete; the dead-man's switch stays armed" >&2; exit 74; fi
echo "$WHO $(date +%s)" > "$F.restored"
release_wan
if [ "$WHO" != deadman ] && [ -e "$F.deadman" ]; then
  p=$(cat "$F.deadman"); s=$(cat "$F.sleep" 2>/dev/null || true)
  kill "$p" 2>/dev/null
  if [ -n "$s" ]; then kill "$s" 2>/dev/null; fi
fi
echo "outcome=restored"
'''

# The dead-man: sleep, then restore; a restore that fails (a busy xtables lock, a link slow to come up) is tried
# again every 5 s for 10 minutes, since nobody else may be left to do it. nohup alone does not outlive the SSH
# session where systemd-logind has KillUserProcesses=yes (it kills the session's whole scope when SSH closes,
# whatever ignores SIGHUP): where `systemd-run --scope` works, the dead-man gets a scope of its own outside the
# session. The dead-man counts as armed once its shell runs (it writes $F.sleep): one that does not get there
# under systemd-run (refused, no D-Bus) is killed and started again without it, and a cut never goes ahead with
# none (exit 76). $F.deadman holds its pid either way. The restore it runs is its own copy, handed to it as an
# argument ($RESTORE, kept in its memory), never a file another user could replace while it sleeps.
DEADMAN_START = r'''start_deadman() {
  rm -f "$F.sleep"
  $1 nohup sh -c 'sleep "$1" & echo $! > "$2.sleep"; wait $!
    n=0; until sh -c "$7" fleet-restore "$3" "$4" "$5" "$6" deadman; do n=$((n+1)); [ "$n" -ge 120 ] && exit 1; sleep 5; done' \
    fleet-deadman "$MAX" "$F" "$D" "$ID" "$WAN" "$L" "$RESTORE" >/dev/null 2>&1 &
  echo $! > "$F.deadman"
}
deadman_runs() {
  n=0
  while [ ! -s "$F.sleep" ]; do
    kill -0 "$(cat "$F.deadman")" 2>/dev/null || return 1
    n=$((n+1)); [ "$n" -ge 50 ] && return 1
    sleep 0.1 2>/dev/null || sleep 1
  done
}
armed=0
if command -v systemd-run >/dev/null 2>&1 && systemd-run --scope --quiet --collect --no-ask-password true >/dev/null 2>&1; then
  start_deadman "systemd-run --scope --quiet --collect --no-ask-password"
  if deadman_runs; then armed=1; else kill "$(cat "$F.deadman")" 2>/dev/null; fi
fi
if [ "$armed" = 0 ]; then
  start_deadman ""
  deadman_runs || { echo "fleet: the dead-man's switch did not start on the router; nothing was cut" >&2; exit 76; }
fi'''

# Each cut first removes the files of outages restored (or cancelled before their cut) more than PRUNE_DAYS ago,
# so the router's outage directory does not grow by one set per experiment for the router's life. An outage never restored keeps its files (they
# are what an operator needs), and so does one whose lock is held. Outage ids have no dots, so "$o".* is one
# outage's files only.
PRUNE_DAYS = 7
PRUNE = r'''find "$D" -maxdepth 1 \( -name '*.restored' -o -name '*.cancelled' \) -mtime +@DAYS@ 2>/dev/null |
while IFS= read -r r; do
  o=${r%.*}
  [ -d "$o.lock" ] && continue
  rm -rf "$o".* 2>/dev/null
done'''.replace("@DAYS@", str(PRUNE_DAYS))

# Positional arguments: D ID WAN L MODE MAX PROB DELAY RATE DNSPORT RESTORE-SCRIPT
CUT_SCRIPT = _PROLOGUE + r'''MODE=$5; MAX=$6; PROB=$7; DELAY=$8; RATE=$9; DNSPORT=${10}; RESTORE=${11}
@PRUNE@
take_lock 150 || { echo "fleet: outage $ID is busy (its lock is held)" >&2; exit 75; }
if [ -e "$F.cancelled" ]; then echo "outcome=cancelled"; exit 0; fi
if [ -e "$F.restored" ]; then echo "outcome=already-restored"; exit 0; fi
if [ -e "$F.cut" ]; then echo "outcome=already-cut"; echo "deadman=$(cat "$F.deadman" 2>/dev/null)"; exit 0; fi
add_rule() {
  echo "$*" >> "$F.rules"
  iptables -w -C FORWARD "$@" 2>/dev/null || iptables -w -I FORWARD "$@"
}
take_wan      # before the precheck: a second outage on this interface is told which one holds it
case "$MODE" in
@PRECHECK@
  *) echo "fleet: mode $MODE is not supported by this router platform" >&2; exit 73 ;;
esac
@DEADMAN@
: > "$F.cutting"
(
  set -e
  case "$MODE" in
@CUT@
  esac
)
rc=$?
if [ "$rc" = 0 ]; then
  : > "$F.cut"
  WAN_TAKEN=0      # held until this outage's restore (the controller's, the dead-man's) releases it
  echo "outcome=cut"
  echo "deadman=$(cat "$F.deadman")"
else
  WAN_TAKEN=0      # the failed-cut restore releases the interface once it has undone the cut
  sh -c "$RESTORE" fleet-restore "$D" "$ID" "$WAN" "$L" failed-cut >/dev/null
  echo "fleet: the $MODE cut failed (exit $rc) and what it had done was undone" >&2
  exit 72
fi
'''

# Positional arguments: D ID WAN L (ID may be "-" for no outage)
STATE_SCRIPT = _PROLOGUE + r'''@STATE@
if [ "$ID" != "-" ]; then
  echo "@outage"
  for m in cutting cut cancelled restored; do
    if [ -e "$F.$m" ]; then echo "$m $(cat "$F.$m")"; fi
  done
fi
'''


def _cases(snippets: dict[str, str]) -> str:
    return "\n".join(f"  {mode}) {body.strip()} ;;" for mode, body in snippets.items())


class SshRouter(ABC):
    platform: Platform

    def __init__(self, router: Router, credentials: Credentials) -> None:
        self.router = router
        self.name = f"router {router.address}:{router.port}"
        self.client = paramiko.SSHClient()
        if router.known_hosts:
            try:
                self.client.load_host_keys(router.known_hosts)
            except (OSError, paramiko.SSHException) as exc:
                raise DriverError(self.name, f"cannot read known_hosts {router.known_hosts}: {type(exc).__name__}") from None
        # Unknown keys are refused unless the user opted in explicitly (inventory: accept_new_host_key: true).
        policy = paramiko.AutoAddPolicy() if router.accept_new_host_key else paramiko.RejectPolicy()
        self.client.set_missing_host_key_policy(policy)
        try:
            self.client.connect(router.address, port=router.port, username=credentials.username or None,
                                password=credentials.password or None, key_filename=credentials.key_file or None,
                                timeout=router.timeout, banner_timeout=router.timeout, auth_timeout=router.timeout,
                                look_for_keys=False, allow_agent=False)
        except paramiko.BadHostKeyException:
            raise HostKeyUnknown(self.name, "host key does not match known_hosts (possible impersonation)") from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise HostKeyUnknown(self.name, "host key not in known_hosts; add it, or set accept_new_host_key") from None
            if isinstance(exc, paramiko.AuthenticationException):
                raise DeviceRefused(self.name, "authentication failed") from None
            raise DriverError(self.name, f"SSH error: {type(exc).__name__}") from None
        except (socket.timeout, TimeoutError):
            raise DeviceTimeout(self.name, f"no SSH answer within {router.timeout:g}s") from None
        except OSError as exc:
            raise DeviceTimeout(self.name, f"cannot connect ({exc.strerror or type(exc).__name__})") from None

    # ------------------------------------------------------------------ transport
    def run(self, command: str, check: bool = True, what: str = "") -> str:
        what = what or command
        try:
            _, stdout, stderr = self.client.exec_command(command, timeout=self.router.timeout)
            out = stdout.read().decode(errors="replace")
            err = stderr.read().decode(errors="replace")
            rc = stdout.channel.recv_exit_status()
        except (socket.timeout, TimeoutError):
            raise DeviceTimeout(self.name, f"{what} did not finish within {self.router.timeout:g}s") from None
        except paramiko.SSHException as exc:
            raise DriverError(self.name, f"SSH error running {what}: {type(exc).__name__}") from None
        if check and rc != 0:
            raise DeviceRefused(self.name, f"{what} exited {rc}: {_last_line(err)}")
        return out

    def stream(self, command: str, what: str = "") -> "StreamingExec":
        """Start a command that does not end by itself (a capture) and hand back its stdout as it arrives.
        The caller reads with `StreamingExec.read` and ends it with `close`."""
        what = what or command
        try:
            transport = self.client.get_transport()
            transport.set_keepalive(15)  # type: ignore[union-attr]  # a vanished router: a broken stream, not a silent one
            channel = transport.open_session(timeout=self.router.timeout)  # type: ignore[union-attr]
            channel.exec_command(command)
        except (socket.timeout, TimeoutError):
            raise DeviceTimeout(self.name, f"{what} did not start within {self.router.timeout:g}s") from None
        except (paramiko.SSHException, AttributeError) as exc:
            raise DriverError(self.name, f"SSH error starting {what}: {type(exc).__name__}") from None
        return StreamingExec(channel, self.name, what)

    def _script(self, script: str, args: list[str], what: str) -> str:
        """Run a constant script with quoted positional arguments: the only way values reach the router."""
        return self.run(" ".join(["sh", "-c", shlex.quote(script), "fleet", *(shlex.quote(str(a)) for a in args)]), what=what)

    def _base_args(self, outage_id: str | None) -> list[str]:
        if outage_id is not None and not OUTAGE_ID.match(outage_id):
            raise DeviceRefused(self.name, "invalid outage id")
        return [self.router.state_dir or "", outage_id or "-", self.router.wan_interface,
                self.router.wan_lock_dir or self.platform.wan_lock_dir]

    # ------------------------------------------------------------------ the outage protocol
    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(self.platform.cut)

    has_deadman = True

    def restore_script(self) -> str:
        return RESTORE_SCRIPT.replace("@RESTORE@", self.platform.restore.strip())

    def cut_script(self) -> str:
        return (CUT_SCRIPT.replace("@PRUNE@", PRUNE).replace("@DEADMAN@", DEADMAN_START).replace("@PRECHECK@", _cases(self.platform.precheck))
                .replace("@CUT@", _cases(self.platform.cut)))

    def cut_args(self, outage: Outage) -> list[str]:
        """The cut script's positional arguments for `outage` (see CUT_SCRIPT): the one place an Outage becomes
        shell words. The values were checked by `Outage`; each is still quoted by `_script`."""
        return self._base_args(outage.id) + [outage.mode, str(outage.max_duration), f"{outage.loss:.4f}" if outage.loss else "0",
                                             str(outage.delay_ms), str(outage.rate_kbit), str(self.router.dns_port),
                                             self.restore_script()]

    def cut(self, outage: Outage) -> RouterOutcome:
        if outage.mode not in self.platform.cut:
            raise DeviceRefused(self.name, f"outage mode {outage.mode!r} not supported by this router driver")
        answer = _keyvalues(self._script(self.cut_script(), self.cut_args(outage), f"cut {outage.mode} (outage {outage.id})"))
        done_at = time.time()
        outcome = answer.get("outcome", "")
        if outcome not in CUT_OUTCOMES:
            raise MalformedAnswer(self.name, f"cut answered no known outcome ({outcome[:40]!r})")
        pid = answer.get("deadman", "")
        deadman = f"armed on the router (pid {pid}), restores {outage.max_duration}s after the cut" if pid.isdigit() else ""
        return RouterOutcome(outcome, deadman=deadman, state=self.wan_state(outage.id), done_at=done_at)

    def restore(self, outage: Outage) -> RouterOutcome:
        """Undo whatever the router's marks say this outage did (the mode is the router's record, not ours)."""
        answer = _keyvalues(self._script(self.restore_script(), self._base_args(outage.id) + ["controller"],
                                         f"restore (outage {outage.id})"))
        done_at = time.time()
        outcome = answer.get("outcome", "")
        if outcome not in RESTORE_OUTCOMES:
            raise MalformedAnswer(self.name, f"restore answered no known outcome ({outcome[:40]!r})")
        by = answer.get("by") or ("controller" if outcome == "restored" else "")
        return RouterOutcome(outcome, by=by, state=self.wan_state(outage.id), done_at=done_at)

    def wan_state(self, outage_id: str | None = None) -> WanState:
        script = STATE_SCRIPT.replace("@STATE@", self.platform.state.strip())
        out = self._script(script, self._base_args(outage_id), "state query")
        sections: dict[str, list[str]] = {}
        current = None
        for line in out.splitlines():
            if line.startswith("@") and line[1:].isidentifier():
                current = sections.setdefault(line[1:], [])
            elif current is not None:
                current.append(line)
        return self.parse_state(sections, outage_id)

    @abstractmethod
    def parse_state(self, sections: dict[str, list[str]], outage_id: str | None) -> WanState:
        """Turn the state script's sections into a WanState (and the named outage's standing on the router)."""

    def close(self) -> None:
        self.client.close()


class StreamingExec:
    """The stdout of a long-running command on the router, read in pieces as they arrive.

    `read(timeout)` returns the bytes available (b"" when `timeout` passed with nothing, so the caller can
    do timed work between reads) and None at the end of the stream; stderr is kept (its tail only) for the
    error message when the command ends."""

    def __init__(self, channel: paramiko.Channel, name: str, what: str) -> None:
        self.channel, self.name, self.what = channel, name, what
        self._err = bytearray()

    def read(self, timeout: float = 1.0, size: int = 65536) -> bytes | None:
        self.channel.settimeout(timeout)
        if self.channel.recv_stderr_ready():
            self._err += self.channel.recv_stderr(4096)
            del self._err[:-4096]
        try:
            data = self.channel.recv(size)
        except (socket.timeout, TimeoutError):
            return b""
        except (paramiko.SSHException, OSError) as exc:
            raise DriverError(self.name, f"{self.what}: stream broke ({type(exc).__name__})") from None
        return data if data else None

    def ended(self) -> str:
        """Why the stream ended, for the log: the exit status and the last line of stderr."""
        while self.channel.recv_stderr_ready():
            self._err += self.channel.recv_stderr(4096)
        rc = self.channel.recv_exit_status() if self.channel.exit_status_ready() else None
        return f"{self.what} ended (exit {rc if rc is not None else '?'}): {_last_line(self._err.decode(errors='replace'))}"

    def close(self) -> None:
        try:
            self.channel.close()
        except Exception:   # closing a broken channel must not raise out of a collector
            pass


def _keyvalues(out: str) -> dict[str, str]:
    answer: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            answer[key] = value.strip()
    return answer


def _last_line(err: str) -> str:
    """The router's last word, bounded: 600 characters hold a refusal naming two deep paths and why (an outage
    directory under another user's parent), where 200 cut the why off."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return lines[-1][:600] if lines else "no message"
