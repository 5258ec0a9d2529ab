"""A Linux router over SSH (Debian, VyOS, OpenWrt with iptables): `ip`, `iptables` and `tc` on the WAN interface.

Platform facts this table encodes:
- `ip link set dev X up` does not bring back the routes through X, so a
  link-down cut saves them and the restore replaces them;
- drop, dns-fail and degrade's loss are FORWARD rules tagged with a comment
  naming the outage (`fleet-<id>`), so a repeated cut adds nothing and a
  restore deletes exactly ours (works with iptables-legacy and iptables-nft);
- degrade's delay and rate need a root qdisc (netem, tbf) under our own
  handle 1fe1:; when the WAN interface already has a root qdisc of its own
  (the router's QoS), the cut is refused before anything changes rather than
  replacing it; loss alone never touches qdiscs (it is an iptables
  `statistic` match, which iptables-nft turns into nft's `meta random`);
- delay needs the kernel's sch_netem, which many router and cloud kernels
  lack (`tc` then says "Specified qdisc kind is unknown" only after the
  dead-man is armed): the precheck looks for the module (loaded, loadable
  with modprobe, or built in) and refuses a delay before anything changes;
  rate uses tbf, which such kernels do have.
"""
from __future__ import annotations

import re

from fleet.config.inventory import Credentials, Router
from fleet.drivers.errors import MalformedAnswer
from fleet.drivers.router import WanState
from fleet.drivers.router.ssh_base import Platform, SshRouter

QDISC_HANDLE = "1fe1:"

PLATFORM = Platform(
    precheck={
        # a link already down is someone else's outage (another controller's, an operator's): cutting nothing and
        # answering "cut" would let this outage's restore bring up a link it never took down
        "link-down": r'''link=$(ip -o link show dev "$WAN") || exit 73
    if ! printf '%s\n' "$link" | grep -Eq '[<,]UP[,>]'; then
      echo "fleet: $WAN is already down (not by outage $ID); a link-down cut would do nothing here, refusing it" >&2; exit 73
    fi''',
        "drop": 'ip -o link show dev "$WAN" >/dev/null || exit 73',
        "dns-fail": ':',
        "degrade": r'''if [ "$DELAY" != 0 ] && ! { [ -d /sys/module/sch_netem ] || modprobe -q sch_netem 2>/dev/null \
        || grep -qsw sch_netem "/lib/modules/$(uname -r)/modules.builtin"; }; then
      echo "fleet: this router's kernel has no netem (sch_netem is neither loaded, loadable nor built in), so a degrade with delay cannot be made on it; use loss or rate_kbit" >&2; exit 73
    fi
    if [ "$DELAY" != 0 ] || [ "$RATE" != 0 ]; then
      root=$(tc qdisc show dev "$WAN" | awk '/ root/ {print $2 " " $3; exit}')
      case "$root" in
        ""|*" 0:") ;;
        *) echo "fleet: $WAN has its own root qdisc ($root); a degrade with delay or rate would replace it" >&2; exit 73 ;;
      esac
    fi''',
    },
    cut={
        "link-down": r'''if ip -o link show dev "$WAN" | grep -Eq '[<,]UP[,>]'; then
      ip route show dev "$WAN" > "$F.routes"
      : > "$F.linkdown"
      ip link set dev "$WAN" down
    fi''',
        "drop": r'''add_rule -i "$WAN" -m comment --comment "$TAG" -j DROP
    add_rule -o "$WAN" -m comment --comment "$TAG" -j DROP''',
        "dns-fail": r'''add_rule -p udp --dport "$DNSPORT" -m comment --comment "$TAG" -j DROP
    add_rule -p tcp --dport "$DNSPORT" -m comment --comment "$TAG" -j DROP''',
        "degrade": r'''if [ "$PROB" != 0 ]; then
      add_rule -i "$WAN" -m statistic --mode random --probability "$PROB" -m comment --comment "$TAG" -j DROP
      add_rule -o "$WAN" -m statistic --mode random --probability "$PROB" -m comment --comment "$TAG" -j DROP
    fi
    if [ "$DELAY" != 0 ]; then
      : > "$F.qdisc"
      if [ "$RATE" != 0 ]; then tc qdisc add dev "$WAN" root handle 1fe1: netem delay "${DELAY}ms" rate "${RATE}kbit"
      else tc qdisc add dev "$WAN" root handle 1fe1: netem delay "${DELAY}ms"; fi
    elif [ "$RATE" != 0 ]; then
      : > "$F.qdisc"
      tc qdisc add dev "$WAN" root handle 1fe1: tbf rate "${RATE}kbit" burst 32kbit latency 400ms
    fi''',
    },
    restore=r'''if [ -e "$F.rules" ]; then
  while read -r spec; do
    k=0
    # shellcheck disable=SC2086  (the saved rule is our own words: interface, numbers, our tag)
    while [ "$k" -lt 50 ] && iptables -w -C FORWARD $spec 2>/dev/null; do
      iptables -w -D FORWARD $spec || { fail=1; break; }
      k=$((k+1))
    done
  done < "$F.rules"
fi
if [ -e "$F.qdisc" ] && tc qdisc show dev "$WAN" | grep -Eq '^qdisc [a-z_]+ 1fe1: .*root'; then
  tc qdisc del dev "$WAN" root handle 1fe1: || fail=1
fi
if [ -e "$F.linkdown" ]; then
  ip link set dev "$WAN" up || fail=1
  if [ -e "$F.routes" ]; then
    # the link may take a moment to carry routes again: a route that cannot be put back after 5 tries fails the restore
    while read -r r; do
      [ -n "$r" ] || continue
      t=0
      # shellcheck disable=SC2086
      until ip route replace $r dev "$WAN" 2>/dev/null; do
        t=$((t+1)); if [ "$t" -ge 5 ]; then fail=1; break; fi; sleep 1
      done
    done < "$F.routes"
  fi
fi''',
    state=r'''echo "@link"; ip -o link show dev "$WAN" 2>&1
echo "@rules"; iptables -w -S FORWARD 2>&1
echo "@qdisc"; tc qdisc show dev "$WAN" 2>&1
echo "@routes"; ip route show dev "$WAN" 2>&1
if [ "$ID" != "-" ] && [ -e "$F.routes" ]; then echo "@saved_routes"; cat "$F.routes"; fi''',
)
MODES = tuple(PLATFORM.cut)

_LINK = re.compile(r"^\d+:\s+(?P<dev>[^:@]+)[^<]*<(?P<flags>[^>]*)>")


class LinuxSshRouter(SshRouter):
    platform = PLATFORM

    def parse_state(self, sections: dict[str, list[str]], outage_id: str | None) -> WanState:
        link = " ".join(sections.get("link", [])).strip()
        m = _LINK.match(link)
        if not m:
            raise MalformedAnswer(self.name, f"cannot parse `ip link show` output: {link[:120]!r}")
        tag = f"fleet-{outage_id}" if outage_id else "fleet-"
        ours = [r for r in sections.get("rules", []) if r.startswith("-A ") and _tagged(r, tag)]
        qdisc = [q for q in sections.get("qdisc", []) if " root" in q]
        ours_qdisc = any(re.match(r"qdisc \S+ " + QDISC_HANDLE + " ", q.strip()) for q in qdisc)
        wan = self.router.wan_interface
        saved = {_route(r) for r in sections.get("saved_routes", []) if r.strip()}
        standing = None
        if outage_id:
            marks = dict(line.split(" ", 1) if " " in line else (line, "") for line in sections.get("outage", []))
            standing = ("restored by " + marks["restored"].split(" ")[0] if "restored" in marks
                        else "cancelled before the cut" if "cancelled" in marks
                        else "cut" if "cut" in marks else "cut failed" if "cutting" in marks else "unknown to the router")
        return WanState(
            link_up="UP" in m["flags"].split(","),
            dropping=any((f"-i {wan} " in r or f"-o {wan} " in r) and "statistic" not in r for r in ours),
            dns_blocked=any(f"--dport {self.router.dns_port} " in r for r in ours),
            degraded=ours_qdisc or any("statistic" in r for r in ours),
            rules_ours=len(ours),
            qdisc_ours=ours_qdisc,
            root_qdisc=qdisc[0].strip()[:120] if qdisc else "",
            routes_missing=tuple(sorted(saved - {_route(r) for r in sections.get("routes", []) if r.strip()})),
            outage=standing,
        )


def _route(line: str) -> str:
    """A route as `ip route show` prints it, without the flags that come and go with the carrier."""
    return " ".join(w for w in line.split() if w not in ("linkdown", "dead", "onlink"))


def _tagged(rule: str, tag: str) -> bool:
    """iptables prints a comment quoted or bare depending on version; match the tag as a whole word either way."""
    return re.search(r'--comment "?' + re.escape(tag) + (r'[A-Za-z0-9_-]*' if tag.endswith("-") else "") + r'"?(\s|$)', rule) is not None


def connect(router: Router, credentials: Credentials) -> LinuxSshRouter:
    return LinuxSshRouter(router, credentials)
