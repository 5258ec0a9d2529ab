"""An experiment's kept capture has a byte cap (issue 17 review): a flood cannot fill Redis through it.

The count cap alone (CAPTURE_MAXLEN datagrams) let 200,000 datagrams of 64 KB (some 17 GB as stored) into one
experiment's stream, evicting real state. Real Redis; the cap is lowered for the test (the rule, not the size).
"""
from __future__ import annotations

import base64

from fleet.state import store as store_mod
from fleet.state.store import Store


def _row(n: int, size: int) -> dict:
    return {"t": float(n), "src": ["10.0.0.9", 5060], "dst": ["10.0.0.1", 5060], "source": "hep",
            "payload": base64.b64encode(bytes(size)).decode()}


def test_the_kept_capture_stops_at_its_byte_cap_and_counts_what_it_left_out(redis_url, monkeypatch):
    store = Store(redis_url)
    exp = store.new_experiment("capcap", "p.yml")
    monkeypatch.setattr(store_mod, "CAPTURE_MAX_BYTES", 100_000)
    for batch in range(10):                                    # 10 batches of 10 datagrams of 2 KB (~2.8 KB stored)
        store.keep_capture(exp, [_row(batch * 10 + i, 2048) for i in range(10)])
    kept = store.capture(exp)
    stored = sum(len(store_mod.json.dumps(r)) for r in kept)
    assert stored <= 100_000 and len(kept) >= 30, (stored, len(kept))
    assert [r["t"] for r in kept] == [float(i) for i in range(len(kept))]      # the first ones, in order
    assert store.capture_left_out(exp) == 100 - len(kept)
    # later datagrams, small or not, never take the kept capture over its cap
    store.keep_capture(exp, [_row(1000 + i, 10) for i in range(50)])
    assert sum(len(store_mod.json.dumps(r)) for r in store.capture(exp)) <= 100_000
    assert store.capture_left_out(exp) + len(store.capture(exp)) == 150
