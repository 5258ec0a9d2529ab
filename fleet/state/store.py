"""All state in Redis. The only module that knows key names: everyone else calls a `Store` method.

Every key family, in one table (the same table is in docs/architecture.md).
All keys start with `fleet:`; `Keys` below builds each name.

| key (after `fleet:`)                 | type   | holds                                                            | written by                  |
|--------------------------------------|--------|------------------------------------------------------------------|-----------------------------|
| `phone:{mac}`                        | hash   | site, model, address, servers (configured, JSON), state (JSON of  | register_phones,            |
|                                      |        | observe.PhoneState), row (its `fleet status --json` object, kept | record_observations,        |
|                                      |        | ready-made), firmware (the phone's own word), firmware_declared  | set_phone_info, set_pushed, |
|                                      |        | (the inventory's), in_call, pushed_params, config_version,       |                             |
|                                      |        | in_call_pushed_at/_seq (a pushed call state: collector's clock,  | record_pushed_call_state    |
|                                      |        | and the count of pushes readers compare)                         |                             |
| `phones`                             | set    | every registered MAC                                             | register_phones             |
| `site:{site}:phones`                 | set    | the site's MACs                                                  | register_phones             |
| `site:{site}:rows`                   | hash   | per MAC of the site, its row (the same JSON as phone:{mac}'s     | register_phones,            |
|                                      |        | `row`): `fleet status --json` reads a site with one HVALS        | record_observations         |
| `rows:sites`                         | set    | the sites with a `site:{site}:rows` hash                         | register_phones             |
| `site:{site}:experiment`             | string | id of the experiment observing the site now (collectors copy     | set_observing               |
|                                      |        | observations to it)                                              |                             |
| `site:{site}:evidence`               | hash   | the collector's per-server evidence report: unobservable (JSON:  | set_site_evidence           |
|                                      |        | targets no wire source can see, and why), sources (JSON: each    |                             |
|                                      |        | evidence source's state, error and since when), t                |                             |
| `site:{site}:workers`                | hash   | per worker serving the site (field `host:pid`): JSON of its node | announce_worker_files       |
|                                      |        | name, inventory and secrets file paths and SHA-256, and when it  |                             |
|                                      |        | last said so (Redis time); readers skip entries older than the   |                             |
|                                      |        | TTL, and the key expires with the last worker                    |                             |
| `evidence:sites`                     | set    | the sites with a `site:{site}:evidence` report                   | set_site_evidence           |
| `site:{site}:collector`              | hash   | the site's running collector: holder (host:pid), host, pid,      | set_site_collector,         |
|                                      |        | syslog, events (its listening addresses), since; its TTL is      | clear_site_collector        |
|                                      |        | renewed at each heartbeat (what is left of it gives the age)     |                             |
| `observed`                           | stream | one entry per stored batch of observations: the MACs it touched  | record_observations         |
| `lease:{site}`                       | string | holder of the site's exclusive lease (SET NX PX, renewed)        | acquire/renew/release_lease |
| `rest:{mac}`                         | string | holder of the phone's REST lock: one request at a time across    | acquire/renew/release_      |
|                                      |        | processes (SET NX PX, a few seconds, renewed while the request   | phone_lock                  |
|                                      |        | runs; released after it)                                         |                             |
| `rest:{mac}:queue`,                  | zset,  | the requests waiting for the phone's REST lock, by arrival, and  | acquire_phone_lock,         |
| `rest:{mac}:alive`                   | hash   | each one's "alive until" (1 s, refreshed by its retries): the    | give_up_phone_turn          |
|                                      |        | lock goes to the first live one                                  |                             |
| `experiments`                        | zset   | experiment ids by start time                                     | new_experiment              |
| `exp:{id}`                           | hash   | experiment metadata: site, playbook, status, started, finished   | new/finish_experiment       |
| `exp:{id}:events`                    | stream | append-only history (operations and observations, wall and       | log_event                   |
|                                      |        | monotonic time)                                                  |                             |
| `exp:{id}:obs:{mac}`                 | stream | one phone's observations during the experiment, trimmed          | record_observations         |
| `exp:{id}:capture`                   | stream | SIP datagrams the wire sources accepted during the experiment    | keep_capture                |
|                                      |        | (its capture.pcap), up to CAPTURE_MAX_BYTES (exp:{id} counts     |                             |
|                                      |        | capture_bytes and capture_left_out), trimmed                     |                             |
| `outage:{id}:restore`                | string | a restore of that outage was requested (a cut seeing it cuts     | request_outage_restore      |
|                                      |        | nothing); expires after two days                                 |                             |
| `incidents`                          | zset   | incident ids by start (the earliest loss of server 1 the evidence | IncidentStore.open          |
|                                      |        | shows)                                                           |                             |
| `incident:{id}`                      | hash   | a passive outage incident: site, status (open, closed), started, | IncidentStore.open/set/     |
|                                      |        | detected, restored, finished, closed_because, baseline (JSON:    | close                       |
|                                      |        | the phones on server 1 before it), threshold                     |                             |
| `incident:{id}:events`               | stream | append-only history of the incident (opened, each phone's move,  | IncidentStore.log           |
|                                      |        | closed), wall time                                               |                             |
| `incident:{id}:obs:{mac}`            | stream | one phone's observations during the incident (each with its      | IncidentStore.keep_         |
|                                      |        | working server), from shortly before its start, trimmed          | observations                |
| `record:{site}`                      | stream | the site's survivability record: one entry per outage (an        | record.add                  |
|                                      |        | experiment's cut or an incident): origin, id, t, and per phone   |                             |
|                                      |        | model, family, firmware, failover_s, recovery_s, passed, why     |                             |
| `rollouts`                           | zset   | rollout ids by creation time                                     | RolloutStore.create         |
| `rollout:{id}`                       | hash   | status, playbook, created, plan (JSON), reason, abort flag,      | RolloutStore.create/set     |
|                                      |        | backups_removed:{site}, limit (`--limit`), keep_backups (1/0),   |                             |
|                                      |        | revert_of (a revert: the rollout it reverts)                     |                             |
| `rollout:{id}:phone:{mac}`           | hash   | state, attempt, wave, plan (the phone's part), reboot_at,        | RolloutStore.create/        |
|                                      |        | reboot_tried (methods announced before sending), reboot_via,     | set_phone                   |
|                                      |        | rollback_at, settled_at, error, deferred_at, deferred_reason     |                             |
|                                      |        | (call state: why), backing_up:/backed_up:{file}, verify_from /   |                             |
|                                      |        | rollback_verify_from (the reboot's answer: evidence counts from  |                             |
|                                      |        | then), verified_by (the evidence that verified it),              | set_phone_unless_overtaken, |
|                                      |        | reboot_abandoned (when its sender gave the reboot up to the      | set_phone_if_absent,        |
|                                      |        | retry policy: found out after a grace), confirm_sent,            | set_phone_if_still_         |
|                                      |        | power_cycle_at (when a power cycle was announced)                | rebooting, claim_and_       |
|                                      |        |                                                                  | record_reboot               |
| `rollout:{id}:changes`               | stream | one entry per phone state change (the driver wakes on it)        | RolloutStore.set_phone      |
| `rollout:{id}:events`                | stream | append-only history of the rollout                               | RolloutStore.log            |
| `rollout:{id}:reboot:{mac}:{attempt}`| string | the claim on a phone's reboot for one attempt, taken with its    | RolloutStore.claim_and_     |
|                                      |        | record (or `{attempt}-confirm`, claim_reboot), kept a week       | record_reboot, claim_reboot |
| `schedule:{name}:since`              | string | when the scheduler first saw the schedule                        | schedule_seen_since         |
| `schedule:{name}:last_run`           | string | when a run of it last started                                    | set_schedule_last_run       |
| `schedule:{name}:sent`               | hash   | t, fire_time: when beat last sent it, and for which cron time    | set_schedule_sent           |
| `schedule:missed`                    | list   | messages about missed or refused runs                            | record_missed               |
| `schedule:missed:seen`               | set    | occurrences already recorded (each is recorded once)             | record_missed               |
| `durations:{measure}:{origin}:{site}`| hash   | failover/recovery seconds (measure) from experiments or          | durations.record            |
|                                      |        | incidents (origin) as a histogram: b:{i} count per bucket, sum,  |                             |
|                                      |        | count (what /metrics exports)                                    |                             |
| `durations:counted`                  | set    | origin:id of each run already counted (counted once)             | durations.record            |
| `site:{site}:incidents:open`         | hash   | incident id -> JSON summary {started, phones, failed_over,       | IncidentStore.open/         |
|                                      |        | never_failed_over} while it is open (read: open_incidents.read)  | follow/close                |

Celery's own keys (queues named after them, `unacked*`, `_kombu.*`,
`celery-task-meta-*`) share the database and are Celery's business.
"""
from __future__ import annotations

import contextlib
import json
import time
import uuid
from typing import Callable, Iterable, Iterator, NamedTuple

from fleet.state import resp
from fleet.state.observe import Observation, PhoneState, apply
from fleet.state.status_json import pieces as status_pieces
from fleet.state.phone_row import row_for_json


# extend a lease or lock key's TTL (ARGV[2] ms) only if ARGV[1] still holds it
# A phone's REST lock, taken in turn: a request that finds the lock held joins the phone's queue of waiters
# (KEYS[2], a zset by arrival; KEYS[3], each waiter's "alive until", refreshed by every retry), and the lock goes
# only to the waiter at the head (or to anyone while nobody waits). Waiters that stopped retrying are dropped
# when they reach the head. Without it a poller that frees the lock and takes it again at once could keep a
# worker's request out for its whole wait.
TAKE_IN_TURN = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local head = redis.call('zrange', KEYS[2], 0, 0)[1]
while head and tonumber(redis.call('hget', KEYS[3], head) or '0') < now do
  redis.call('zrem', KEYS[2], head)
  redis.call('hdel', KEYS[3], head)
  head = redis.call('zrange', KEYS[2], 0, 0)[1]
end
if (not head) or head == ARGV[1] then
  if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    if head then
      redis.call('zrem', KEYS[2], head)
      redis.call('hdel', KEYS[3], head)
    end
    return 1
  end
end
if ARGV[3] == '1' then
  redis.call('zadd', KEYS[2], 'NX', now, ARGV[1])
  redis.call('hset', KEYS[3], ARGV[1], now + tonumber(ARGV[4]))
  redis.call('pexpire', KEYS[2], ARGV[4])
  redis.call('pexpire', KEYS[3], ARGV[4])
end
return 0
"""
REST_TURN_CLAIM_MS = 1000   # a waiter that stopped retrying loses its place within this
RENEW_IF_HELD = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
# A rollout driven in ticks (fleet.rollout.ticks): may tick ARGV[1] run? Ticks are numbered; the rollout's record
# keeps the last one done, and the one running with when it started (Redis' clock, the same for every worker).
CLAIM_TICK = """
local n = tonumber(ARGV[1])
if tonumber(redis.call('hget', KEYS[1], 'tick_done') or '0') >= n then return 'done' end
local t = redis.call('time')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if tonumber(redis.call('hget', KEYS[1], 'tick_running') or '0') == n
   and now - tonumber(redis.call('hget', KEYS[1], 'tick_since') or '0') < tonumber(ARGV[2]) then return 'busy' end
redis.call('hset', KEYS[1], 'tick_running', n, 'tick_since', tostring(now))
return 'run'
"""

# A push task's claim on its phone's reboot and the record of it, in one step (fleet.rollout.work._push): no moment
# exists where a claim stands unrecorded, which a copy of the task could not tell from a claimer that died (it
# confirmed such a reboot at once, while a live claimer might still send it: two reboots). A claim an older worker
# took and never recorded (a claim, then a separate write) is recorded here as of now: that worker sent nothing
# before recording, so nothing went out, and the driver's dispatch stall, not the next copy, decides when to find
# out (recorded from the claim's own time, often past verify.within by then, the driver failed and rolled back the
# phone while its confirmation rebooted it: found by review). A claim holding the caller's own time (ARGV[1]) is the
# caller's: the client ran the script again after losing its reply, and "held by another copy" left the reboot
# unsent until the driver's dispatch stall.
CLAIM_AND_RECORD_REBOOT = """
local function record(at)
  redis.call('hset', KEYS[2], 'state', 'rebooting', 'reboot_at', at, 'reboot_tried', '')
  redis.call('xadd', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'mac', ARGV[4])
end
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  record(ARGV[1])
  return 1
end
if redis.call('get', KEYS[1]) == ARGV[1] then return 1 end
if redis.call('hexists', KEYS[2], 'reboot_at') == 0 then record(ARGV[1]) end
return 0
"""

# A claim taken once (KEYS[1], ARGV[1] the caller's own value, ARGV[2] its lifetime): 1 for the caller that set it,
# and for the same caller asking again (redis-py runs a script again after a lost reply; "taken" then left a
# confirmation of a lost reboot waiting another dispatch stall).
CLAIM_ONCE = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 1 end
if redis.call('get', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""

# A phone's rollout fields written by the task that sent (or found out) its reboot, once it is done with it, only
# while the record still says "rebooting" at that reboot's time (ARGV[3]); 0: nothing written. A power cycle's
# port stays off up to 120 s: the driver may have had another copy find out meanwhile (it verified the phone, or
# sent the reboot again), and this copy's late "verifying" put a verified phone back under verification, past its
# verify.within from the old reboot, and rolled a good phone back. KEYS: the phone's record, the change feed.
# ARGV: the feed's length bound (0: no change of state, nothing on the feed), the MAC, the reboot's time, then field,
# value pairs.
SET_IF_STILL_REBOOTING = """
if redis.call('hget', KEYS[1], 'state') ~= 'rebooting' then return 0 end
if tonumber(redis.call('hget', KEYS[1], 'reboot_at') or '') ~= tonumber(ARGV[3]) then return 0 end
redis.call('hset', KEYS[1], unpack(ARGV, 4))
if ARGV[1] ~= '0' then redis.call('xadd', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'mac', ARGV[2]) end
return 1
"""

# A phone's rollout fields written by a task before its reboot (the "publishing" state, a deferral, a refused call
# check), refused (0) when another copy of the task is ahead of this one: its reboot claimed and recorded (KEYS[1]
# the claim, KEYS[2] the phone's record, which holds reboot_at once recorded), or the state moved on from the one
# this copy read (ARGV[3]). A copy redelivered after a Redis restart ran its call check while the first copy
# rebooted the phone, found no answer and wrote "deferred" over "verifying": the phone, rebooted, was never
# verified (test_rollout_faults). A claim with no reboot_at is a copy that died before sending anything: not
# ahead, the next copy goes on (only an older worker leaves one: CLAIM_AND_RECORD_REBOOT). KEYS[3]: the change
# feed. ARGV: the feed's length bound, the MAC, the state read, then field, value pairs.
SET_UNLESS_OVERTAKEN = """
if redis.call('exists', KEYS[1]) == 1 and redis.call('hexists', KEYS[2], 'reboot_at') == 1 then return 0 end
if (redis.call('hget', KEYS[2], 'state') or '') ~= ARGV[3] then return 0 end
redis.call('hset', KEYS[2], unpack(ARGV, 4))
redis.call('xadd', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 'mac', ARGV[2])
return 1
"""


class PushedState(NamedTuple):
    """A phone's newest pushed call state: whether a line is in a call, when the collector received it (its clock),
    and its number in the phone's count of pushes (what readers compare)."""
    in_call: bool
    at: float
    seq: int

P = "fleet:"
OBS_MAXLEN = 10_000
CAPTURE_MAXLEN = 200_000      # SIP datagrams kept per experiment for its capture.pcap
# ... and at most this many bytes of them (as stored): a count alone let a flood of 64 KB datagrams fill Redis
# (200,000 x 64 KB) and evict real state. 128 MB holds some 200,000 typical REGISTER exchanges' datagrams;
# what does not fit is counted in the experiment's hash (capture_left_out), never silently lost.
CAPTURE_MAX_BYTES = 128 * 1024 * 1024
EVENTS_MAXLEN = 200_000
FEED_MAXLEN = 100_000
REBOOT_CLAIM_TTL_S = 7 * 86400   # a reboot claim outlives any rollout that may still be resumed
OUTAGE_MARK_TTL = 2 * 86400   # longer than any outage may last (max_duration <= 1 day)


def foreign_sources(site_evidence: dict) -> list[dict]:
    """One site's evidence sources that got messages naming its phones from addresses not theirs (issue 17):
    [{source, foreign: {address: count}, total}], from the collector's report (see site_evidence)."""
    out = []
    for e in site_evidence.get("sources", []):
        counts = e.get("foreign") or {}
        if counts:
            out.append({"source": e.get("source", ""), "foreign": counts, "total": sum(counts.values())})
    return out


def _unseen_by_mac(evidence: dict[str, dict]) -> dict[str, list[dict]]:
    """The collectors' `unobservable` entries (see site_evidence), grouped by phone."""
    out: dict[str, list[dict]] = {}
    for ev in evidence.values():
        for u in ev.get("unobservable", []):
            out.setdefault(u.get("mac", ""), []).append(u)
    return out


class Keys:
    """The name of every key in the table above; nothing outside this module builds one."""

    PHONES = f"{P}phones"
    EVIDENCE_SITES = f"{P}evidence:sites"
    ROW_SITES = f"{P}rows:sites"
    OBSERVED = f"{P}observed"
    EXPERIMENTS = f"{P}experiments"
    ROLLOUTS = f"{P}rollouts"
    SCHEDULE_MISSED = f"{P}schedule:missed"
    SCHEDULE_MISSED_SEEN = f"{P}schedule:missed:seen"

    @staticmethod
    def phone(mac: str) -> str:
        return f"{P}phone:{mac}"

    @staticmethod
    def site_phones(site: str) -> str:
        return f"{P}site:{site}:phones"

    @staticmethod
    def site_rows(site: str) -> str:
        return f"{P}site:{site}:rows"

    @staticmethod
    def site_experiment(site: str) -> str:
        return f"{P}site:{site}:experiment"

    @staticmethod
    def site_evidence(site: str) -> str:
        return f"{P}site:{site}:evidence"

    @staticmethod
    def site_collector(site: str) -> str:
        return f"{P}site:{site}:collector"

    @staticmethod
    def site_workers(site: str) -> str:
        return f"{P}site:{site}:workers"

    @staticmethod
    def lease(site: str) -> str:
        return f"{P}lease:{site}"

    @staticmethod
    def rest_lock(mac: str) -> str:
        return f"{P}rest:{mac}"

    @staticmethod
    def rest_queue(mac: str) -> str:
        return f"{P}rest:{mac}:queue"

    @staticmethod
    def rest_queue_alive(mac: str) -> str:
        return f"{P}rest:{mac}:alive"

    @staticmethod
    def exp(exp: str) -> str:
        return f"{P}exp:{exp}"

    @staticmethod
    def exp_events(exp: str) -> str:
        return f"{P}exp:{exp}:events"

    @staticmethod
    def exp_capture(exp: str) -> str:
        return f"{P}exp:{exp}:capture"

    @staticmethod
    def exp_obs(exp: str, mac: str) -> str:
        return f"{P}exp:{exp}:obs:{mac}"

    @staticmethod
    def outage_restore(outage_id: str) -> str:
        return f"{P}outage:{outage_id}:restore"

    INCIDENTS = f"{P}incidents"

    @staticmethod
    def incident(incident_id: str) -> str:
        return f"{P}incident:{incident_id}"

    @staticmethod
    def incident_events(incident_id: str) -> str:
        return f"{P}incident:{incident_id}:events"

    @staticmethod
    def incident_obs(incident_id: str, mac: str) -> str:
        return f"{P}incident:{incident_id}:obs:{mac}"

    @staticmethod
    def record(site: str) -> str:
        return f"{P}record:{site}"

    @staticmethod
    def site_incidents_open(site: str) -> str:
        return f"{P}site:{site}:incidents:open"

    @staticmethod
    def rollout(rid: str) -> str:
        return f"{P}rollout:{rid}"

    @staticmethod
    def rollout_phone(rid: str, mac: str) -> str:
        return f"{P}rollout:{rid}:phone:{mac}"

    @staticmethod
    def rollout_changes(rid: str) -> str:
        return f"{P}rollout:{rid}:changes"

    @staticmethod
    def rollout_events(rid: str) -> str:
        return f"{P}rollout:{rid}:events"

    @staticmethod
    def rollout_reboot(rid: str, mac: str, attempt: int | str) -> str:
        return f"{P}rollout:{rid}:reboot:{mac}:{attempt}"

    DURATIONS_COUNTED = f"{P}durations:counted"

    @staticmethod
    def durations(measure: str, origin: str, site: str) -> str:
        return f"{P}durations:{measure}:{origin}:{site}"

    @staticmethod
    def schedule_since(name: str) -> str:
        return f"{P}schedule:{name}:since"

    @staticmethod
    def schedule_last_run(name: str) -> str:
        return f"{P}schedule:{name}:last_run"

    @staticmethod
    def schedule_sent(name: str) -> str:
        return f"{P}schedule:{name}:sent"


K = Keys
OBSERVED_FEED = K.OBSERVED
SOCKET_TIMEOUT_S = 10.0     # a Redis that stops answering: the command fails after this long, not never
# every phone's ready-made row, in one command: SORT <set of MACs> BY nosort GET phone:*->row (see status_json_pieces)
ROWS_BY_MAC_SET = ("BY", "nosort", "GET", f"{K.phone('*')}->row")


def _site_evidence(sites: list[str], hashes: list[dict[str, str]]) -> dict[str, dict]:
    """Store.site_evidence from the sites' evidence hashes as read (one per site, {} for none)."""
    out: dict[str, dict] = {}
    for s, h in zip(sites, hashes):
        if not h:
            continue
        try:
            out[s] = {"unobservable": json.loads(h.get("unobservable") or "[]"),
                      "sources": json.loads(h.get("sources") or "[]"), "t": float(h.get("t") or 0)}
        except ValueError:
            continue            # a damaged report reads as none
    return out


def _status_pieces(stored: list[bytes | None], evidence: dict[str, dict]) -> Iterator[bytes]:
    """`fleet status --json` in pieces from the rows as SORT ... GET returned them (None: a MAC without a row)
    and the site_evidence of the sites that reported (see Store.status_json_pieces)."""
    rows = sorted(row for row in stored if row)
    unseen = {mac: json.dumps(us).encode() for mac, us in _unseen_by_mac(evidence).items()}
    errors = {s: json.dumps(errs).encode() for s, ev in evidence.items()
              if (errs := [e for e in ev.get("sources", []) if e.get("error")])}
    foreign = {s: json.dumps(found).encode() for s, ev in evidence.items() if (found := foreign_sources(ev))}
    return status_pieces(rows, unseen, errors, foreign)


def status_json_quick(url: str, site: str | None = None) -> Iterator[bytes] | None:
    """Store(url).status_json_pieces(site) read without redis-py (fleet.state.resp: `fleet status --json` starts
    in a fraction of the time), or None when `site` is given and Store.has_site would say no (the caller then
    takes the ordinary way, which says so). The same reads as status_json_pieces, the check of the site in the
    same round trip. Raises whatever went wrong (resp.Unsupported for a URL only redis-py handles, OSError,
    resp.ReplyError, a damaged reply): the caller then uses a Store, which fails with redis-py's own errors."""
    conn = resp.Connection(url, timeout=SOCKET_TIMEOUT_S)
    try:
        if site:
            exists, listed = conn.pipeline([("EXISTS", K.site_phones(site)), ("SISMEMBER", K.EVIDENCE_SITES, site)])
            if not (exists or listed):
                return None
        members, stored = _rows_read(conn.pipeline, site)
        reported = sorted(m.decode() for m in members)
        hashes = conn.pipeline([("HGETALL", K.site_evidence(s)) for s in reported]) if reported else []
    finally:
        conn.close()
    decoded = [{k.decode(): v.decode() for k, v in zip(h[::2], h[1::2])} for h in hashes]
    return _status_pieces(stored, _site_evidence(reported, decoded))


def _rows_read(run: Callable[[list[tuple]], list], site: str | None) -> tuple[list[bytes], list[bytes | None]]:
    """(the sites whose collector reported, every ready-made row of the site or of the fleet), as bytes, by
    `run` (a pipeline: redis-py's or fleet.state.resp's). The rows come from the sites' rows hashes, HVALS each
    (Redis reads one hash, not a key per phone: half its time of SORT ... GET over 50,000 phones); when their
    count is not the phones' (a store written before the rows hashes, a phone moved between sites by an older
    controller) the old read, SORT <set of MACs> BY nosort GET phone:*->row, in a second round trip."""
    key = K.site_phones(site) if site else K.PHONES
    if site:
        reported, count, rows = run([("SMEMBERS", K.EVIDENCE_SITES), ("SCARD", key), ("HVALS", K.site_rows(site))])
        stored: list[bytes | None] = rows
    else:
        reported, count, sites = run([("SMEMBERS", K.EVIDENCE_SITES), ("SCARD", key), ("SMEMBERS", K.ROW_SITES)])
        names = sorted(sites)
        stored = [row for rows in (run([("HVALS", K.site_rows(s.decode())) for s in names]) if names else [])
                  for row in rows]
    if len(stored) != int(count):
        stored = run([("SORT", key, *ROWS_BY_MAC_SET)])[0]
    return reported, stored


class LeaseHeld(Exception):
    """Another experiment or rollout holds the site."""


def lease_holder_run(holder: str | None) -> str:
    """The run a lease holder (`KIND:ID:TOKEN`, fleet.state.lease) stands for, as `fleet experiment list` and
    `fleet rollout list` name it: `experiment 20261206-031500-ab12cd`, `rollout r1`. The token only tells two runs
    of the same work apart, so the user never sees it; a holder of another shape is shown as it is."""
    if not holder:
        return "nobody (the lease expired just now)"
    owner, sep, _token = holder.rpartition(":")
    kind, sep2, run_id = owner.partition(":")
    if not sep or not sep2 or kind not in ("experiment", "rollout"):
        return holder
    return f"{kind} {run_id} (`fleet {kind} show {run_id}`)" if kind == "experiment" else \
        f"{kind} {run_id} (`fleet {kind} status {run_id}`)"


class RolloutExists(Exception):
    """A rollout with this id was already created."""


class Store:
    def __init__(self, url: str) -> None:
        import redis  # in-function: redis-py takes 100 ms to import, which status_json_quick's callers never pay

        self.url = url
        self.r = redis.Redis.from_url(url, decode_responses=True, socket_timeout=SOCKET_TIMEOUT_S,
                                      health_check_interval=30)

    # ------------------------------------------------------------ phones
    def register_phones(self, site: str, phones: Iterable[dict]) -> None:
        phones = list(phones)
        pipe = self.r.pipeline(transaction=False)
        for p in phones:
            pipe.hmget(K.phone(p['mac']), "state", "firmware", "site")
        previous = pipe.execute()
        pipe = self.r.pipeline(transaction=False)
        pipe.sadd(K.ROW_SITES, site)
        for p, (state, firmware, was_at) in zip(phones, previous):
            meta = {"mac": p["mac"], "site": site, "model": p.get("model", ""), "firmware": firmware,
                    "firmware_declared": p.get("firmware_version") or "", "address": p.get("address", ""),
                    "configured_servers": p.get("servers", []),
                    "state": json.loads(state) if state else PhoneState(mac=p["mac"]).to_dict()}
            row = json.dumps(row_for_json(meta))
            pipe.hset(K.phone(p['mac']), mapping={"site": site, "model": p.get("model", ""),
                                                       "address": p.get("address", ""),
                                                       "firmware_declared": p.get("firmware_version") or "",
                                                       "servers": json.dumps(p.get("servers", [])),
                                                       "row": row})
            if was_at and was_at != site:
                # registered at another site: its row leaves the old site's rows (the whole fleet's read counts
                # each phone once); the old site's set keeps it, as it always did, and that site is then read
                # the old way (see _rows_read)
                pipe.hdel(K.site_rows(was_at), p["mac"])
            pipe.hset(K.site_rows(site), p["mac"], row)
            pipe.sadd(K.site_phones(site), p["mac"])
            pipe.sadd(K.PHONES, p["mac"])
        pipe.execute()

    def phone_states(self, macs: list[str]) -> dict[str, PhoneState]:
        pipe = self.r.pipeline(transaction=False)
        for mac in macs:
            pipe.hget(K.phone(mac), "state")
        return {m: PhoneState.from_dict(json.loads(raw)) if raw else PhoneState(mac=m) for m, raw in zip(macs, pipe.execute())}

    def phone_state(self, mac: str) -> PhoneState:
        raw = self.r.hget(K.phone(mac), "state")
        return PhoneState.from_dict(json.loads(raw)) if raw else PhoneState(mac=mac)

    def record_observations(self, observations: list[Observation]) -> int:
        """Fold observations into each phone's last state, and copy them into the site's running experiment."""
        if not observations:
            return 0
        macs = sorted({o.mac for o in observations})
        pipe = self.r.pipeline(transaction=False)
        for mac in macs:
            pipe.hmget(K.phone(mac), "state", "site", "model", "firmware", "servers", "firmware_declared", "address")
        rows = pipe.execute()
        states = {mac: (PhoneState.from_dict(json.loads(row[0])) if row[0] else PhoneState(mac=mac), row[1])
                  for mac, row in zip(macs, rows)}
        metas = {mac: {"model": row[2], "firmware": row[3], "configured_servers": json.loads(row[4] or "[]"),
                       "firmware_declared": row[5], "address": row[6]}
                 for mac, row in zip(macs, rows)}
        sites = {site for _, site in states.values() if site}
        active = dict(zip(sorted(sites), self.r.mget([K.site_experiment(s) for s in sorted(sites)]))) if sites else {}
        pipe = self.r.pipeline(transaction=False)
        for obs in sorted(observations, key=lambda o: o.t):
            state, site = states[obs.mac]
            if site is None:
                continue   # a phone not in the inventory: ignored rather than trusted
            # the store keeps registration 1's configured servers only: other lines are judged on what was seen
            configured = ([s["index"] for s in metas[obs.mac]["configured_servers"] if s.get("register", True)]
                          if obs.reg == 1 else None)
            apply(state, obs, configured)
            exp = active.get(site)
            if exp:
                entry = obs.to_dict() | {"working_server": state.working_server}
                pipe.xadd(K.exp_obs(exp, obs.mac), {"o": json.dumps(entry)}, maxlen=OBS_MAXLEN, approximate=True)
        for mac, (state, site) in states.items():
            if site is not None:
                as_dict = state.to_dict()
                row = json.dumps(row_for_json({"mac": mac, "site": site, "state": as_dict, **metas[mac]}))
                pipe.hset(K.phone(mac), mapping={"state": json.dumps(as_dict), "row": row})
                pipe.hset(K.site_rows(site), mac, row)
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
            pipe.hmget(K.phone(mac), "row", "site")
        rows = pipe.execute()
        pipe = self.r.pipeline(transaction=False)
        for mac, (row, site) in zip(macs, rows):
            mapping = {k: (json.dumps(v) if not isinstance(v, str) else v) for k, v in infos[mac].items() if v is not None}
            if row and infos[mac].get("firmware"):
                mapping["row"] = json.dumps(json.loads(row) | {"firmware": infos[mac]["firmware"], "firmware_from": "phone"})
                if site:
                    pipe.hset(K.site_rows(site), mac, mapping["row"])
            if mapping:
                pipe.hset(K.phone(mac), mapping=mapping)
        pipe.execute()

    def record_pushed_call_state(self, mac: str, in_call: bool, t: float) -> int:
        """A state the phone pushed (state polling push mode), received at `t` by the collector's clock; returns
        its number in the phone's count of pushes. Readers tell a newer push by that count, never by comparing
        `t` with their own clock (the collector and the workers run on different hosts)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(K.phone(mac), mapping={"in_call": json.dumps(bool(in_call)), "in_call_pushed_at": repr(float(t))})
        pipe.hincrby(K.phone(mac), "in_call_pushed_seq", 1)
        return int(pipe.execute()[1])

    def pushed_call_state(self, mac: str) -> PushedState | None:
        """The newest state the phone pushed (in a call, the collector's time, its number), or None."""
        in_call, at, seq = self.r.hmget(K.phone(mac), "in_call", "in_call_pushed_at", "in_call_pushed_seq")
        try:
            return PushedState(json.loads(in_call) is True, float(at), int(seq)) if in_call is not None and at and seq \
                else None
        except ValueError:
            return None

    def status_json(self, site: str | None = None) -> str:
        """`fleet status --json` (every phone, or the site's) as one string: see status_json_pieces."""
        return b"".join(self.status_json_pieces(site)).decode()

    def status_json_pieces(self, site: str | None = None) -> Iterator[bytes]:
        """`fleet status --json` straight from the ready-made rows, in pieces to write out one after the other
        (fleet.state.status_json). Every read is done before this returns: a Redis error never leaves half a list.

        The rows come in one command, SORT ... BY nosort GET phone:*->row: Redis reads each phone's row itself
        and the client parses one reply, not one per phone (50,000 phones: a sixth of the client CPU time of a
        pipelined HGET each). They come as bytes (never decoded) and are sorted here by MAC. SORT's GET needs
        the `~*` key pattern in the user's ACL, as fleet's user has (soundpoint.redisboot).

        Each row gains what its site's collector reported (`site_evidence`): `unobservable` (this phone's servers
        no wire source can see, and why), `evidence_errors` (the site's evidence sources that are failing) and
        `evidence_foreign` (`foreign_sources`: the site's sources that got SIP naming its phones from other
        addresses, counted per address)."""
        def run(commands: list[tuple]) -> list:
            pipe = self.r.pipeline(transaction=False)
            for c in commands:
                pipe.execute_command(*c, NEVER_DECODE=True)
            return pipe.execute()

        reported, stored = _rows_read(run, site)
        return _status_pieces(stored, self.site_evidence(sorted(m.decode() for m in reported)))

    def set_site_evidence(self, site: str, unobservable: list[dict], sources: list[dict]) -> None:
        """The collector's report about its per-server evidence (fleet.evidence.collector): which targets no wire source
        can see and why; per evidence source its state, error (never a secret) and since when."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(K.site_evidence(site), mapping={"unobservable": json.dumps(unobservable),
                                                  "sources": json.dumps(sources), "t": repr(time.time())})
        pipe.sadd(K.EVIDENCE_SITES, site)
        pipe.execute()

    # ------------------------------------------------------------ workers' files
    def announce_worker_files(self, site: str, worker: str, info: dict, ttl: float) -> None:
        """A worker says which inventory and secrets file it runs with (paths and hashes, never content); refreshed
        while it runs, the entry lapses `ttl` s after its last refresh (Redis time: hosts' clocks may differ)."""
        now = self.redis_time()
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(K.site_workers(site), worker, json.dumps(info | {"at": now}))
        pipe.expire(K.site_workers(site), max(1, int(ttl)))
        pipe.execute()

    def forget_worker_files(self, site: str, worker: str) -> None:
        self.r.hdel(K.site_workers(site), worker)

    def worker_files(self, site: str, ttl: float) -> dict[str, dict]:
        """{worker (host:pid): what it announced} for the site's workers that refreshed within `ttl` s."""
        now = self.redis_time()
        out = {}
        for worker, raw in self.r.hgetall(K.site_workers(site)).items():
            try:
                info = json.loads(raw)
                fresh = now - float(info.get("at", 0)) <= ttl
            except (ValueError, TypeError, AttributeError):
                continue         # a damaged entry reads as none
            if fresh:
                out[worker] = info
        return out

    def redis_time(self) -> float:
        """The Redis server's clock: one clock for every host that compares times written by another."""
        sec, usec = self.r.time()
        return sec + usec / 1e6

    def site_evidence(self, sites: list[str]) -> dict[str, dict]:
        """{site: {unobservable: [...], sources: [...], t}} for the sites whose collector reported; {} for none."""
        if not sites:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for s in sites:
            pipe.hgetall(K.site_evidence(s))
        return _site_evidence(sites, pipe.execute())

    def set_site_collector(self, site: str, record: dict[str, str], ttl: float) -> None:
        """The site's running collector (fleet.state.collectors): written whole at each heartbeat, the key's TTL
        reset to `ttl`, so what is left of the TTL says how long ago it last reported, on Redis' clock alone."""
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(K.site_collector(site))
        pipe.hset(K.site_collector(site), mapping=record)
        pipe.pexpire(K.site_collector(site), int(ttl * 1000))
        pipe.execute()

    def site_collector(self, site: str) -> tuple[dict[str, str], float]:
        """(the record, milliseconds of its TTL left); ({}, 0) when no collector of the site reported within its TTL."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(K.site_collector(site))
        pipe.pttl(K.site_collector(site))
        record, pttl = pipe.execute()
        return (record, float(pttl)) if record and pttl > 0 else ({}, 0.0)

    def clear_site_collector(self, site: str, holder: str) -> None:
        """Remove the site's collector record if `holder` wrote it (a collector stopping; never another's)."""
        script = "if redis.call('hget', KEYS[1], 'holder') == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
        self.r.eval(script, 1, K.site_collector(site), holder)

    def has_site(self, site: str) -> bool:
        """Whether site_names() lists `site`, in one round trip (site_names() walks every key in Redis)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.exists(K.site_phones(site))
        pipe.sismember(K.EVIDENCE_SITES, site)
        phones, reported = pipe.execute()
        return bool(phones) or bool(reported)

    def site_names(self) -> list[str]:
        """Every site with phones registered here (a collector, worker or experiment registered them) or whose
        collector reported: what `fleet status --site` can show."""
        prefix, suffix = K.site_phones("*").split("*")
        names = {key[len(prefix):-len(suffix)] for key in self.r.scan_iter(match=K.site_phones("*"), count=1000)}
        return sorted(names | set(self.r.smembers(K.EVIDENCE_SITES)))

    def phones(self, site: str | None = None) -> list[dict]:
        """Every phone's row for `fleet status`, read with one pipelined round trip."""
        return self.phones_and_evidence(site)[0]

    def phones_and_evidence(self, site: str | None = None) -> tuple[list[dict], dict[str, dict]]:
        """`phones(site)` and the `site_evidence` of their sites, from one read of each (what `fleet status`
        draws: the phones' table and the failing sources under it)."""
        key = K.site_phones(site) if site else K.PHONES
        macs = sorted(self.r.smembers(key))
        pipe = self.r.pipeline(transaction=False)
        for mac in macs:
            pipe.hgetall(K.phone(mac))
        out = []
        hashes = pipe.execute()
        evidence = self.site_evidence(sorted({h["site"] for h in hashes if h.get("site")}))
        unseen = _unseen_by_mac(evidence)
        for mac, h in zip(macs, hashes):
            state = json.loads(h["state"]) if h.get("state") else PhoneState(mac=mac).to_dict()
            out.append({"mac": mac, "site": h.get("site"), "model": h.get("model"), "address": h.get("address"),
                        "firmware": h.get("firmware"), "firmware_declared": h.get("firmware_declared"),
                        "config_version": h.get("config_version"),
                        "configured_servers": json.loads(h.get("servers") or "[]"), "state": state,
                        "unobservable": unseen.get(mac, [])})
        return out, evidence

    def forget_phones(self, macs: list[str]) -> None:
        """Take phones out of the store (gone from the inventory): their hash and their place in the phone sets."""
        pipe = self.r.pipeline(transaction=False)
        for mac in macs:
            pipe.hget(K.phone(mac), "site")
        sites = pipe.execute()
        pipe = self.r.pipeline(transaction=False)
        for mac, site in zip(macs, sites):
            pipe.delete(K.phone(mac))
            pipe.srem(K.PHONES, mac)
            if site:
                pipe.srem(K.site_phones(site), mac)
                pipe.hdel(K.site_rows(site), mac)
        pipe.execute()

    # ------------------------------------------------------------ leases
    def acquire_lease(self, site: str, holder: str, ttl: float = 30.0) -> None:
        key = K.lease(site)
        if self.r.set(key, holder, nx=True, px=int(ttl * 1000)):
            return
        current = self.r.get(key)
        if current == holder:
            self.r.pexpire(key, int(ttl * 1000))
            return
        raise LeaseHeld(f"site {site} is leased by {lease_holder_run(current)} (it expires by itself {self.r.pttl(key) / 1000:.0f}s after its holder stops renewing it)")

    def renew_lease(self, site: str, holder: str, ttl: float = 30.0) -> bool:
        return bool(self.r.eval(RENEW_IF_HELD, 1, K.lease(site), holder, int(ttl * 1000)))

    def lease_info(self, site: str) -> tuple[str | None, int]:
        """(holder, milliseconds left) of a site's lease; (None, -2) when nobody holds it."""
        pipe = self.r.pipeline(transaction=False)
        pipe.get(K.lease(site))
        pipe.pttl(K.lease(site))
        holder, pttl = pipe.execute()
        return holder, int(pttl)

    def release_lease(self, site: str, holder: str) -> None:
        script = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
        self.r.eval(script, 1, K.lease(site), holder)

    def break_lease(self, site: str) -> str | None:
        """Free a site whatever holds it (an operator's last resort for a holder known dead); the holder it had.

        A live holder notices at its next renewal and stops (fleet.state.lease).
        """
        pipe = self.r.pipeline()
        pipe.get(K.lease(site))
        pipe.delete(K.lease(site))
        holder, _ = pipe.execute()
        return holder

    # ------------------------------------------------------------ per-phone REST lock
    def acquire_phone_lock(self, mac: str, holder: str, ttl: float, claim: bool = False) -> bool:
        """Take the phone's REST lock for `ttl` seconds if nobody holds it and no earlier waiter is queued for it;
        whether we got it. `claim`: if not, join the phone's queue (our place lapses within REST_TURN_CLAIM_MS
        unless we ask again), so a holder that frees and retakes the lock at once cannot starve us."""
        return bool(self.r.eval(TAKE_IN_TURN, 3, K.rest_lock(mac), K.rest_queue(mac), K.rest_queue_alive(mac), holder,
                                max(1, int(ttl * 1000)), "1" if claim else "0", REST_TURN_CLAIM_MS))

    def give_up_phone_turn(self, mac: str, holder: str) -> None:
        """A waiter that stops waiting leaves the phone's queue: nobody waits on it."""
        pipe = self.r.pipeline()
        pipe.zrem(K.rest_queue(mac), holder)
        pipe.hdel(K.rest_queue_alive(mac), holder)
        pipe.execute()

    def phone_turn_claimant(self, mac: str) -> str | None:
        """The first waiter in the phone's REST queue, if any."""
        head = self.r.zrange(K.rest_queue(mac), 0, 0)
        return head[0] if head else None

    def renew_phone_locks(self, held: list[tuple[str, str, float]]) -> list[bool]:
        """Extend each (mac, holder, ttl) REST lock to its ttl from now where it is still ours, in one round trip;
        whether each was (fleet.state.lease.RestLockKeeper)."""
        pipe = self.r.pipeline(transaction=False)
        for mac, holder, ttl in held:
            pipe.eval(RENEW_IF_HELD, 1, K.rest_lock(mac), holder, max(1, int(ttl * 1000)))
        return [bool(x) for x in pipe.execute()]

    def phone_lock_holder(self, mac: str) -> str | None:
        return self.r.get(K.rest_lock(mac))

    def release_phone_lock(self, mac: str, holder: str) -> None:
        """Free the phone's REST lock if it is still ours (an expired one taken by another stays theirs)."""
        script = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
        self.r.eval(script, 1, K.rest_lock(mac), holder)

    # ------------------------------------------------------------ outages
    def request_outage_restore(self, outage_id: str) -> None:
        """Mark the outage as ended before the router is touched: a cut still queued or running sees it."""
        self.r.set(K.outage_restore(outage_id), time.time(), ex=OUTAGE_MARK_TTL)

    def outage_restore_requested(self, outage_id: str) -> bool:
        return bool(self.r.exists(K.outage_restore(outage_id)))

    # ------------------------------------------------------------ schedules
    def schedule_seen_since(self, name: str) -> float:
        """When the scheduler first saw this schedule (set now if never): runs due before then were never missed."""
        key = K.schedule_since(name)
        self.r.setnx(key, time.time())
        return float(self.r.get(key))

    def set_schedule_seen_since(self, name: str, t: float) -> None:
        """Say the scheduler has known this schedule since `t` (runs due after it count as missed if they never ran)."""
        self.r.set(K.schedule_since(name), t)

    def schedule_last_run(self, name: str) -> float:
        return float(self.r.get(K.schedule_last_run(name)) or 0)

    def set_schedule_last_run(self, name: str, t: float) -> None:
        self.r.set(K.schedule_last_run(name), t)

    def set_schedule_sent(self, name: str, t: float, fire_time: str) -> None:
        """Beat sent the run due at `fire_time`: kept in Redis rather than in a schedule file beside beat."""
        self.r.hset(K.schedule_sent(name), mapping={"t": t, "fire_time": fire_time})

    def schedule_sent(self, name: str) -> dict:
        return self.r.hgetall(K.schedule_sent(name))

    def record_missed(self, occurrence: str, message: str) -> bool:
        """Record a missed (or refused) run once per occurrence; True if it is new."""
        if self.r.sadd(K.SCHEDULE_MISSED_SEEN, occurrence):
            self.r.rpush(K.SCHEDULE_MISSED, message)
            return True
        return False

    def missed_runs(self) -> list[str]:
        return self.r.lrange(K.SCHEDULE_MISSED, 0, -1)

    # ------------------------------------------------------------ experiments
    @staticmethod
    def new_experiment_id() -> str:
        """A fresh experiment id: a run takes its site's lease under it before its record exists (fleet.state.lease)."""
        return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]

    def new_experiment(self, site: str, playbook: str, exp: str | None = None) -> str:
        exp = exp or self.new_experiment_id()
        now = time.time()
        self.r.hset(K.exp(exp), mapping={"id": exp, "site": site, "playbook": playbook, "status": "running",
                                              "started": now})
        self.r.zadd(K.EXPERIMENTS, {exp: now})
        return exp

    def set_observing(self, site: str, exp: str | None) -> None:
        if exp:
            self.r.set(K.site_experiment(site), exp)
        else:
            self.r.delete(K.site_experiment(site))

    def observing(self, site: str) -> str | None:
        """The experiment that collectors copy the site's observations to now, if any."""
        return self.r.get(K.site_experiment(site))

    def finish_experiment(self, exp: str, passed: bool, report_dir: str, interrupted: bool = False) -> None:
        """The run's end state as `fleet experiment list` shows it: passed, failed, or interrupted (a stop signal
        ended it early: not a verdict on the phones)."""
        status = "interrupted" if interrupted else "passed" if passed else "failed"
        self.r.hset(K.exp(exp), mapping={"status": status, "finished": time.time(),
                                              "report_dir": report_dir})

    def log_event(self, exp: str, kind: str, **data) -> None:
        entry = {"kind": kind, "t": time.time(), "mono": time.monotonic(), **data}
        self.r.xadd(K.exp_events(exp), {"e": json.dumps(entry, default=str)}, maxlen=EVENTS_MAXLEN, approximate=True)

    def keep_capture(self, exp: str, datagrams: list[dict]) -> None:
        """SIP datagrams a wire source saw while the experiment ran ({t, src, dst, payload (base64), source}),
        up to CAPTURE_MAX_BYTES per experiment: the bytes are reserved first (HINCRBY, atomic, so concurrent
        batches never pass the cap together), what does not fit is given back and counted as left out."""
        encoded = [json.dumps(d) for d in datagrams]
        if not encoded:
            return
        batch = sum(map(len, encoded))
        room = CAPTURE_MAX_BYTES - (self.r.hincrby(K.exp(exp), "capture_bytes", batch) - batch)
        kept = used = 0
        for row in encoded:
            if used + len(row) > room:
                break
            kept, used = kept + 1, used + len(row)
        pipe = self.r.pipeline(transaction=False)
        for row in encoded[:kept]:
            pipe.xadd(K.exp_capture(exp), {"d": row}, maxlen=CAPTURE_MAXLEN, approximate=True)
        if kept < len(encoded):
            pipe.hincrby(K.exp(exp), "capture_bytes", used - batch)
            pipe.hincrby(K.exp(exp), "capture_left_out", len(encoded) - kept)
        pipe.execute()

    def capture_left_out(self, exp: str) -> int:
        """SIP datagrams not kept for the experiment's capture because it reached CAPTURE_MAX_BYTES."""
        return int(self.r.hget(K.exp(exp), "capture_left_out") or 0)

    def capture(self, exp: str) -> list[dict]:
        return [json.loads(f["d"]) for _, f in self.r.xrange(K.exp_capture(exp))]

    def events(self, exp: str) -> list[dict]:
        return [json.loads(f["e"]) for _, f in self.r.xrange(K.exp_events(exp))]

    def observations(self, exp: str, mac: str) -> list[dict]:
        return [json.loads(f["o"]) for _, f in self.r.xrange(K.exp_obs(exp, mac))]

    def experiments(self, limit: int = 50) -> list[dict]:
        ids = self.r.zrevrange(K.EXPERIMENTS, 0, limit - 1)
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(K.exp(i))
        return pipe.execute()

    def experiment(self, exp: str) -> dict:
        return self.r.hgetall(K.exp(exp))

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
        from redis import WatchError  # in-function: redis-py is imported by Store(), not with this module

        key = K.rollout(rid)
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
                        pipe.hset(K.rollout_phone(rid, mac), mapping={"state": "pending", "attempt": 1, "wave": wave,
                                                                            "plan": json.dumps(entries[mac])})
                pipe.zadd(K.ROLLOUTS, {rid: time.time()})
                pipe.execute()
            except WatchError:
                raise RolloutExists(rid) from None

    def get(self, rid: str) -> dict:
        data = self.r.hgetall(K.rollout(rid))
        if data.get("plan"):
            data["plan"] = json.loads(data["plan"])
        return data

    def list(self, limit: int = 50) -> list[dict]:
        ids = self.r.zrevrange(K.ROLLOUTS, 0, limit - 1)
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hmget(K.rollout(i), "id", "playbook", "status", "created", "reason")
        return [dict(zip(("id", "playbook", "status", "created", "reason"), row)) for row in pipe.execute()]

    def macs(self, rid: str) -> list[str]:
        """The rollout's phones, wave by wave, as its plan lists them (empty for an unknown rollout)."""
        raw = self.r.hget(K.rollout(rid), "plan")
        plan = json.loads(raw) if raw else {}
        return [mac for wave in plan.get("waves", []) for mac in wave]

    def count(self) -> int:
        """How many rollouts were ever created."""
        return int(self.r.zcard(K.ROLLOUTS))

    def ids_with_records(self) -> set[str]:
        """Every rollout id that has any record at all (created or not): for audits of what wrote to Redis."""
        prefix = K.rollout("")
        return {key[len(prefix):].split(":", 1)[0] for key in self.r.scan_iter(f"{prefix}*", count=1000)}

    def get_field(self, rid: str, name: str) -> str | None:
        return self.r.hget(K.rollout(rid), name)

    def set(self, rid: str, **fields) -> None:
        self.r.hset(K.rollout(rid), mapping={k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in fields.items()})

    def phone(self, rid: str, mac: str) -> dict:
        return self.r.hgetall(K.rollout_phone(rid, mac))

    STATE_FIELDS = ("state", "attempt", "wave", "reboot_at", "rollback_at", "dispatched_at", "deferred_at", "error",
                    "verified_in", "confirm_sent", "shadowed",   # shadowed: fleet.sites.overrides
                    "reboot_optional", "reports_shutdown", "applied",   # a check-sync that need not reboot
                    "deferred_reason",                           # why a deferred phone waits (rollout_policy.why_deferred)
                    "verify_from", "rollback_verify_from")       # the reboot answered (rollout_policy.evidence_from)

    def phones(self, rid: str, macs: list[str], full: bool = False) -> dict[str, dict]:
        """Per-phone rollout state; without `full`, only the small fields the driver polls (not the phone's plan)."""
        pipe = self.r.pipeline(transaction=False)
        for mac in macs:
            if full:
                pipe.hgetall(K.rollout_phone(rid, mac))
            else:
                pipe.hmget(K.rollout_phone(rid, mac), self.STATE_FIELDS)
        rows = pipe.execute()
        if full:
            return dict(zip(macs, rows))
        return {m: {k: v for k, v in zip(self.STATE_FIELDS, row) if v is not None} for m, row in zip(macs, rows)}

    @staticmethod
    def _field_values(fields: dict) -> dict:
        """A phone's rollout fields as stored: None is "" (a hash holds no None)."""
        return {k: ("" if v is None else v) for k, v in fields.items()}

    def set_phone(self, rid: str, mac: str, **fields) -> None:
        """Write a phone's rollout fields; a change of state also goes on the rollout's change feed."""
        mapping = self._field_values(fields)
        if "state" not in fields:
            self.r.hset(K.rollout_phone(rid, mac), mapping=mapping)
            return
        from redis.client import Pipeline  # in-function: redis-py is imported by Store(), not with this module

        batched = isinstance(self.r, Pipeline)   # inside `batch()`: queued with the rest
        pipe = self.r if batched else self.r.pipeline(transaction=False)
        pipe.hset(K.rollout_phone(rid, mac), mapping=mapping)
        pipe.xadd(self.changes_key(rid), {"mac": mac}, maxlen=FEED_MAXLEN, approximate=True)
        if not batched:
            pipe.execute()

    @contextlib.contextmanager
    def batch(self) -> Iterator["RolloutStore"]:
        """A store whose writes (set_phone, set_pushed, log, set) are queued and sent in one round trip, in the order
        made, when the block ends; nothing is sent if the block raises. For writes only: a read inside returns
        nothing useful. The driver records a whole pass's decisions so (a pass verifying and dispatching dozens
        of phones made three round trips for each)."""
        pipe = self.r.pipeline(transaction=False)
        batched = RolloutStore.__new__(RolloutStore)
        batched.r = pipe
        yield batched
        pipe.execute()

    @staticmethod
    def changes_key(rid: str) -> str:
        return K.rollout_changes(rid)

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

    def claim_tick(self, rid: str, tick: int, stale_after: float) -> str:
        """May tick number `tick` of a rollout driven in ticks run: "run" (claimed for this copy), "done" (it or a
        later one ran: this copy is a duplicate), or "busy" (another copy claimed it under `stale_after` seconds
        ago: look again later, by when a copy that died with its worker no longer counts)."""
        return str(self.r.eval(CLAIM_TICK, 1, K.rollout(rid), int(tick), float(stale_after)))

    def tick_done(self, rid: str, tick: int) -> None:
        """Tick number `tick` did its work: a copy of it does nothing (claim_tick says "done")."""
        self.r.hset(K.rollout(rid), mapping={"tick_done": int(tick), "tick_running": 0})

    def claim_reboot(self, rid: str, mac: str, attempt: int | str) -> bool:
        """True once per phone and attempt (or per "ATTEMPT-confirm"): the guard against rebooting twice. The claim
        holds a value of this call's own, so the client's retry after a lost reply finds it its own (CLAIM_ONCE)."""
        token = f"{time.time()!r} {uuid.uuid4().hex[:12]}"
        return bool(self.r.eval(CLAIM_ONCE, 1, K.rollout_reboot(rid, mac, attempt), token, REBOOT_CLAIM_TTL_S))

    def claim_and_record_reboot(self, rid: str, mac: str, attempt: int, at: float) -> bool:
        """True once per phone and attempt: this caller may send the reboot, which is recorded (state rebooting,
        reboot_at `at`, on the change feed) in the same step as the claim. False: another copy holds it, and its
        reboot is on record (CLAIM_AND_RECORD_REBOOT)."""
        return bool(self.r.eval(CLAIM_AND_RECORD_REBOOT, 3, K.rollout_reboot(rid, mac, attempt), K.rollout_phone(rid, mac),
                                self.changes_key(rid), repr(float(at)), REBOOT_CLAIM_TTL_S, FEED_MAXLEN, mac))

    def set_phone_if_still_rebooting(self, rid: str, mac: str, recorded_at: float, /, **fields) -> bool:
        """set_phone (a change of state also on the change feed) in one step, only while the phone's record still
        says "rebooting" from the reboot recorded at `recorded_at` (its reboot_at): the writer is still the one the
        outcome of that reboot belongs to (SET_IF_STILL_REBOOTING). False: nothing written."""
        flat = [str(x) for kv in self._field_values(fields).items() for x in kv]
        return bool(self.r.eval(SET_IF_STILL_REBOOTING, 2, K.rollout_phone(rid, mac), self.changes_key(rid),
                                FEED_MAXLEN if "state" in fields else 0, mac, repr(float(recorded_at)), *flat))

    def set_phone_unless_overtaken(self, rid: str, mac: str, attempt: int | str, read_state: str, **fields) -> bool:
        """set_phone (a change of state, on the change feed) in one step, unless another copy of this task is ahead:
        the phone's reboot for `attempt` claimed and recorded, or its state no longer `read_state` (what this copy
        read when it began: "" for none). False: nothing written."""
        flat = [str(x) for kv in self._field_values(fields).items() for x in kv]
        return bool(self.r.eval(SET_UNLESS_OVERTAKEN, 3, K.rollout_reboot(rid, mac, attempt),
                                K.rollout_phone(rid, mac), self.changes_key(rid), FEED_MAXLEN, mac, read_state,
                                *flat))

    def set_phone_if_absent(self, rid: str, mac: str, **fields) -> None:
        """Write each of a phone's rollout fields only where it has none yet (HSETNX): a mark one copy of a task
        made (a file's backup: "yes", "absent", "same") is not overwritten by another copy that read the record
        before it and the boot server after it (fleet.rollout.work._publish)."""
        pipe = self.r.pipeline(transaction=True)     # one copy's marks land together
        for k, v in self._field_values(fields).items():
            pipe.hsetnx(K.rollout_phone(rid, mac), k, v)
        pipe.execute()

    def log(self, rid: str, kind: str, **data) -> None:
        self.r.xadd(K.rollout_events(rid), {"e": json.dumps({"kind": kind, "t": time.time(), **data}, default=str)},
                    maxlen=EVENTS_MAXLEN, approximate=True)

    def events(self, rid: str) -> list[dict]:
        return [json.loads(f["e"]) for _, f in self.r.xrange(K.rollout_events(rid))]

    def last_pushed(self, macs: list[str]) -> dict[str, dict]:
        pipe = self.r.pipeline(transaction=False)
        for mac in macs:
            pipe.hget(K.phone(mac), "pushed_params")
        return {m: json.loads(v) for m, v in zip(macs, pipe.execute()) if v}

    def config_version(self, mac: str) -> str | None:
        return self.r.hget(K.phone(mac), "config_version")

    def config_versions(self, macs: list[str]) -> dict[str, str]:
        """config_version of each phone that has one (one round trip)."""
        pipe = self.r.pipeline(transaction=False)
        for mac in macs:
            pipe.hget(K.phone(mac), "config_version")
        return {m: v for m, v in zip(macs, pipe.execute()) if v}

    def set_pushed(self, mac: str, params: dict, version: str) -> None:
        """Record what the phone now runs; its configured servers (for `fleet status`) follow it."""
        from fleet.phoneconf.predict import configured_servers  # in-function: the families' tables cost `fleet status` a quarter of its start

        servers = configured_servers(params)
        self.r.hset(K.phone(mac), mapping={"pushed_params": json.dumps(params), "config_version": version,
                                           "servers": json.dumps(servers)})
