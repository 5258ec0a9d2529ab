"""All state in Redis. The only module that knows key names.

Keys (prefix `fleet:`):
  phone:{mac}                hash: site, model, address, servers (configured, JSON), state (JSON of observe.PhoneState),
                             row (the phone's `fleet status --json` object, kept ready-made), config_version, firmware
  site:{site}:phones         set of MACs;  phones: set of every MAC
  site:{site}:experiment     id of the experiment observing the site now (collectors copy observations to it)
  lease:{site}               holder of the site's exclusive lease (SET NX PX, renewed while held)
  exp:{id}                   hash: experiment metadata;  experiments: zset of ids by start time
  exp:{id}:events            stream: append-only history (operations and observations, wall + monotonic time)
  exp:{id}:obs:{mac}         stream: observations of one phone during the experiment, trimmed by length
  exp:{id}:capture           stream: SIP datagrams the wire sources saw during the experiment (its capture.pcap)
  rollout:{id}               hash: status, playbook, created, plan (JSON), reason, abort flag;  rollouts: zset by time
  rollout:{id}:phone:{mac}   hash: state, attempt, wave, reboot_at, settled_at, error, backup flags
  rollout:{id}:events        stream: append-only history of the rollout
  outage:{id}:restore        set when a restore of that outage was requested (a cut seeing it does nothing)
  schedule:{name}:since      when the scheduler first saw a schedule;  schedule:{name}:last_run  when it last ran
  schedule:{name}:sent       when beat last sent it;  schedule:missed  list of messages;  schedule:missed:seen  set
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Iterable

import redis

from .observe import Observation, PhoneState, apply
from .status import row_for_json

P = "fleet:"
OBS_MAXLEN = 10_000
CAPTURE_MAXLEN = 200_000      # SIP datagrams kept per experiment for its capture.pcap
EVENTS_MAXLEN = 200_000
FEED_MAXLEN = 100_000
OUTAGE_MARK_TTL = 2 * 86400   # longer than any outage may last (max_duration <= 1 day)
OBSERVED_FEED = f"{P}observed"


class LeaseHeld(Exception):
    """Another experiment or rollout holds the site."""


class RolloutExists(Exception):
    """A rollout with this id was already created."""


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.r = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10, health_check_interval=30)

    # ------------------------------------------------------------ phones
    def register_site(self, inv, site) -> None:
        """Register a site's phones; their configured servers follow what a rollout last pushed, else the inventory."""
        from .predict import configured_servers

        pushed = RolloutStore(self).last_pushed([p.mac for p in site.phones])
        self.register_phones(site.name, [{"mac": p.mac, "model": p.model, "address": p.address,
                                          "servers": configured_servers(pushed.get(p.mac) or inv.effective_params(site, p))}
                                         for p in site.phones])

    def register_phones(self, site: str, phones: Iterable[dict]) -> None:
        phones = list(phones)
        pipe = self.r.pipeline(transaction=False)
        for p in phones:
            pipe.hmget(f"{P}phone:{p['mac']}", "state", "firmware")
        previous = pipe.execute()
        pipe = self.r.pipeline(transaction=False)
        for p, (state, firmware) in zip(phones, previous):
            meta = {"mac": p["mac"], "site": site, "model": p.get("model", ""), "firmware": firmware,
                    "configured_servers": p.get("servers", []),
                    "state": json.loads(state) if state else PhoneState(mac=p["mac"]).to_dict()}
            pipe.hset(f"{P}phone:{p['mac']}", mapping={"site": site, "model": p.get("model", ""),
                                                       "address": p.get("address", ""),
                                                       "servers": json.dumps(p.get("servers", [])),
                                                       "row": json.dumps(row_for_json(meta))})
            pipe.sadd(f"{P}site:{site}:phones", p["mac"])
            pipe.sadd(f"{P}phones", p["mac"])
        pipe.execute()

    def phone_states(self, macs: list[str]) -> dict[str, PhoneState]:
        pipe = self.r.pipeline(transaction=False)
        for mac in macs:
            pipe.hget(f"{P}phone:{mac}", "state")
        return {m: PhoneState.from_dict(json.loads(raw)) if raw else PhoneState(mac=m) for m, raw in zip(macs, pipe.execute())}

    def phone_state(self, mac: str) -> PhoneState:
        raw = self.r.hget(f"{P}phone:{mac}", "state")
        return PhoneState.from_dict(json.loads(raw)) if raw else PhoneState(mac=mac)

    def record_observations(self, observations: list[Observation]) -> int:
        """Fold observations into each phone's last state, and copy them into the site's running experiment."""
        if not observations:
            return 0
        macs = sorted({o.mac for o in observations})
        pipe = self.r.pipeline(transaction=False)
        for mac in macs:
            pipe.hmget(f"{P}phone:{mac}", "state", "site", "model", "firmware", "servers")
        rows = pipe.execute()
        states = {mac: (PhoneState.from_dict(json.loads(row[0])) if row[0] else PhoneState(mac=mac), row[1])
                  for mac, row in zip(macs, rows)}
        metas = {mac: {"model": row[2], "firmware": row[3], "configured_servers": json.loads(row[4] or "[]")}
                 for mac, row in zip(macs, rows)}
        sites = {site for _, site in states.values() if site}
        active = dict(zip(sorted(sites), self.r.mget([f"{P}site:{s}:experiment" for s in sorted(sites)]))) if sites else {}
        pipe = self.r.pipeline(transaction=False)
        for obs in sorted(observations, key=lambda o: o.t):
            state, site = states[obs.mac]
            if site is None:
                continue   # a phone not in the inventory: ignored rather than trusted
            apply(state, obs, [s["index"] for s in metas[obs.mac]["configured_servers"] if s.get("register", True)])
            exp = active.get(site)
            if exp:
                entry = obs.to_dict() | {"working_server": state.working_server}
                pipe.xadd(f"{P}exp:{exp}:obs:{obs.mac}", {"o": json.dumps(entry)}, maxlen=OBS_MAXLEN, approximate=True)
        for mac, (state, site) in states.items():
            if site is not None:
                as_dict = state.to_dict()
                row = row_for_json({"mac": mac, "site": site, "state": as_dict, **metas[mac]})
                pipe.hset(f"{P}phone:{mac}", mapping={"state": json.dumps(as_dict), "row": json.dumps(row)})
        # one feed entry per batch: a rollout driver re-reads only the phones named here
        pipe.xadd(OBSERVED_FEED, {"macs": " ".join(m for m, (_, site) in states.items() if site is not None)},
                  maxlen=FEED_MAXLEN, approximate=True)
        pipe.execute()
        return len(observations)

    def set_phone_info(self, infos: dict[str, dict]) -> None:
        """Facts read from the phones themselves (firmware, whether a line is in a call)."""
        macs = sorted(infos)
        pipe = self.r.pipeline(transaction=False)
        for mac in macs:
            pipe.hmget(f"{P}phone:{mac}", "row")
        rows = pipe.execute()
        pipe = self.r.pipeline(transaction=False)
        for mac, (row,) in zip(macs, rows):
            mapping = {k: (json.dumps(v) if not isinstance(v, str) else v) for k, v in infos[mac].items() if v is not None}
            if row and infos[mac].get("firmware"):
                mapping["row"] = json.dumps(json.loads(row) | {"firmware": infos[mac]["firmware"]})
            if mapping:
                pipe.hset(f"{P}phone:{mac}", mapping=mapping)
        pipe.execute()

    def pushed_call_state(self, mac: str) -> tuple[bool, float] | None:
        """(in a call, when) from the newest state the phone pushed (state polling push mode), or None."""
        in_call, at = self.r.hmget(f"{P}phone:{mac}", "in_call", "in_call_pushed_at")
        try:
            return (json.loads(in_call) is True, float(at)) if in_call is not None and at else None
        except ValueError:
            return None

    def status_json(self, site: str | None = None) -> str:
        """`fleet status --json` straight from the ready-made rows: one round trip, no decoding per phone."""
        key = f"{P}site:{site}:phones" if site else f"{P}phones"
        macs = sorted(self.r.smembers(key))
        pipe = self.r.pipeline(transaction=False)
        for mac in macs:
            pipe.hget(f"{P}phone:{mac}", "row")
        return "[" + ",".join(r for r in pipe.execute() if r) + "]"

    def phones(self, site: str | None = None) -> list[dict]:
        """Every phone's row for `fleet status`, read with one pipelined round trip."""
        key = f"{P}site:{site}:phones" if site else f"{P}phones"
        macs = sorted(self.r.smembers(key))
        pipe = self.r.pipeline(transaction=False)
        for mac in macs:
            pipe.hgetall(f"{P}phone:{mac}")
        out = []
        for mac, h in zip(macs, pipe.execute()):
            state = json.loads(h["state"]) if h.get("state") else PhoneState(mac=mac).to_dict()
            out.append({"mac": mac, "site": h.get("site"), "model": h.get("model"), "address": h.get("address"),
                        "firmware": h.get("firmware"), "config_version": h.get("config_version"),
                        "configured_servers": json.loads(h.get("servers") or "[]"), "state": state})
        return out

    # ------------------------------------------------------------ leases
    def acquire_lease(self, site: str, holder: str, ttl: float = 30.0) -> None:
        key = f"{P}lease:{site}"
        if self.r.set(key, holder, nx=True, px=int(ttl * 1000)):
            return
        current = self.r.get(key)
        if current == holder:
            self.r.pexpire(key, int(ttl * 1000))
            return
        raise LeaseHeld(f"site {site} is leased by {current} (it expires by itself {self.r.pttl(key) / 1000:.0f}s after its holder stops renewing it)")

    def renew_lease(self, site: str, holder: str, ttl: float = 30.0) -> bool:
        script = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
        return bool(self.r.eval(script, 1, f"{P}lease:{site}", holder, int(ttl * 1000)))

    def lease_info(self, site: str) -> tuple[str | None, int]:
        """(holder, milliseconds left) of a site's lease; (None, -2) when nobody holds it."""
        pipe = self.r.pipeline(transaction=False)
        pipe.get(f"{P}lease:{site}")
        pipe.pttl(f"{P}lease:{site}")
        holder, pttl = pipe.execute()
        return holder, int(pttl)

    def release_lease(self, site: str, holder: str) -> None:
        script = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
        self.r.eval(script, 1, f"{P}lease:{site}", holder)

    # ------------------------------------------------------------ outages
    def request_outage_restore(self, outage_id: str) -> None:
        """Mark the outage as ended before the router is touched: a cut still queued or running sees it."""
        self.r.set(f"{P}outage:{outage_id}:restore", time.time(), ex=OUTAGE_MARK_TTL)

    def outage_restore_requested(self, outage_id: str) -> bool:
        return bool(self.r.exists(f"{P}outage:{outage_id}:restore"))

    # ------------------------------------------------------------ schedules
    def schedule_seen_since(self, name: str) -> float:
        """When the scheduler first saw this schedule (set now if never): runs due before then were never missed."""
        key = f"{P}schedule:{name}:since"
        self.r.setnx(key, time.time())
        return float(self.r.get(key))

    def schedule_last_run(self, name: str) -> float:
        return float(self.r.get(f"{P}schedule:{name}:last_run") or 0)

    def set_schedule_last_run(self, name: str, t: float) -> None:
        self.r.set(f"{P}schedule:{name}:last_run", t)

    def set_schedule_sent(self, name: str, t: float, fire_time: str) -> None:
        """Beat sent the run due at `fire_time`: kept in Redis rather than in a schedule file beside beat."""
        self.r.hset(f"{P}schedule:{name}:sent", mapping={"t": t, "fire_time": fire_time})

    def schedule_sent(self, name: str) -> dict:
        return self.r.hgetall(f"{P}schedule:{name}:sent")

    def record_missed(self, occurrence: str, message: str) -> bool:
        """Record a missed (or refused) run once per occurrence; True if it is new."""
        if self.r.sadd(f"{P}schedule:missed:seen", occurrence):
            self.r.rpush(f"{P}schedule:missed", message)
            return True
        return False

    def missed_runs(self) -> list[str]:
        return self.r.lrange(f"{P}schedule:missed", 0, -1)

    # ------------------------------------------------------------ experiments
    def new_experiment(self, site: str, playbook: str) -> str:
        exp = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        now = time.time()
        self.r.hset(f"{P}exp:{exp}", mapping={"id": exp, "site": site, "playbook": playbook, "status": "running",
                                              "started": now})
        self.r.zadd(f"{P}experiments", {exp: now})
        return exp

    def set_observing(self, site: str, exp: str | None) -> None:
        if exp:
            self.r.set(f"{P}site:{site}:experiment", exp)
        else:
            self.r.delete(f"{P}site:{site}:experiment")

    def observing(self, site: str) -> str | None:
        """The experiment that collectors copy the site's observations to now, if any."""
        return self.r.get(f"{P}site:{site}:experiment")

    def finish_experiment(self, exp: str, passed: bool, report_dir: str) -> None:
        self.r.hset(f"{P}exp:{exp}", mapping={"status": "passed" if passed else "failed", "finished": time.time(),
                                              "report_dir": report_dir})

    def log_event(self, exp: str, kind: str, **data) -> None:
        entry = {"kind": kind, "t": time.time(), "mono": time.monotonic(), **data}
        self.r.xadd(f"{P}exp:{exp}:events", {"e": json.dumps(entry, default=str)}, maxlen=EVENTS_MAXLEN, approximate=True)

    def keep_capture(self, exp: str, datagrams: list[dict]) -> None:
        """SIP datagrams a wire source saw while the experiment ran ({t, src, dst, payload (base64), source})."""
        pipe = self.r.pipeline(transaction=False)
        for d in datagrams:
            pipe.xadd(f"{P}exp:{exp}:capture", {"d": json.dumps(d)}, maxlen=CAPTURE_MAXLEN, approximate=True)
        pipe.execute()

    def capture(self, exp: str) -> list[dict]:
        return [json.loads(f["d"]) for _, f in self.r.xrange(f"{P}exp:{exp}:capture")]

    def events(self, exp: str) -> list[dict]:
        return [json.loads(f["e"]) for _, f in self.r.xrange(f"{P}exp:{exp}:events")]

    def observations(self, exp: str, mac: str) -> list[dict]:
        return [json.loads(f["o"]) for _, f in self.r.xrange(f"{P}exp:{exp}:obs:{mac}")]

    def experiments(self, limit: int = 50) -> list[dict]:
        ids = self.r.zrevrange(f"{P}experiments", 0, limit - 1)
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(f"{P}exp:{i}")
        return pipe.execute()

    def experiment(self, exp: str) -> dict:
        return self.r.hgetall(f"{P}exp:{exp}")

    def ping(self) -> bool:
        return bool(self.r.ping())


class RolloutStore:
    """Rollout state, durable in Redis so any process can resume a rollout after a crash."""

    SETTLED = ("verified", "skipped", "failed", "rolled_back", "rollback_failed")

    def __init__(self, store: Store) -> None:
        self.r = store.r

    def create(self, rid: str, playbook: str, plan: dict, meta: dict, exclusive: bool = False) -> None:
        """Record a planned rollout, all of it or nothing (one MULTI). With `exclusive`, raise RolloutExists if
        the id is taken: two copies of one scheduled run compute the same id, and only the first creates it."""
        key = f"{P}rollout:{rid}"
        with self.r.pipeline() as pipe:
            try:
                if exclusive:
                    pipe.watch(key)
                    if pipe.exists(key):
                        raise RolloutExists(rid)
                pipe.multi()
                pipe.hset(key, mapping={"id": rid, "playbook": playbook, "status": "planned",
                                        "created": time.time(), "plan": json.dumps(plan), **meta})
                entries = {p["mac"]: p for p in plan["phones"]}
                for wave, macs in enumerate(plan["waves"]):
                    for mac in macs:
                        # each phone's own part of the plan beside its state: a task reads only what it needs
                        pipe.hset(f"{P}rollout:{rid}:phone:{mac}", mapping={"state": "pending", "attempt": 1, "wave": wave,
                                                                            "plan": json.dumps(entries[mac])})
                pipe.zadd(f"{P}rollouts", {rid: time.time()})
                pipe.execute()
            except redis.WatchError:
                raise RolloutExists(rid) from None

    def get(self, rid: str) -> dict:
        data = self.r.hgetall(f"{P}rollout:{rid}")
        if data.get("plan"):
            data["plan"] = json.loads(data["plan"])
        return data

    def list(self, limit: int = 50) -> list[dict]:
        ids = self.r.zrevrange(f"{P}rollouts", 0, limit - 1)
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hmget(f"{P}rollout:{i}", "id", "playbook", "status", "created", "reason")
        return [dict(zip(("id", "playbook", "status", "created", "reason"), row)) for row in pipe.execute()]

    def get_field(self, rid: str, name: str) -> str | None:
        return self.r.hget(f"{P}rollout:{rid}", name)

    def set(self, rid: str, **fields) -> None:
        self.r.hset(f"{P}rollout:{rid}", mapping={k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in fields.items()})

    def phone(self, rid: str, mac: str) -> dict:
        return self.r.hgetall(f"{P}rollout:{rid}:phone:{mac}")

    STATE_FIELDS = ("state", "attempt", "wave", "reboot_at", "rollback_at", "dispatched_at", "deferred_at", "error",
                    "verified_in", "confirm_sent", "shadowed")   # shadowed: fleet.overrides

    def phones(self, rid: str, macs: list[str], full: bool = False) -> dict[str, dict]:
        """Per-phone rollout state; without `full`, only the small fields the driver polls (not the phone's plan)."""
        pipe = self.r.pipeline(transaction=False)
        for mac in macs:
            if full:
                pipe.hgetall(f"{P}rollout:{rid}:phone:{mac}")
            else:
                pipe.hmget(f"{P}rollout:{rid}:phone:{mac}", self.STATE_FIELDS)
        rows = pipe.execute()
        if full:
            return dict(zip(macs, rows))
        return {m: {k: v for k, v in zip(self.STATE_FIELDS, row) if v is not None} for m, row in zip(macs, rows)}

    def set_phone(self, rid: str, mac: str, **fields) -> None:
        """Write a phone's rollout fields; a change of state also goes on the rollout's change feed."""
        mapping = {k: ("" if v is None else v) for k, v in fields.items()}
        if "state" not in fields:
            self.r.hset(f"{P}rollout:{rid}:phone:{mac}", mapping=mapping)
            return
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(f"{P}rollout:{rid}:phone:{mac}", mapping=mapping)
        pipe.xadd(self.changes_key(rid), {"mac": mac}, maxlen=FEED_MAXLEN, approximate=True)
        pipe.execute()

    @staticmethod
    def changes_key(rid: str) -> str:
        return f"{P}rollout:{rid}:changes"

    def feed_positions(self, rid: str) -> dict[str, str]:
        """Where the change and observation feeds end now: read from here on, nothing after a full read is missed."""
        out = {}
        for key in (self.changes_key(rid), OBSERVED_FEED):
            last = self.r.xrevrange(key, count=1)
            out[key] = last[0][0] if last else "0-0"
        return out

    def feed_read(self, positions: dict[str, str], block: float | None = None) -> tuple[set[str], set[str]]:
        """(phones whose rollout state changed, phones observed) since `positions`, which it advances.

        With `block`, waits up to that many seconds for the first entry: a driver
        wakes when something happens rather than on a timer.
        """
        changed: set[str] = set()
        observed: set[str] = set()
        wait = int(block * 1000) if block else None
        for key, entries in self.r.xread(positions, count=100_000, block=wait) or []:
            for entry_id, fields in entries:
                positions[key] = entry_id
                if key == OBSERVED_FEED:
                    observed.update(fields.get("macs", "").split())
                else:
                    changed.add(fields["mac"])
        return changed, observed

    def claim_reboot(self, rid: str, mac: str, attempt: int | str) -> bool:
        """True once per phone and attempt (or per "ATTEMPT-confirm"): the guard against rebooting twice."""
        return bool(self.r.set(f"{P}rollout:{rid}:reboot:{mac}:{attempt}", time.time(), nx=True, ex=7 * 86400))

    def reboot_claimed_at(self, rid: str, mac: str, attempt: int) -> float | None:
        value = self.r.get(f"{P}rollout:{rid}:reboot:{mac}:{attempt}")
        return float(value) if value else None

    def log(self, rid: str, kind: str, **data) -> None:
        self.r.xadd(f"{P}rollout:{rid}:events", {"e": json.dumps({"kind": kind, "t": time.time(), **data}, default=str)},
                    maxlen=EVENTS_MAXLEN, approximate=True)

    def events(self, rid: str) -> list[dict]:
        return [json.loads(f["e"]) for _, f in self.r.xrange(f"{P}rollout:{rid}:events")]

    def last_pushed(self, macs: list[str]) -> dict[str, dict]:
        pipe = self.r.pipeline(transaction=False)
        for mac in macs:
            pipe.hget(f"{P}phone:{mac}", "pushed_params")
        return {m: json.loads(v) for m, v in zip(macs, pipe.execute()) if v}

    def config_version(self, mac: str) -> str | None:
        return self.r.hget(f"{P}phone:{mac}", "config_version")

    def set_pushed(self, mac: str, params: dict, version: str) -> None:
        """Record what the phone now runs; its configured servers (for `fleet status`) follow it."""
        from .predict import configured_servers

        configured = configured_servers(params)
        self.r.hset(f"{P}phone:{mac}", mapping={"pushed_params": json.dumps(params), "config_version": version,
                                                "servers": json.dumps(configured)})
