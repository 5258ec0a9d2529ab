"""Issue 22: a collector stores a poll's whole answer (5,000 observations at a 5,000-phone site) a slice at a time,
so what a phone's REGISTER or event says meanwhile is stored at its next flush, not after all of it; and a
phone's observations are still stored in the order they arrived (fleet.evidence.flush_queue)."""
from __future__ import annotations

from fleet.evidence.flush_queue import FlushQueue
from fleet.state.observe import Observation


def obs(mac: str, t: float, source: str = "gateway") -> Observation:
    return Observation(mac=mac, t=t, source=source, server=2, state="registered", address="127.0.0.1:5060")


def drain(q: FlushQueue, arrivals: list[list[Observation]]) -> list[list[Observation]]:
    """Flushes, one per arrival list, then until the backlog is empty."""
    out = [q.take(a) for a in arrivals]
    while len(q):
        out.append(q.take([]))
    return out


def test_a_bulk_delivery_is_stored_a_slice_at_a_time_and_fresh_ones_go_first():
    q = FlushQueue(slice_size=100)
    poll = [obs(f"m{i:04d}", 1.0) for i in range(1000)]
    assert q.is_bulk(poll) and not q.is_bulk(poll[:100])
    q.defer(poll)
    fresh = [obs("x0001", 2.0, "wire"), obs("x0002", 2.0, "hep")]
    first = q.take(fresh)
    assert len(first) == 100 and set(fresh) <= set(first)          # stored at the very next flush
    batches = drain(q, [])
    assert all(len(b) <= 100 for b in batches)
    stored = first + [o for b in batches for o in b]
    assert sorted(map(id, stored)) == sorted(map(id, poll + fresh))  # every one, once


def test_a_phones_fresh_observation_takes_its_backlogged_ones_along_in_order():
    q = FlushQueue(slice_size=10)
    q.defer([obs(f"m{i:02d}", 1.0) for i in range(50)])
    late = obs("m42", 2.0, "wire")
    batch = q.take([late])
    mine = [o for o in batch if o.mac == "m42"]
    assert mine[-1] is late and len(mine) == 2                      # the poll's (older) one with it, before it
    assert all(o.mac != "m42" for b in drain(q, []) for o in b)       # and never again after it


def test_small_arrivals_are_taken_whole_and_a_failed_batch_comes_back_first():
    q = FlushQueue(slice_size=10)
    arrived = [obs(f"m{i}", 1.0, "event") for i in range(30)]
    batch = q.take(arrived)
    assert batch == arrived                     # fresh ones are never held back, even above a slice
    q.defer([obs(f"p{i}", 1.0) for i in range(20)])
    q.put_back(batch)
    again = q.take([])
    assert again == batch[:10]


def test_an_arrival_wakes_the_flush_loop_at_once_and_nothing_lets_it_idle_out():
    """The flush loop waits on Arrivals: an observation appended (or extended) ends the wait then, not when the
    wait's timeout runs out; with nothing arriving the wait ends at its timeout (the backlog's pace is looked at)."""
    import asyncio

    from fleet.evidence.flush_queue import Arrivals

    async def run() -> list[str]:
        pending = Arrivals()
        loop = asyncio.get_running_loop()
        seen = []
        for add in (lambda: pending.append(obs("a", 1.0)), lambda: pending.extend([obs("b", 1.0)])):
            waiter = asyncio.ensure_future(pending.wait(3600))      # an hour: only the arrival can end it
            await asyncio.sleep(0)
            assert not waiter.done()
            loop.call_soon(add)
            await asyncio.wait_for(waiter, 10)
            seen.append(pending[-1].mac)
            pending[:] = []
        pending.extend([])          # nothing came: the next wait still waits
        began = loop.time()
        assert await asyncio.wait_for(pending.wait(0.05), 10) is False
        assert loop.time() - began >= 0.04, "an empty extend woke the loop"
        pending.append(obs("c", 1.0))
        # something is here already: no wait at all, and nothing to gather for
        assert await asyncio.wait_for(pending.wait(3600), 10) is False
        return seen

    assert asyncio.run(run()) == ["a", "b"]


def test_a_collector_stopping_as_an_observation_arrives_still_stops():
    """The flush loop is cancelled when its collector stops, while the listeners may still deliver: an arrival in
    the same pass as the cancel must not swallow it (asyncio.wait_for on Python 3.11 returned normally then, and the
    collector's thread never ended)."""
    import asyncio

    from fleet.evidence.flush_queue import Arrivals

    async def run() -> list[bool]:
        outcomes = []
        for gap in range(3):           # the arrival 0, 1 or 2 loop passes before the cancel
            pending = Arrivals()
            waiter = asyncio.ensure_future(pending.wait(3600))
            await asyncio.sleep(0)
            pending.append(obs("a", 1.0))
            for _ in range(gap):
                await asyncio.sleep(0)
            if not waiter.cancel():
                continue               # it had returned already: nothing to cancel
            await asyncio.wait({waiter}, timeout=10)
            outcomes.append(waiter.cancelled())
        return outcomes

    outcomes = asyncio.run(run())
    assert outcomes and all(outcomes), outcomes
