"""Planning a rollout: which phones, what changes on each, in which waves, and what load it puts on registrars.

Pure functions over the inventory and the playbook (no I/O), so a dry run
touches nothing and a plan can be checked in unit tests. Secrets stay as
`secret:NAME` references here; only the worker that renders a phone's files
resolves them, so plans and their hashes can live in Redis. Secret parameters
are masked as `***` in the parameters and the diff (what a dry run prints and
Redis keeps); their references travel apart, in `secret_refs`, for the worker,
and the content hash is taken over the references so a changed one still
changes the hash.

Rollouts stack: a phone's new parameters are the inventory's, then every value
an earlier rollout's playbook set and this one does not (`Applied.set_by`,
fleet.rollout.applied), then this playbook's. Only a playbook that sets a
value, or names it in `reset`, changes what an earlier rollout set, and the
plan says so in `undoes` ("20 (set by rollout R on DATE) -> 10 (...)").
`--limit` narrows the playbook's targets to some phones, sites or models.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from soundpoint.yamlfile import FileError, source_of

from soundpoint import catalogue, values

from fleet.phoneconf import lint as failover_lint
from fleet.phoneconf import polycom
from fleet.phoneconf import predict
from fleet.phoneconf import secrets as secret_params
from fleet.phoneconf.servers import registrations
from fleet.drivers.control import polling
from fleet.drivers.control.rest import uses_state_polling
from fleet.config import validate
from fleet.config.inventory import Inventory, Phone, Site
from fleet.experiment import playbook as experiment_playbook
from fleet.rollout.applied import Applied, when
from fleet.rollout import power_fallback
from fleet.rollout.playbook import RolloutPlaybook, amount, verbatim_names

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
    verbatim: list[str] = field(default_factory=list)   # uncatalogued, passed through (allow_uncatalogued)
    warnings: list[str] = field(default_factory=list)   # failover set-ups this family cannot run (failover_lint)
    unchecked_reboot: bool = False    # its family cannot report call state and the playbook allows rebooting it anyway
    # fallbacks it may register with only once server 1 fails (UC Software reRegisterOn=1: predict.fallbacks_on_failure)
    on_failure_fallbacks: list[int] = field(default_factory=list)
    # of those, the ones whose address or port this push changes: silence there proves nothing (predict.moved_fallbacks)
    moved_fallbacks: list[int] = field(default_factory=list)
    # name -> [rollout id, when it was planned]: every value a rollout's playbook set, this one's and those kept
    set_by: dict[str, list] = field(default_factory=dict)
    # values an earlier rollout set that this plan changes, one sentence each (stacking: only the playbook does that)
    undoes: list[str] = field(default_factory=list)
    # values an earlier rollout set that stay although the inventory now says otherwise (`reset` takes the inventory's)
    kept: list[str] = field(default_factory=list)
    # what the diff's old values are: "pushed" (the last verified rollout), "inventory" (nothing pushed yet) or
    # "boot server" (the dry run read the site's files: fleet.sites.files.survey, rediff)
    diff_against: str = "inventory"
    # what the phone ran before this push, for `fleet rollout revert`: params (masked), secret_refs, verbatim,
    # config_hash, set_by of the rollout it came from; None when no rollout had pushed to it (the site's files alone)
    previous: dict | None = None
    restore_from: str = ""            # a revert: the rollout whose backups this phone's push writes back
    # strategy.power_cycle_fallback for a phone with a PoE port: seconds its port stays off (0: no fallback)
    power_cycle_off_s: float = 0.0

    def to_dict(self, refs: bool = True) -> dict:
        """The phone's plan; without `refs`, as shown to people (a dry run): no secret reference at all."""
        out = asdict(self)
        if not refs:
            del out["secret_refs"]
            if out["previous"]:
                out["previous"] = {k: v for k, v in out["previous"].items() if k != "secret_refs"}
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


def limit_macs(inv: Inventory, items: list[str]) -> frozenset[str]:
    """The phones `--limit` names (as Ansible's): each item a MAC (any case, with or without colons), a site or a
    model; comma lists allowed; the union. An item that names nothing is a PlanError with "did you mean"."""
    names = [s.name for s in inv.sites]
    models = sorted({p.model for s in inv.sites for p in s.phones})
    macs = {p.mac for s in inv.sites for p in s.phones}
    out: set[str] = set()
    for raw in items:
        for item in (x.strip() for x in raw.split(",")):
            if not item:
                continue
            mac = item.lower().replace(":", "").replace("-", "")
            found = {mac} & macs
            found |= {p.mac for s in inv.sites if s.name == item for p in s.phones}
            found |= {p.mac for s in inv.sites for p in s.phones if p.model.lower() == item.lower()}
            if not found:
                raise PlanError(f"--limit {item!r}: no phone, site or model of that name in inventory {inv.name}"
                                + values.did_you_mean(item, names + models + sorted(macs)))
            out |= found
    if not out:
        raise PlanError("--limit names nothing")
    return frozenset(out)


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
         limits: dict[str, float] | None = None, limit: frozenset[str] | None = None,
         applied: dict[str, Applied] | None = None, now: float | None = None) -> Plan:
    """The rollout's plan. `applied` (fleet.rollout.applied.read) is what each phone runs now and which rollout
    set each value; `last_pushed` (pushed parameters alone, no provenance) is the older, plainer form of it.
    `limit` (limit_macs) keeps only those of the targets."""
    if applied is None:
        applied = {mac: Applied(dict(params)) for mac, params in (last_pushed or {}).items() if params}
    now = time.time() if now is None else now
    selected = targets(inv, pb)
    if not selected:
        raise PlanError("the targets select no phone")
    if limit is not None:
        selected = [(s, p) for s, p in selected if p.mac in limit]
        if not selected:
            raise PlanError("--limit leaves none of the playbook's targets (its targets: "
                            + (", ".join(pb.targets.sites) or "every site")
                            + (f"; models {', '.join(pb.targets.models)}" if pb.targets.models else "")
                            + (f"; {len(pb.targets.macs)} MACs" if pb.targets.macs else "") + ")")
    phones: list[PhonePlan] = []
    verbatim = verbatim_names(pb)   # allow_uncatalogued: written as given, never checked or interpolated
    for site, phone in selected:
        base = inv.effective_params(site, phone)
        ran = applied.get(phone.mac)
        new = dict(base)
        set_by: dict[str, list] = {}
        if ran is not None:      # stacking: what earlier rollouts set stays, unless this playbook sets or resets it
            for name, origin in ran.set_by.items():
                if name in ran.params and name not in pb.params and name not in pb.reset:
                    new[name] = ran.params[name]
                    set_by[name] = list(origin)
        for name, value in pb.params.items():
            new[name] = str(value) if name in verbatim else _interpolate(str(value), site, phone, inv, name)
            set_by[name] = [rollout_id, now]
        kept_verbatim = set(ran.verbatim) & set(set_by) if ran is not None else set()
        for name, value in new.items():
            if name in verbatim or name in kept_verbatim:
                continue
            if name not in pb.params and phone.family.lookup(name) is None:
                continue    # an inherited site/fleet parameter this phone's firmware does not have: it ignores it
            try:
                catalogue.check(name, value, phone.family.name)
            except polycom.ParameterError as exc:
                raise PlanError(f"phone {phone.mac} (site {site.name}): {exc}") from None
            why = secret_params.problem(name, value)   # again after interpolation: "{site.gateway}" may hold a reference
            if why:
                raise PlanError(f"phone {phone.mac} (site {site.name}): {why}")
        old = ran.params if ran is not None else base
        diff = {k: [secret_params.mask(k, old.get(k)), secret_params.mask(k, new.get(k))]
                for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
        undoes = _undoes(ran, new, base, pb) if ran is not None else []
        kept = [f"{k}: {secret_params.mask(k, new[k])} (set by rollout {v[0]} on {when(v[1])}) stays; the inventory "
                f"says {secret_params.mask(k, base[k])} (`reset: [{k}]` takes it)"
                for k, v in sorted(set_by.items()) if v[0] != rollout_id and k in base and base[k] != new[k]]
        masked, refs = secret_params.split(new)
        blind = phone.family.call_state_source is None
        warnings = failover_lint.problems(new, phone.family.name)
        if uses_state_polling(phone):      # by firmware version: UC Software 5.0-5.3 too
            warnings += polling.mode_problems(new, site.collector.events)
        moved = predict.moved_fallbacks(old, new, 1, phone.family.name)
        unprovable = sorted(set(moved) & set(pb.verify.registered_to))
        if unprovable:
            warnings.append(f"server(s) {unprovable} get a new address or port, and with failOver.reRegisterOn=1 the "
                            "phone may register there only once server 1 fails: verify.registered_to passes it only if "
                            "it registers there anyway, else it fails as 'fallback unverified' (verify server 1 alone "
                            "and prove the fallback with the WAN-outage experiment)")
        if blind and not pb.strategy.reboot_without_call_check:
            warnings.append(f"{phone.family.name} cannot report its call state: the phone will be deferred, never "
                            "rebooted (strategy.reboot_without_call_check: true reboots it unchecked)")
        off_s, no_port = power_fallback.planned(pb.strategy, phone)
        warnings += no_port
        phones.append(PhonePlan(phone.mac, site.name, phone.model, masked, diff, config_hash(new), refs,
                                sorted(verbatim | kept_verbatim), warnings,
                                blind and pb.strategy.reboot_without_call_check,
                                predict.fallbacks_on_failure(new, 1, phone.family.name), moved, set_by, undoes, kept,
                                "pushed" if ran is not None else "inventory",
                                ran.previous() if ran is not None else None, power_cycle_off_s=off_s))
    waves = _waves([p.mac for p in phones], pb.strategy.canary, pb.strategy.wave_size)
    per_site = defaultdict(int)
    for p in phones:
        per_site[p.site] += 1
    max_unavailable = {s: max(1, amount(pb.strategy.max_unavailable, n)) for s, n in per_site.items()}
    budget = pb.strategy.failure_budget
    budget_total = failure_budget(budget.total, len(phones))
    budget_sites = ({s: failure_budget(budget.per_site, n) for s, n in per_site.items()}
                    if budget.per_site is not None else None)
    load = refresh_load([(p.site, p.params) for p in phones])
    overloaded = [f"{addr}: {v['primary_down']:.1f} REGISTER/s with the primary down (limit {limits[addr]:g})"
                  if v["primary_down"] > limits[addr] else f"{addr}: {v['normal']:.1f} REGISTER/s (limit {limits[addr]:g})"
                  for addr, v in load.items() if limits and addr in limits and max(v["normal"], v["primary_down"]) > limits[addr]]
    return Plan(rollout_id, phones, waves, dict(max_unavailable), budget_total, budget_sites, load, overloaded)


def _undoes(ran: Applied, new: dict[str, str], base: dict[str, str], pb: RolloutPlaybook) -> list[str]:
    """Each value an earlier rollout set that this plan changes, and why: the playbook sets it, or resets it."""
    out = []
    for name, (rid, at) in sorted(ran.set_by.items()):
        before, after = ran.params.get(name), new.get(name)
        if before == after:
            continue
        if name in pb.params:
            why = "this playbook sets it"
        elif name in base:
            why = "this playbook resets it to the inventory's value"
        else:
            why = "this playbook resets it: fleet no longer writes it, the site's files or the firmware default apply"
        out.append(f"{name}: {secret_params.mask(name, before)} (set by rollout {rid} on {when(at)}) -> "
                   f"{secret_params.mask(name, after) if after is not None else '(not written)'} ({why})")
    return out


def rediff(p: Plan, now_by_mac: dict[str, dict[str, str]]) -> None:
    """The dry run's diff against what each phone applies now: the values the last rollout pushed, and for every
    other value the site's files on the boot server (`now_by_mac`, fleet.sites.files.survey; secrets not read).

    A secret parameter keeps the plan's comparison (references, never values)."""
    for ph in p.phones:
        site_now = now_by_mac.get(ph.mac)
        if site_now is None:
            continue
        pushed = (ph.previous or {}).get("params", {}) if ph.diff_against == "pushed" else {}
        new = ph.params
        diff = {k: v for k, v in ph.diff.items() if secret_params.is_secret(k)}
        for k in sorted(new):
            if secret_params.is_secret(k):
                continue
            old = pushed[k] if k in pushed else site_now.get(k)
            if old != new[k]:
                diff[k] = [old, new[k]]
        for k in sorted(set(pushed) - set(new)):
            if not secret_params.is_secret(k) and pushed[k] != site_now.get(k):
                diff[k] = [pushed[k], site_now.get(k)]   # fleet stops writing it: the site's files apply again
        ph.diff = dict(sorted(diff.items()))
        ph.diff_against = ("pushed" if pushed else "") + (" and " if pushed else "") + "boot server"


def failure_budget(value: int | str, of: int) -> int:
    """Failed phones tolerated out of `of`: a count, or a percent rounded down but at least 1; "0%" tolerates none."""
    return 0 if str(value).strip() in ("0", "0%") else amount(value, of)


def _waves(macs: list[str], canary: int, wave_size: int | str) -> list[list[str]]:
    waves: list[list[str]] = []
    if canary:
        waves.append(macs[:canary])
    rest = macs[canary:]
    size = max(1, amount(wave_size, len(rest)))
    waves += [rest[i:i + size] for i in range(0, len(rest), size)]
    return [w for w in waves if w]


# RFC 3261 timers of a non-INVITE transaction over UDP (17.1.2): Timer E starts at T1 and doubles up to T2,
# Timer F gives up at 64*T1. A Polycom phone uses them when `retryTimeOut` is 0 (polycom.md, "Registration timers").
T1_S = 0.5
T2_S = 4.0
TIMER_F_S = 64 * T1_S


def rfc3261_sends(t1: float = T1_S, t2: float = T2_S, timeout: float = TIMER_F_S) -> int:
    """Transmissions of a non-INVITE request nobody answers: at 0, 0.5, 1.5, 3.5, 7.5, 11.5 ... 31.5 s, so 11."""
    sent, at, interval = 1, 0.0, t1
    while at + interval < timeout:
        at += interval
        sent += 1
        interval = min(2 * interval, t2)
    return sent


def register_sends(retry_timeout_ms: int, retry_max_count: int) -> int:
    """REGISTER transmissions per attempt on an unreachable server.

    `retryTimeOut` 0 means the standard RFC 3261 schedule (about 11 sends in
    32 s); otherwise the phone sends once and retries `retryMaxCount` times,
    `retryTimeOut` apart.
    """
    return rfc3261_sends() if retry_timeout_ms <= 0 else retry_max_count + 1


def _server_attr(params: dict[str, str], reg: int, server: int, attr: str, default: str) -> str:
    # the lookup fleet.phoneconf.predict.server_timing does (it does not keep retryTimeOut itself): keep the two in step
    for key in (f"reg.{reg}.server.{server}.{attr}", f"voIpProt.server.{server}.{attr}"):
        if params.get(key, "") != "":
            return params[key]
    return default


def refresh_load(phones: list[tuple[str, dict[str, str]]]) -> dict[str, dict]:
    """REGISTER requests per second that each server address receives from these phones (R6).

    Every registration counts (fleet.phoneconf.servers.registrations): a phone with three lines refreshes three times.
    normal: every server up, each registration refreshing each of its servers
    (MESSAGES_PER_REFRESH requests per refresh, the challenge included).
    primary_down: server 1 unreachable; each registration sends `register_sends`
    transmissions per attempt, one attempt per retry interval plus the time the
    attempt takes to fail, while the other servers see their normal refreshes.
    `phones` counts phones, `registrations` their lines, per address.
    """
    load: dict[str, dict] = defaultdict(lambda: {"normal": 0.0, "primary_down": 0.0, "phones": set(), "registrations": 0})
    for n, (_, params) in enumerate(phones):
        for reg in registrations(params):      # the lines wire attribution expects REGISTERs of, too
            for t in predict.servers(params, reg):
                if not t.register:
                    continue
                rate = MESSAGES_PER_REFRESH / max(predict.refresh_interval(t.expires, t.overlap), 1)
                entry = load[t.address]
                entry["normal"] += rate
                entry["phones"].add(n)
                entry["registrations"] += 1
                if t.index == 1:
                    retry_ms = int(_server_attr(params, reg, t.index, "retryTimeOut", "0") or 0)
                    sends = register_sends(retry_ms, t.retry_max_count)
                    entry["primary_down"] += sends / (t.retry_interval + t.transaction_timeout)
                else:
                    entry["primary_down"] += rate
    return {k: {"normal": round(v["normal"], 3), "primary_down": round(v["primary_down"], 3), "phones": len(v["phones"]),
                "registrations": v["registrations"]}
            for k, v in load.items()}


def check_against(pb: RolloutPlaybook, inventory, path: str | Path) -> None:
    """Cross-checks that need the inventory, with the playbook's line numbers; raise FileError.

    Every target site, MAC and model must exist (a typo in one of several MACs would otherwise
    silently shrink the rollout), parameters must suit the inventory's firmware family, the servers
    to verify must be configured once the parameters are applied, and the drill must fit its site.
    """
    src = source_of(pb, path)
    names = [s.name for s in inventory.sites]
    for i, name in enumerate(pb.targets.sites):
        if name not in names:
            raise src.error(("targets", "sites", i), f"no site {name!r} in inventory {inventory.name}"
                            + values.did_you_mean(name, names))
    sites = [inventory.site(n) for n in (pb.targets.sites or names)]
    macs = {p.mac for s in sites for p in s.phones}
    for i, mac in enumerate(pb.targets.macs):
        if mac not in macs:
            raise src.error(("targets", "macs", i), f"{mac} is not a phone of the targeted sites"
                            + values.did_you_mean(mac, macs))
    models = {p.model for s in sites for p in s.phones}
    for i, model in enumerate(pb.targets.models):
        if model not in models:
            raise src.error(("targets", "models", i), f"no {model} phone in the targeted sites")
    verbatim = verbatim_names(pb)
    for name, value in pb.params.items():
        if name in verbatim:
            continue
        try:
            validate.param(name, value, None, allow_placeholders=True)
        except ValueError as exc:
            raise src.error(("params", name), str(exc)) from None
    try:
        chosen = targets(inventory, pb)
    except PlanError as exc:
        raise src.error(("targets",), str(exc)) from None
    if not chosen:
        raise src.error(("targets",), "the targets select no phone")
    for site, phone in chosen:
        new = inventory.effective_params(site, phone)
        for name, value in pb.params.items():
            text = str(value)
            if name in verbatim:
                new[name] = text
                continue
            for obj, attr in validate.placeholders(text):
                ref = {"site": site, "phone": phone, "provider": inventory.provider}[obj]
                if ref is None:
                    raise src.error(("params", name), f"{{{obj}.{attr}}}: the inventory has no {obj}")
                text = text.replace(f"{{{obj}.{attr}}}", str(getattr(ref, attr)))
            try:
                validate.param(name, text, phone.family.name)
            except ValueError as exc:
                raise src.error(("params", name), f"phone {phone.mac} (site {site.name}): {exc}") from None
            new[name] = text
        servers = predict.servers(new)
        configured = {t.index for t in servers}
        silent = {t.index for t in servers if not t.register}
        for i, n in enumerate(pb.verify.registered_to):
            if n in silent:
                raise src.error(("verify", "registered_to", i), f"server {n} of phone {phone.mac} has register=0: "
                                                                "the phone never registers there")
            if n not in configured:
                raise src.error(("verify", "registered_to", i),
                                f"server {n} is not configured on phone {phone.mac} (site {site.name}) once this "
                                f"rollout's parameters are applied; its servers: {sorted(configured) or 'none'}")
    if pb.drill is not None:
        drill = experiment_playbook.load(pb.drill)
        canary_site = chosen[0][0].name
        try:
            experiment_playbook.check_against(drill.model_copy(update={"site": canary_site}), inventory, pb.drill,
                                              extra_params=pb.params)
        except FileError as exc:
            raise src.error(("drill",), f"the drill cannot run on site {canary_site}: {exc}") from None
