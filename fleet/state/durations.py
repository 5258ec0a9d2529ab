"""Failover and recovery times as histograms kept in Redis, for Prometheus (fleet.evidence.metrics).

A site may have years of experiments and incidents, and a scrape must stay cheap: so each finished run adds its
phones' measured seconds to one hash per (measure, origin, site) — a count per bucket, the sum and the count —
once (the run's id goes into a set in the same Lua call, so a run counted twice, or half, cannot happen). A scrape
reads one small hash per site and measure, whatever the history. `origin` is "experiment" (fleet.experiment's
runner records at its finish) or "incident" (issue 20 part 1, when the collector closes one).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from fleet.state.store import Keys, Store

MEASURES = ("failover", "recovery")
ORIGINS = ("experiment", "incident")
# upper bounds in seconds: SIP timers put failover between a few seconds (fast retries) and several minutes
# (a full registration expiry); recovery reaches the provider's re-registration and DNS TTLs
BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)

_RECORD = """
if redis.call('sadd', KEYS[1], ARGV[1]) == 0 then return 0 end
local adds = cjson.decode(ARGV[2])
for i = 2, #KEYS do
  local add = adds[i - 1]
  for field, n in pairs(add.counts) do redis.call('hincrby', KEYS[i], field, n) end
  redis.call('hincrbyfloat', KEYS[i], 'sum', add.sum)
end
return 1
"""


@dataclass(frozen=True)
class Histogram:
    """One (measure, origin, site) histogram: cumulative counts per upper bound (BUCKETS, then +Inf), and sum."""
    measure: str
    origin: str
    site: str
    buckets: list[tuple[float, int]]
    sum: float
    count: int


def bucket_of(seconds: float) -> int:
    """The index of the first bound at or above `seconds` (len(BUCKETS): the +Inf bucket)."""
    return next((i for i, bound in enumerate(BUCKETS) if seconds <= bound), len(BUCKETS))


def record(store: Store, site: str, origin: str, run_id: str, measured: dict[str, list[float]]) -> bool:
    """Add one run's measured seconds (measure -> values, one per phone) to the site's histograms, once per
    `origin:run_id`; False when that run was counted already. Values that are not finite non-negative numbers
    are left out (an unmeasured phone is None upstream, never a number)."""
    if origin not in ORIGINS:
        raise ValueError(f"origin {origin!r} is not one of {', '.join(ORIGINS)}")
    keys, adds = [], []
    for measure, values in sorted(measured.items()):
        if measure not in MEASURES:
            raise ValueError(f"measure {measure!r} is not one of {', '.join(MEASURES)}")
        good = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v) and v >= 0]
        if not good:
            continue
        counts: dict[str, int] = {"count": len(good)}
        for v in good:
            field = f"b:{bucket_of(v)}"
            counts[field] = counts.get(field, 0) + 1
        keys.append(Keys.durations(measure, origin, site))
        adds.append({"counts": counts, "sum": round(sum(good), 6)})
    return bool(store.r.eval(_RECORD, 1 + len(keys), Keys.DURATIONS_COUNTED, *keys, f"{origin}:{run_id}",
                             json.dumps(adds)))


def read(store: Store, sites: list[str]) -> list[Histogram]:
    """Every (measure, origin) histogram of `sites` that has counted anything, in one round trip."""
    wanted = [(m, o, s) for s in sorted(sites) for m in MEASURES for o in ORIGINS]
    pipe = store.r.pipeline(transaction=False)
    for m, o, s in wanted:
        pipe.hgetall(Keys.durations(m, o, s))
    out = []
    for (m, o, s), h in zip(wanted, pipe.execute()):
        if not h:
            continue
        running, buckets = 0, []
        for i, bound in enumerate((*BUCKETS, math.inf)):
            running += int(h.get(f"b:{i}", 0))
            buckets.append((bound, running))
        out.append(Histogram(m, o, s, buckets, float(h.get("sum", 0.0)), int(h.get("count", 0))))
    return out
