"""Planning a rollout: which phones, what changes on each, in which waves, and what load it puts on registrars.

Pure functions over the inventory and the playbook (no I/O), so a dry run
touches nothing and a plan can be checked in unit tests. Secrets stay as
`secret:NAME` references here; only the worker that renders a phone's files
resolves them, so plans and their hashes can live in Redis. Secret parameters
are masked as `***` in the parameters and the diff (what a dry run prints and
Redis keeps); their references travel apart, in `secret_refs`, for the worker,
and the content hash is taken over the references so a changed one still
changes the hash.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field

from . import polycom, predict, secret_params
from .inventory import Inventory, Phone, Site
from .rollout_playbook import RolloutPlaybook, amount

REF = re.compile(r"\{(site|phone|provider)\.([a-z_]+)\}")
MESSAGES_PER_REFRESH = 2   # REGISTER, 401 challenge, REGISTER with credentials: two requests per refresh


class PlanError(ValueError):
    """The playbook cannot be applied to this inventory; the message names the phone and parameter."""


@dataclass
class PhonePlan:
    mac: str
    site: str
    model: str
    params: dict[str, str]            # complete new parameter set, secret parameters masked as ***
    diff: dict[str, list]             # name -> [old, new], secret parameters masked as ***
    config_hash: str                  # over the unmasked parameters (secret references, never values)
    secret_refs: dict[str, str] = field(default_factory=dict)   # secret parameter -> secret:NAME / env:VAR

    def to_dict(self, refs: bool = True) -> dict:
        """The phone's plan; without `refs`, as shown to people (a dry run): no secret reference at all."""
        out = asdict(self)
        if not refs:
            del out["secret_refs"]
        return out

    def pushed_params(self) -> dict[str, str]:
        """What the phone will run, with secrets as references: the next plan's diff compares against it."""
        return {**self.params, **self.secret_refs}


@dataclass
class Plan:
    rollout: str
    phones: list[PhonePlan]
    waves: list[list[str]]                     # MACs; wave 0 holds the canaries when there are any
    max_unavailable: dict[str, int]            # per site
    budget_total: int
    budget_per_site: dict[str, int] | None
    load: dict[str, dict] = field(default_factory=dict)
    overloaded: list[str] = field(default_factory=list)

    def to_dict(self, refs: bool = True) -> dict:
        return {"rollout": self.rollout, "phones": [p.to_dict(refs) for p in self.phones], "waves": self.waves,
                "max_unavailable": self.max_unavailable, "budget_total": self.budget_total,
                "budget_per_site": self.budget_per_site, "load": self.load, "overloaded": self.overloaded}


def _interpolate(value: str, site: Site, phone: Phone, inv: Inventory, name: str) -> str:
    def sub(m: re.Match) -> str:
        obj = {"site": site, "phone": phone, "provider": inv.provider}[m.group(1)]
        if obj is None or not hasattr(obj, m.group(2)):
            raise PlanError(f"parameter {name}: {m.group(0)} does not name an inventory value")
        return str(getattr(obj, m.group(2)))
    return REF.sub(sub, str(value))


def config_hash(params: dict[str, str]) -> str:
    """Content address of a phone's configuration (secret references, not their values)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def targets(inv: Inventory, pb: RolloutPlaybook) -> list[tuple[Site, Phone]]:
    sites = pb.targets.sites or [s.name for s in inv.sites]
    out = []
    for name in sites:
        try:
            site = inv.site(name)
        except KeyError as exc:
            raise PlanError(str(exc.args[0])) from None
        for p in site.phones:
            if pb.targets.models and p.model not in pb.targets.models:
                continue
            if pb.targets.macs and p.mac not in {m.lower().replace(":", "") for m in pb.targets.macs}:
                continue
            out.append((site, p))
    return sorted(out, key=lambda sp: (sp[0].name, sp[1].mac))


def plan(inv: Inventory, pb: RolloutPlaybook, rollout_id: str, last_pushed: dict[str, dict] | None = None,
         limits: dict[str, float] | None = None) -> Plan:
    last_pushed = last_pushed or {}
    selected = targets(inv, pb)
    if not selected:
        raise PlanError("the targets select no phone")
    phones: list[PhonePlan] = []
    for site, phone in selected:
        base = inv.effective_params(site, phone)
        new = dict(base)
        for name, value in pb.params.items():
            new[name] = _interpolate(str(value), site, phone, inv, name)
        for name, value in new.items():
            if name not in pb.params and phone.family.lookup(name) is None:
                continue    # an inherited site/fleet parameter this phone's firmware does not have: it ignores it
            try:
                polycom.check(name, value, phone.family.name)
            except polycom.ParameterError as exc:
                raise PlanError(f"phone {phone.mac} (site {site.name}): {exc}") from None
            why = secret_params.problem(name, value)   # again after interpolation: "{site.gateway}" may hold a reference
            if why:
                raise PlanError(f"phone {phone.mac} (site {site.name}): {why}")
        old = last_pushed.get(phone.mac) or base
        diff = {k: [secret_params.mask(k, old.get(k)), secret_params.mask(k, new.get(k))]
                for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
        masked, refs = secret_params.split(new)
        phones.append(PhonePlan(phone.mac, site.name, phone.model, masked, diff, config_hash(new), refs))
    waves = _waves([p.mac for p in phones], pb.strategy.canary, pb.strategy.wave_size)
    per_site = defaultdict(int)
    for p in phones:
        per_site[p.site] += 1
    max_unavailable = {s: max(1, amount(pb.strategy.max_unavailable, n)) for s, n in per_site.items()}
    budget = pb.strategy.failure_budget
    budget_total = amount(budget.total, len(phones)) if str(budget.total) not in ("0", "0%") else 0
    budget_sites = ({s: amount(budget.per_site, n) for s, n in per_site.items()} if budget.per_site is not None else None)
    load = refresh_load([(p.site, p.params) for p in phones])
    overloaded = [f"{addr}: {v['primary_down']:.1f} REGISTER/s with the primary down (limit {limits[addr]:g})"
                  if v["primary_down"] > limits[addr] else f"{addr}: {v['normal']:.1f} REGISTER/s (limit {limits[addr]:g})"
                  for addr, v in load.items() if limits and addr in limits and max(v["normal"], v["primary_down"]) > limits[addr]]
    return Plan(rollout_id, phones, waves, dict(max_unavailable), budget_total, budget_sites, load, overloaded)


def _waves(macs: list[str], canary: int, wave_size: int | str) -> list[list[str]]:
    waves: list[list[str]] = []
    if canary:
        waves.append(macs[:canary])
    rest = macs[canary:]
    size = max(1, amount(wave_size, len(rest)))
    waves += [rest[i:i + size] for i in range(0, len(rest), size)]
    return [w for w in waves if w]


def refresh_load(phones: list[tuple[str, dict[str, str]]]) -> dict[str, dict]:
    """REGISTER requests per second that each server address receives from these phones (R6).

    normal: every server up, each phone refreshing each registered server.
    primary_down: server 1 unreachable; phones retry it every retry interval with (retryMaxCount + 1)
    transmissions per attempt, while the other servers see their normal refreshes.
    """
    load: dict[str, dict] = defaultdict(lambda: {"normal": 0.0, "primary_down": 0.0, "phones": 0})
    for _, params in phones:
        for t in predict.servers(params):
            if not t.register:
                continue
            rate = MESSAGES_PER_REFRESH / max(predict.refresh_interval(t.expires, t.overlap), 1)
            entry = load[t.address]
            entry["normal"] += rate
            entry["phones"] += 1
            if t.index == 1:
                entry["primary_down"] += (t.retry_max_count + 1) / (t.retry_interval + t.transaction_timeout)
            else:
                entry["primary_down"] += rate
    return {k: {"normal": round(v["normal"], 3), "primary_down": round(v["primary_down"], 3), "phones": v["phones"]}
            for k, v in load.items()}
