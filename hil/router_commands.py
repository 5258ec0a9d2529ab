"""The router's commands, emulated on its WAN state: `ip`, `tc`, `iptables` and `modprobe` as a Linux router answers them.

Only what fleet's Linux router platform sends is emulated, but with Linux's
own answers and side effects (routes lost when a link goes down, the
"Exclusivity flag" when a root qdisc exists, `-C` to check a rule), so the
driver's scripts are judged as a real router would judge them.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field


@dataclass
class WanState:
    """The WAN side as a Linux router holds it: link flag, routes, FORWARD rules and the root qdisc.

    The data plane is derived from the rules and the qdisc the way the kernel
    would apply them, so the router commands fleet sends are judged by their
    effect, not by their spelling."""
    name: str = "wan0"
    admin_up: bool = True
    routes: list[str] = field(default_factory=lambda: ["default via 203.0.113.1 proto static"])
    rules: list[list[str]] = field(default_factory=list)      # FORWARD chain, in order, each rule's words
    root_qdisc: list[str] = field(default_factory=list)       # [] = the kernel's default; else e.g. ["netem", "1fe1:", ...]
    history: list[dict] = field(default_factory=list)

    def _drop_rules(self) -> list[list[str]]:
        return [r for r in self.rules if r[-2:] == ["-j", "DROP"]]

    @property
    def drop_all(self) -> bool:
        return any(("-i" in r or "-o" in r) and "statistic" not in r and "--dport" not in r for r in self._drop_rules())

    @property
    def drop_ports(self) -> set[int]:
        return {int(r[r.index("--dport") + 1]) for r in self._drop_rules() if "--dport" in r}

    @property
    def loss(self) -> float:
        probs = [float(r[r.index("--probability") + 1]) for r in self._drop_rules() if "--probability" in r]
        return max(probs, default=0.0)

    @property
    def delay(self) -> float:
        q = self.root_qdisc
        return _duration(q[q.index("delay") + 1]) if q[:1] == ["netem"] and "delay" in q else 0.0

    def passes(self, dport: int) -> bool:
        if not self.admin_up or self.drop_all or dport in self.drop_ports:
            return False
        return not (self.loss and random.random() < self.loss)


class RouterCommands:
    """Runs one command line's argv against a WanState; keeps a log of every command for tests to read."""

    def __init__(self, wan: WanState) -> None:
        self.wan = wan
        self.log: list[dict] = []

    def apply(self, argv: list[str]) -> tuple[int, str, str]:
        """Run one stand-in command (`ip ...`, `tc ...`, `iptables ...`); returns rc, stdout, stderr."""
        self.log.append({"t": time.time(), "argv": argv})
        try:
            tool, args = argv[0], argv[1:]
            if tool == "ip":
                return self._ip(args)
            if tool == "tc":
                return self._tc(args)
            if tool == "iptables":
                return self._iptables(args)
            if tool == "modprobe":
                return self._modprobe(args)
        except (IndexError, ValueError) as exc:
            return 1, "", f"{argv[0]}: bad arguments ({exc})\n"
        return 127, "", f"{argv[0]}: command not found\n"

    def _note(self, what: str) -> None:
        self.wan.history.append({"t": time.time(), "change": what, "admin_up": self.wan.admin_up})

    def _ip(self, args: list[str]) -> tuple[int, str, str]:
        args = [a for a in args if a not in ("-o", "-oneline")]
        if args[:2] == ["link", "set"]:
            rest = args[2:]
            if rest and rest[0] == "dev":
                rest = rest[1:]
            dev, action = rest[0], rest[1]
            if dev != self.wan.name and dev != "lan0":
                return 1, "", f'Cannot find device "{dev}"\n'
            if dev == self.wan.name and action in ("up", "down"):
                if action == "down" and self.wan.admin_up:
                    self.wan.routes = []          # as on Linux: routes through the link go with it, and up does not bring them back
                self.wan.admin_up = action == "up"
                self._note(f"link {action}")
                return 0, "", ""
            return 1, "", f"ip: unsupported action {action}\n"
        if args[:2] == ["link", "show"] or args == ["link"]:
            rest = args[2:]
            if rest and rest[0] == "dev":
                rest = rest[1:]
            devs = [rest[0]] if rest else ["lan0", self.wan.name]
            lines = []
            for i, dev in enumerate(devs, start=2):
                if dev == "lan0":
                    up = True
                elif dev == self.wan.name:
                    up = self.wan.admin_up
                else:
                    return 1, "", f'Device "{dev}" does not exist.\n'
                flags = "BROADCAST,MULTICAST,UP,LOWER_UP" if up else "BROADCAST,MULTICAST"
                state = "UP" if up else "DOWN"
                lines.append(f"{i}: {dev}: <{flags}> mtu 1500 qdisc noqueue state {state} mode DEFAULT group default qlen 1000")
            return 0, "\n".join(lines) + "\n", ""
        if args[:2] == ["route", "show"]:
            return 0, "".join(r + "\n" for r in self.wan.routes), ""
        if args[:2] == ["route", "replace"]:
            words = args[2:]
            if "dev" in words:
                i = words.index("dev")
                words = words[:i] + words[i + 2:]
            route = " ".join(words)
            if route not in self.wan.routes:
                self.wan.routes.append(route)
            self._note(f"route {route}")
            return 0, "", ""
        return 1, "", "ip: only 'link set|show' and 'route show|replace' are emulated\n"

    def _modprobe(self, args: list[str]) -> tuple[int, str, str]:
        """The emulated kernel has the qdiscs it emulates (netem, tbf) as modules, as a Debian router's has."""
        names = [a for a in args if not a.startswith("-")]
        missing = [n for n in names if n not in ("sch_netem", "sch_tbf")]
        if missing:
            return 1, "", f"modprobe: FATAL: Module {missing[0]} not found in directory /lib/modules/emulated\n"
        return 0, "", ""

    def _tc(self, args: list[str]) -> tuple[int, str, str]:
        if args[:1] != ["qdisc"]:
            return 1, "", "tc: only qdisc is emulated\n"
        op, words = args[1], args[2:]
        if "dev" in words and words[words.index("dev") + 1] != self.wan.name:
            return 1, "", f'Cannot find device "{words[words.index("dev") + 1]}"\n'
        if op == "show":
            q = self.wan.root_qdisc
            if q:
                desc = f"qdisc {q[0]} {q[1]} dev {self.wan.name} root refcnt 2 {' '.join(q[2:])}".rstrip()
            else:
                desc = f"qdisc noqueue 0: dev {self.wan.name} root refcnt 2"
            return 0, desc + "\n", ""
        if op in ("add", "replace"):
            if "root" not in words:
                return 1, "", "tc: only root qdiscs are emulated\n"
            after = words[words.index("root") + 1:]
            handle = "8001:"
            if after[:1] == ["handle"]:
                handle, after = after[1], after[2:]
            if not after:
                return 1, "", "tc: qdisc kind missing\n"
            if op == "add" and self.wan.root_qdisc:
                return 2, "", "Error: Exclusivity flag on, cannot modify.\n"
            self.wan.root_qdisc = [after[0], handle, *after[1:]]
            self._note(f"qdisc {' '.join(self.wan.root_qdisc)}")
            return 0, "", ""
        if op == "del":
            if not self.wan.root_qdisc:
                return 2, "", "Error: Cannot delete qdisc with handle of zero.\n"
            if "handle" in words and words[words.index("handle") + 1] != self.wan.root_qdisc[1]:
                return 2, "", "Error: Invalid handle.\n"
            self.wan.root_qdisc = []
            self._note("qdisc removed")
            return 0, "", ""
        return 1, "", f"tc: unsupported {op}\n"

    def _iptables(self, args: list[str]) -> tuple[int, str, str]:
        args = [a for a in args if a != "-w"]
        if args[:1] == ["-S"]:
            if args[1:] not in ([], ["FORWARD"]):
                return 1, "", "iptables: only the FORWARD chain is emulated\n"
            lines = ["-P FORWARD ACCEPT"] + ["-A FORWARD " + " ".join(_quote_comment(r)) for r in self.wan.rules]
            return 0, "\n".join(lines) + "\n", ""
        if len(args) < 2 or args[0] not in ("-I", "-A", "-D", "-C") or args[1] != "FORWARD":
            return 1, "", "iptables: only FORWARD rules are emulated\n"
        op, spec = args[0], args[2:]
        if op == "-D" and len(spec) == 1 and spec[0].isdigit():
            n = int(spec[0])
            if not 1 <= n <= len(self.wan.rules):
                return 1, "", "iptables: Index of deletion too big.\n"
            removed = self.wan.rules.pop(n - 1)
            self._note(f"rule removed: {' '.join(removed)}")
            return 0, "", ""
        if "-j" not in spec or spec.index("-j") != len(spec) - 2:
            return 2, "", "iptables: a rule must end with -j TARGET\n"
        for opt in ("--dport", "--probability"):
            if opt in spec:
                float(spec[spec.index(opt) + 1])     # ValueError: bad argument, as iptables refuses it
        if op == "-C":
            return (0, "", "") if spec in self.wan.rules else (1, "", "iptables: Bad rule (does a matching rule exist in that chain?).\n")
        if op == "-D":
            if spec not in self.wan.rules:
                return 1, "", "iptables: Bad rule (does a matching rule exist in that chain?).\n"
            self.wan.rules.remove(spec)
            self._note(f"rule removed: {' '.join(spec)}")
            return 0, "", ""
        if op == "-I":
            self.wan.rules.insert(0, spec)
        else:
            self.wan.rules.append(spec)
        self._note(f"rule added: {' '.join(spec)}")
        return 0, "", ""


def _duration(text: str) -> float:
    text = text.strip().lower()
    for suffix, scale in (("ms", 0.001), ("us", 1e-6), ("s", 1.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text) / 1000 if text else 0.0


def _quote_comment(rule: list[str]) -> list[str]:
    """iptables -S prints a comment in double quotes."""
    out = list(rule)
    if "--comment" in out:
        i = out.index("--comment") + 1
        out[i] = f'"{out[i]}"'
    return out
