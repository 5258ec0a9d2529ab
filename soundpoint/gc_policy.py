"""A long-running process's garbage collector (the lab, a site's collector): young objects die young, and what
the process holds once built is never walked again.

A lab of 10,000 phones holds millions of objects. With the interpreter's defaults (a young collection every 700
allocations), the objects of every SIP transaction in flight (futures, timers, messages, living a round trip
or a retransmission timer) outlived two young collections and were promoted to the oldest generation, which
then filled fast enough for a full collection every few seconds, each walking the whole heap: bench/lab_scale.py
measured 82 full collections taking 81 s in a 10,000-phone lab's 300 s boot, pauses up to 2 s, and 4 of them
(1 s each) in a 20 s window of steady refreshes: the refreshes came late and the phones' transactions timed out.
A collector for a 5,000-phone site (its inventory, targets and phone states) paused 100-130 ms in each of its full
collections while the phones' changes waited (bench/evidence.py: detection p99 184 ms on one core, 127 ms with
this policy).
"""
from __future__ import annotations

import gc

YOUNG = 50_000     # allocations between young collections (default 700): a transaction's objects die before one


def young_die_young() -> None:
    """Before the process builds what it holds: young collections far apart, so short-lived objects are freed by reference
    counting before any collection sees them (a young collection's cost follows the young objects, not this)."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG, older, oldest)


def settled() -> None:
    """Once built (a lab: and again once every phone has booted): what exists now lives as long as the process, so
    full collections no longer walk it (gc.freeze). Garbage left in it is kept, once: a bounded cost."""
    gc.freeze()
