"""RolloutStore.batch against a real Redis: a driver pass's writes go in one round trip, in order, or not at all."""
from __future__ import annotations

import uuid

import pytest

from fleet.state.store import RolloutStore, Store


@pytest.fixture
def rs(redis_url):
    return RolloutStore(Store(redis_url))


def test_a_batch_writes_records_feed_and_events_in_the_order_made(rs):
    rid = f"batch-{uuid.uuid4().hex[:6]}"
    positions = rs.feed_positions(rid)
    with rs.batch() as batch:
        batch.set_phone(rid, "0004f2c00001", state="verified", settled_at=1.0)
        batch.set_phone(rid, "0004f2c00002", state="dispatched", dispatched_at=2.0)
        batch.set_phone(rid, "0004f2c00002", attempt=2)          # no state: no feed entry
        batch.log(rid, "verified", mac="0004f2c00001")
        assert rs.phone(rid, "0004f2c00001") == {}              # nothing sent before the block ends
    assert rs.phone(rid, "0004f2c00001") == {"state": "verified", "settled_at": "1.0"}
    assert rs.phone(rid, "0004f2c00002") == {"state": "dispatched", "dispatched_at": "2.0", "attempt": "2"}
    changed, _ = rs.feed_read(positions)
    assert changed == {"0004f2c00001", "0004f2c00002"}
    assert [e["kind"] for e in rs.events(rid)] == ["verified"]


def test_a_batch_whose_block_raises_sends_nothing(rs):
    rid = f"batch-{uuid.uuid4().hex[:6]}"
    with pytest.raises(RuntimeError):
        with rs.batch() as batch:
            batch.set_phone(rid, "0004f2c00003", state="verified")
            raise RuntimeError("the pass stopped half-way")
    assert rs.phone(rid, "0004f2c00003") == {} and rs.events(rid) == []
