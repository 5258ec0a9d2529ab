"""Which observations the collector stores next: fresh ones never wait behind a whole poll's answer.

A gateway poll at a 5,000-phone site delivers 5,000 observations at once, and
storing them takes the store some 0.3-0.5 s; stored as one batch, every
observation that arrived meanwhile (a phone's REGISTER on the wire, its
event) waited for all of it. Here such a bulk delivery waits in a backlog and
is stored a slice at a time: each store call takes what arrived since the
last one, topped up to `slice_size` from the oldest of the backlog. A phone's
observations are still stored in the order they arrived: fresh observations
take every older one of the same phone out of the backlog with them (the
store folds one call's observations in time order).

The backlog is also paced: storing a slice is Python work (JSON, the fold,
the pipeline) that holds the collector's GIL, and while a 5,000-observation
backlog drained back to back, the wire, HEP and events sources got a third of
it and their detection p99 went from some 60 ms to 300-600 ms. A top-up from
the backlog therefore waits until the time spent topping up stays within
BACKLOG_SHARE of the time since the first one (`stored` tells the queue how
long each store call took). Fresh observations are never paced; a poll's
answer is stored over a few seconds instead of one, which its poll interval
(10 s or more) already dwarfs.
"""
from __future__ import annotations

import asyncio

from fleet.state.observe import Observation

FLUSH_SLICE = 100     # observations per store call at most, from the backlog (a call held the GIL some 25 ms at
                      # 250, which the other sources' detection p99 showed)
BULK_OVER = 250       # a delivery of more observations than this is a poll's answer, stored from the backlog; a wire
                      # or HEP batch of a registration storm is smaller, and is stored at once
BACKLOG_SHARE = 0.3   # of the collector's time, what storing a backlog may take while it drains


class FlushQueue:
    """The backlog of observations not yet stored, and the rule for the next batch (`take`)."""

    def __init__(self, slice_size: int = FLUSH_SLICE, share: float = BACKLOG_SHARE, bulk_over: int = BULK_OVER) -> None:
        self.slice_size = max(1, slice_size)
        self.bulk_over = max(self.slice_size, bulk_over)
        self.share = min(1.0, max(0.01, share))
        self.backlog: list[Observation] = []
        self.topped_up = False        # the batch `take` returned last holds observations from the backlog
        self._next_top_up = 0.0       # monotonic time before which `take` adds nothing from the backlog

    def __len__(self) -> int:
        return len(self.backlog)

    def is_bulk(self, delivery: list[Observation]) -> bool:
        """A delivery to store a slice at a time (a poll's answer), behind what arrives meanwhile."""
        return len(delivery) > self.bulk_over

    def defer(self, delivery: list[Observation]) -> None:
        """A bulk delivery: to the end of the backlog (it arrived after everything there)."""
        self.backlog.extend(delivery)

    def due(self, now: float) -> bool:
        """Whether a store call now would take anything: a backlog waiting for its pace has nothing due."""
        return bool(self.backlog) and now >= self._next_top_up

    def take(self, arrived: list[Observation], now: float = 0.0) -> list[Observation]:
        """The next batch to store: `arrived` (every one: fresh observations are never held back), with every
        backlogged observation of their phones, topped up from the oldest of the backlog to `slice_size` when
        the pace allows at `now` (monotonic seconds; see `stored`)."""
        batch: list[Observation] = []
        if arrived and self.backlog:
            macs = {o.mac for o in arrived}
            batch = [o for o in self.backlog if o.mac in macs]
            if batch:
                self.backlog = [o for o in self.backlog if o.mac not in macs]
        batch.extend(arrived)
        room = self.slice_size - len(batch)
        self.topped_up = room > 0 and bool(self.backlog) and now >= self._next_top_up
        if self.topped_up:
            batch = self.backlog[:room] + batch     # older first (the store sorts one call's by time anyway)
            del self.backlog[:room]
        return batch

    def stored(self, seconds: float, now: float) -> None:
        """The last batch took `seconds` to store, ending at `now`: a batch topped up from the backlog puts the
        next top-up off until that time is `share` of the time since it began."""
        if self.topped_up:
            self._next_top_up = now + seconds * (1.0 - self.share) / self.share

    def put_back(self, batch: list[Observation]) -> None:
        """A batch the store did not take (Redis away): first in line again, in its order."""
        self.backlog[:0] = batch


class Arrivals(list):
    """The observations that arrived since the flush loop last took them (a list: appended to on the collector's
    event loop only, by its listeners and by the sources' `call_soon_threadsafe`), waking the loop as they come.

    The loop used to look every FLUSH_S (20 ms) whether anything had come: an observation waited 10 ms on average
    for that look alone, half of its way to the store. Now the first arrival wakes it, and it gathers for a few
    milliseconds more (the collector's GATHER_S) so a burst is still stored in one call."""

    def __init__(self) -> None:
        super().__init__()
        self._came = asyncio.Event()

    # only append and extend wake the loop: add to it with nothing else (`+=`, insert, item assignment would not)

    def append(self, obs: Observation) -> None:  # type: ignore[override]
        super().append(obs)
        self._came.set()

    def extend(self, obs) -> None:  # type: ignore[override]
        super().extend(obs)
        if self:
            self._came.set()

    async def wait(self, timeout: float) -> bool:
        """Until something arrives (at once if something is here already), or `timeout` seconds; True when
        something arrived during the wait (the caller gathers what comes with it), False otherwise. A cancel always
        reaches the caller (asyncio.timeout: 3.11's wait_for could swallow one that met an arrival, and a collector
        stopping would then never stop)."""
        if self:
            return False
        self._came.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._came.wait()
        except TimeoutError:
            return False
        return True
