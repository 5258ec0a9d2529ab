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
"""
from __future__ import annotations

from fleet.state.observe import Observation

FLUSH_SLICE = 250     # observations per store call at most (some 25 ms of the store's time at 5,000 phones)


class FlushQueue:
    """The backlog of observations not yet stored, and the rule for the next batch (`take`)."""

    def __init__(self, slice_size: int = FLUSH_SLICE) -> None:
        self.slice_size = max(1, slice_size)
        self.backlog: list[Observation] = []

    def __len__(self) -> int:
        return len(self.backlog)

    def is_bulk(self, delivery: list[Observation]) -> bool:
        """A delivery to store a slice at a time (a poll's answer), behind what arrives meanwhile."""
        return len(delivery) > self.slice_size

    def defer(self, delivery: list[Observation]) -> None:
        """A bulk delivery: to the end of the backlog (it arrived after everything there)."""
        self.backlog.extend(delivery)

    def take(self, arrived: list[Observation]) -> list[Observation]:
        """The next batch to store: `arrived` (every one: fresh observations are never held back), with every
        backlogged observation of their phones, topped up from the oldest of the backlog to `slice_size`."""
        batch: list[Observation] = []
        if arrived and self.backlog:
            macs = {o.mac for o in arrived}
            batch = [o for o in self.backlog if o.mac in macs]
            if batch:
                self.backlog = [o for o in self.backlog if o.mac not in macs]
        batch.extend(arrived)
        room = self.slice_size - len(batch)
        if room > 0 and self.backlog:
            batch = self.backlog[:room] + batch     # older first (the store sorts one call's by time anyway)
            del self.backlog[:room]
        return batch

    def put_back(self, batch: list[Observation]) -> None:
        """A batch the store did not take (Redis away): first in line again, in its order."""
        self.backlog[:0] = batch
