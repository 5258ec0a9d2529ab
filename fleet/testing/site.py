"""The site a user's HIL test runs against: its phones, their working server, outages, calls and the evidence.

One object per test session (the `fleet_site` fixture), built from the inventory and its secrets file as every
fleet command reads them. It talks to the devices directly: the router driver for cuts, the phones' REST API
for calls, the site's per-server evidence sources in this process (fleet.testing.evidence) for which server a
phone works with. No Redis and no Celery worker: a test that cuts a WAN needs the router and the evidence, not
a queue. (The per-phone REST lock lives in Redis and is not taken here: a site collector polling REST at the same
moment may see one busy answer, which its poller retries.)

Times are measured as an experiment measures them (fleet.experiment.verdict: `caused_change`, the predicted
bounds from each phone's configuration), so a user's test and `fleet experiment run` agree on a phone.
"""
from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager
from typing import Any, Iterable

from fleet.config.inventory import Inventory, Phone, Secrets
from fleet.drivers.control.rest import RestPhone
from fleet.experiment.verdict import OutageWindow, caused_change, predicted_bounds
from fleet.phoneconf import predict
from fleet.testing import wan
from fleet.testing.evidence import EvidenceUnavailable, SiteEvidence
from soundpoint.redact import redact

UNKNOWN_BOUND_S = 120.0   # a wait whose phone's configuration predicts no bound (no fallback, no expiry given)
EVIDENCE_ROWS = 60        # observations per phone a report property carries (the newest; the rest stay in memory)

PhoneRef = Phone | str


def _time(value: Any) -> float | None:
    """A wall time from a router answer's dict (a number), else None."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class NotOnServer(AssertionError):
    """Phones did not reach the server in time: a failed expectation (the test fails, it does not error)."""


def selected(phones: Iterable[Phone], family: str | Iterable[str] | None = None,
             model: str | Iterable[str] | None = None) -> list[Phone]:
    """The phones of the given firmware family (families' names: uc-5.x ...) and model ("VVX 410"); each may be
    one name or several, None for any."""
    def names(value: str | Iterable[str] | None) -> set[str] | None:
        return None if value is None else {value} if isinstance(value, str) else set(value)

    families, models = names(family), names(model)
    return [p for p in phones if (families is None or p.family.name in families)
            and (models is None or p.model in models)]


class FleetSite:
    """One site of the inventory, as the plugin's fixtures hand it to tests."""

    def __init__(self, inventory: Inventory, secrets: Secrets, name: str) -> None:
        self.inventory, self.secrets = inventory, secrets
        try:
            self.site = inventory.site(name)
        except KeyError:
            known = ", ".join(s.name for s in inventory.sites)
            raise ValueError(f"--fleet-site {name}: no such site in the inventory (it has {known})") from None
        self.name = self.site.name
        self.phones: list[Phone] = list(self.site.phones)
        self.outages: list[wan.OutageRun] = []
        self._evidence: SiteEvidence | None = None

    # ------------------------------------------------------------ phones
    def phone(self, ref: PhoneRef) -> Phone:
        mac = ref.mac if isinstance(ref, Phone) else str(ref).lower()
        for p in self.phones:
            if p.mac == mac:
                return p
        raise ValueError(f"phone {mac} is not a phone of site {self.name}")

    def select(self, family: str | Iterable[str] | None = None, model: str | Iterable[str] | None = None) -> list[Phone]:
        return selected(self.phones, family, model)

    def params(self, ref: PhoneRef) -> dict[str, str]:
        return self.inventory.effective_params(self.site, self.phone(ref))

    def predicted(self, ref: PhoneRef) -> dict[str, float | None]:
        """The phone's predicted bounds from its configuration (fleet.phoneconf.predict, the experiment's):
        failover (cut -> a fallback works), recovery (restore -> server 1 works), and `refresh`: the longest
        expiry it registers with (every server's state is on the wire at least once within it)."""
        phone = self.phone(ref)
        params = self.params(phone)
        expiries = [t.expires for t in predict.servers(params, family=phone.family.name) if t.register and t.expires]
        return {"failover": predict.failover_max(params, family=phone.family.name),
                "recovery": predict.recovery_max(params, family=phone.family.name),
                "refresh": float(max(expiries)) if expiries else None}

    def timeout_for(self, measure: str, phones: Iterable[PhoneRef] | None = None) -> float:
        """A wait for `measure` (failover, recovery, refresh) over `phones` (all by default) with a generous margin
        from the configured timers, not from this machine's speed: twice the slowest phone's predicted bound plus
        10 s (UNKNOWN_BOUND_S where a phone's configuration predicts none)."""
        bounds = [self.predicted(p)[measure] for p in (self.phones if phones is None else phones)]
        slowest = max((b if b is not None else UNKNOWN_BOUND_S for b in bounds), default=UNKNOWN_BOUND_S)
        return 2 * slowest + 10.0

    # ------------------------------------------------------------ evidence
    @property
    def evidence_sources(self) -> SiteEvidence:
        """The site's evidence, started on first use (EvidenceUnavailable when the inventory names none)."""
        if self._evidence is None:
            self._evidence = SiteEvidence(self.inventory, self.secrets, self.site).start()
        return self._evidence

    def working_server(self, ref: PhoneRef) -> int | None:
        """The phone's working server now (1-based), None while the evidence cannot say."""
        return self.evidence_sources.working_server(self.phone(ref).mac)

    def wait_for_server(self, phones: Iterable[PhoneRef], server: int, timeout: float) -> dict[str, float]:
        """Wait until every phone's working server is `server`; each MAC with when it was first seen there.
        NotOnServer (an AssertionError) past `timeout`, naming each phone that is not and where it is."""
        macs = [self.phone(p).mac for p in phones]
        ev = self.evidence_sources
        reached: dict[str, float] = {}

        def all_there() -> bool:
            now = time.time()
            for mac in macs:
                if mac not in reached and ev.working_server(mac) == server:
                    reached[mac] = now
            return len(reached) == len(macs)

        if not ev.wait(all_there, timeout):
            missing = {mac: ev.working_server(mac) for mac in macs if mac not in reached}
            raise NotOnServer(f"{len(missing)} of {len(macs)} phones of site {self.name} not on server {server} within "
                              f"{timeout:g} s: " + ", ".join(f"{mac} on {ws if ws is not None else 'unknown'}"
                                                              for mac, ws in missing.items()))
        return reached

    def observations(self, ref: PhoneRef, since: float = 0.0) -> list[dict]:
        """Every observation of the phone since `since` (wall clock), each with its source and the working server."""
        return self.evidence_sources.observations(self.phone(ref).mac, since)

    # ------------------------------------------------------------ outages
    def wan_outage(self, mode: str = "link-down", duration: int = 300, baseline: bool = True,
                   **shape: Any) -> AbstractContextManager[wan.OutageRun]:
        """fleet.testing.wan.wan_outage on this site's router; the run is kept (`outages`) for the report.

        `baseline`: first wait (up to `timeout_for("refresh")`) until every phone's working server is known, as an
        experiment's baseline does. A phone seen before the cut has a binding that lapses when its loss is not on
        the wire (a failed DNS lookup sends no REGISTER); one first seen during the outage may stay unknown.
        A phone still unknown then is an EvidenceUnavailable naming it, before anything is cut."""
        outage = wan.checked_outage(self.site, mode, duration, **shape)     # bad parameters: before any wait
        ev = self.evidence_sources
        if baseline:
            macs = [p.mac for p in self.phones]
            timeout = self.timeout_for("refresh")
            if not ev.wait(lambda: all(ev.working_server(m) is not None for m in macs), timeout):
                unknown = [m for m in macs if ev.working_server(m) is None]
                raise EvidenceUnavailable(
                    f"site {self.name}: the working server of {len(unknown)} phone(s) is not known after {timeout:g} s "
                    f"({', '.join(unknown[:10])}): nothing was cut; the site's evidence sources: "
                    + "; ".join(redact(f"{h['source']}: {h.get('error') or 'running'}") for h in ev.health())
                    + " (or pass baseline=False)")
        return wan.wan_outage(self.inventory, self.secrets, self.site, mode, duration, outage.id, keep=self.outages,
                              **shape)

    def measure(self, run: wan.OutageRun, ref: PhoneRef) -> dict[str, Any]:
        """The phone's failover (to server 2 after the cut) and recovery (to server 1 after the restore), each
        as seconds (the latest moment the evidence allows, and the earliest), with its predicted bound."""
        phone = self.phone(ref)
        obs = self.evidence_sources.observations(phone.mac)
        out: dict[str, Any] = {"mac": phone.mac, "model": phone.model, "family": phone.family.name,
                               "failover_s": None, "recovery_s": None}
        if run.started is None:
            return out
        fallback = next((s for s in self.evidence_sources.configured[phone.mac] if s != 1), None)
        # as an experiment measures: from the router's answers, a move between a request and its answer 0 s
        found = caused_change(obs, fallback, run.started, _time(run.cut.get("t_cut"))) if fallback is not None else None
        if found:
            out["failover_s"], out["failover_earliest_s"] = round(found[1] - run.started, 3), round(found[0] - run.started, 3)
        if run.ended is not None:
            back = caused_change(obs, 1, run.ended, _time(run.restore.get("t_restore")))
            if back:
                out["recovery_s"], out["recovery_earliest_s"] = round(back[1] - run.ended, 3), round(back[0] - run.ended, 3)
        bounds = predicted_bounds(self.params(phone), phone.family.name, obs, OutageWindow(run.started, run.ended))
        out["predicted_failover_max_s"], out["predicted_recovery_max_s"] = bounds.failover_max_s, bounds.recovery_max_s
        return out

    def report(self, run: wan.OutageRun, phones: Iterable[PhoneRef] | None = None) -> list[tuple[str, str]]:
        """(name, value) pairs for the JUnit report (pytest's user_properties): the outage, then per phone its
        measured times and its evidence (observations since the cut, the newest EVIDENCE_ROWS, as JSON)."""
        rows = [(f"fleet.outage.{k}", "" if v is None else str(v)) for k, v in run.summary().items()
                if k not in ("leftovers",)]
        rows.append(("fleet.outage.leftovers", "; ".join(run.summary()["leftovers"])))
        since = (run.started or time.time()) - 1.0
        for p in (self.phones if phones is None else [self.phone(r) for r in phones]):
            m = self.measure(run, p)
            rows += [(f"fleet.phone.{p.mac}.{k}", "" if v is None else str(v)) for k, v in m.items() if k != "mac"]
            lane = [{"t": o["t"], "working_server": o.get("working_server"),
                     **{k: o[k] for k in ("source", "server", "state", "code", "kind") if o.get(k) is not None}}
                    for o in self.evidence_sources.observations(p.mac, since)][-EVIDENCE_ROWS:]
            rows.append((f"fleet.phone.{p.mac}.evidence", json.dumps(lane, separators=(",", ":"))))
        return rows

    def wan_state(self, outage_id: str | None = None) -> dict:
        """The router's WAN state as its driver reads it (and one outage's standing, when named)."""
        drv = wan._connect(self.site, self.secrets) if self.site.router else None
        if drv is None:
            raise ValueError(f"site {self.name} has no router in the inventory")
        try:
            return drv.wan_state(outage_id).to_dict()
        finally:
            drv.close()

    # ------------------------------------------------------------ calls
    def call(self, ref: PhoneRef, number: str, timeout: float = 20.0) -> dict | None:
        """Dial `number` from the phone (its REST API, as an experiment's `call` step) and wait for the wire to
        show where the INVITE went: the call observation (its `server` and final `code`), or None past `timeout`."""
        phone = self.phone(ref)
        if not phone.family.rest:
            raise ValueError(f"phone {phone.mac} ({phone.model}, {phone.family.name}) has no REST API to place a call from")
        ev = self.evidence_sources
        t = time.time()
        RestPhone(phone, self.secrets.credentials(phone.credentials)).dial(number)
        found: list[dict] = []

        def seen() -> bool:
            found[:] = [o for o in ev.observations(phone.mac, t) if o.get("kind") == "call"]
            return bool(found)

        return found[0] if ev.wait(seen, timeout) else None

    def close(self) -> None:
        if self._evidence is not None:
            self._evidence.stop()
