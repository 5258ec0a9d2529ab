"""The passive incident detector's decisions (fleet.evidence.incidents), fed observations and ticks directly: unit
tests with a recording sink (the storing layer is faked here; the lab test stores for real)."""
from __future__ import annotations

from fleet.evidence.incidents import IncidentDetector, threshold
from fleet.state.observe import Observation, PhoneState

MACS = ["0004f2000001", "0004f2000002", "0004f2000003", "0004f2000004"]


class Sink:
    def __init__(self) -> None:
        self.opened: list[dict] = []
        self.closed: list[dict] = []
        self.fields: dict[str, dict] = {}
        self.events: list[tuple[str, dict]] = []
        self.rows: list[dict] = []
        self.records: list = []

    def open(self, site, started, detected, baseline, threshold, window_s):
        self.opened.append({"site": site, "started": started, "detected": detected, "baseline": baseline,
                            "threshold": threshold})
        return f"i{len(self.opened)}"

    def set(self, iid, **fields):
        self.fields.setdefault(iid, {}).update(fields)

    def set_summary(self, site, iid, started, phones, failed_over):
        self.fields.setdefault(iid, {})["summary"] = (phones, failed_over)

    def close(self, iid, site, finished, because):
        self.closed.append({"id": iid, "finished": finished, "because": because})

    def log(self, iid, kind, **data):
        self.events.append((kind, data))

    def keep_observations(self, iid, rows):
        self.rows.extend(rows)

    def record(self, outage):
        self.records.append(outage)


def reg(mac, t, server, state="registered"):
    return Observation(mac=mac, t=t, source="wire", server=server, state=state)


def detector(sink, macs=MACS, window=10.0, settle=5.0):
    d = IncidentDetector("hq", macs, {m: [1, 2] for m in macs}, sink, window_s=window, settle_s=settle)
    d.observe([reg(m, 1.0, s) for m in macs for s in (1, 2)])
    return d


def nobody():
    return None


def test_threshold_is_max_of_two_and_half():
    assert [threshold(n) for n in (1, 2, 3, 4, 5, 10)] == [2, 2, 2, 2, 3, 5]


def test_a_site_wide_loss_opens_one_incident_from_the_earliest_loss_and_closes_when_all_are_back():
    sink = Sink()
    d = detector(sink)
    d.observe([reg(MACS[0], 100.0, 1, "unregistered"), reg(MACS[1], 103.0, 1, "unregistered")])
    d.tick(103.5, nobody)
    assert len(sink.opened) == 1 and sink.opened[0]["started"] == 100.0
    assert sink.opened[0]["baseline"] == sorted(MACS) and sink.opened[0]["threshold"] == 2
    d.observe([reg(MACS[2], 104.0, 1, "unregistered")])
    d.tick(105.0, nobody)
    assert len(sink.opened) == 1
    d.observe([reg(m, 120.0 + i, 1) for i, m in enumerate(MACS[:3])])
    d.tick(125.0, nobody)
    assert len(sink.closed) == 1 and "every phone" in sink.closed[0]["because"]
    phones = sink.fields["i1"]["phones"]
    assert phones[MACS[0]] == {"lost_at": 100.0, "on2_at": 100.0, "nowhere_s": 0.0, "back_at": 120.0}
    assert phones[MACS[2]]["back_at"] == 122.0 and phones[MACS[3]]["lost_at"] is None
    assert sink.fields["i1"]["restored"] == 120.0
    assert sink.fields["i1"]["summary"] == (4, 3)      # 3 of the 4 phones on server 1 reached server 2


def test_one_phones_loss_is_not_a_site_incident():
    sink = Sink()
    d = detector(sink)
    d.observe([reg(MACS[0], 100.0, 1, "unregistered"), reg(MACS[0], 100.0, 2, "unregistered")])
    for t in (101.0, 110.0, 130.0):
        d.tick(t, nobody)
    d.observe([reg(MACS[1], 140.0, 1, "unregistered")])    # a second loss, long after the first: two lone ones
    d.tick(141.0, nobody)
    assert sink.opened == []


def test_losses_while_the_site_is_leased_are_the_leaseholders_own():
    sink = Sink()
    d = detector(sink)
    d.observe([reg(m, 100.0, 1, "unregistered") for m in MACS])
    d.tick(101.0, lambda: "experiment:e1")
    d.tick(102.0, nobody)           # the experiment ended with its phones still on server 2
    assert sink.opened == []
    d.observe([reg(m, 110.0, 1) for m in MACS])
    d.tick(111.0, nobody)
    assert sink.opened == []


def test_a_lease_taken_during_an_incident_closes_it():
    sink = Sink()
    d = detector(sink)
    d.observe([reg(m, 100.0, 1, "unregistered") for m in MACS])
    d.tick(101.0, nobody)
    d.tick(102.0, lambda: "experiment:e1")
    assert len(sink.opened) == 1 and "lease" in sink.closed[0]["because"]


def test_a_phone_without_server_2_is_followed_as_registered_nowhere():
    sink = Sink()
    d = IncidentDetector("hq", MACS, {m: [1, 2] for m in MACS[:3]} | {MACS[3]: [1]}, sink, window_s=10, settle_s=5)
    d.observe([reg(m, 1.0, s) for m in MACS[:3] for s in (1, 2)] + [reg(MACS[3], 1.0, 1)])
    d.observe([reg(m, 100.0, 1, "unregistered") for m in MACS])
    d.tick(101.0, nobody)
    d.observe([reg(m, 120.0, 1) for m in MACS])
    d.tick(121.0, nobody)
    phones = sink.fields["i1"]["phones"]
    assert phones[MACS[3]]["on2_at"] is None and phones[MACS[3]]["nowhere_s"] == 20.0
    assert phones[MACS[0]]["on2_at"] == 100.0
    (outage,) = sink.records
    outcomes = {p.mac: p for p in outage.phones}
    assert outage.origin == "incident" and outage.t == 100.0
    assert outcomes[MACS[3]].passed is False and outcomes[MACS[3]].why == ["never reached server 2 (no server 2 configured)"]
    assert (outcomes[MACS[0]].passed, outcomes[MACS[0]].failover_s, outcomes[MACS[0]].recovery_s) == (True, 0.0, 0.0)


def test_seeded_states_count_as_the_baseline():
    sink = Sink()
    d = IncidentDetector("hq", MACS, {m: [1, 2] for m in MACS}, sink, window_s=10, settle_s=5)
    states = {}
    for m in MACS:
        s = PhoneState(mac=m)
        s.line(1).working_server = 1
        states[m] = s
    d.seed(states)
    d.observe([reg(m, 100.0, 1, "unregistered") for m in MACS[:2]])
    d.tick(101.0, nobody)
    assert sink.opened and sink.opened[0]["baseline"] == sorted(MACS)


def test_a_failure_towards_server_1_of_phones_not_seen_before_counts_as_its_loss():
    """Phones registered before the collector started: their first evidence is the failed refresh."""
    sink = Sink()
    d = IncidentDetector("hq", MACS[:2], {m: [1] for m in MACS[:2]}, sink, window_s=10, settle_s=5)
    d.observe([reg(m, 100.0 + i, 1, "unregistered") for i, m in enumerate(MACS[:2])])
    d.tick(102.0, nobody)
    assert sink.opened and sink.opened[0]["started"] == 100.0 and sink.opened[0]["baseline"] == MACS[:2]


def test_a_phone_still_saying_registered_before_it_noticed_the_cut_is_not_the_restore():
    sink = Sink()
    d = detector(sink)
    d.observe([reg(m, 100.0, 1, "unregistered") for m in MACS[:3]])
    d.tick(101.0, nobody)
    d.observe([reg(MACS[3], 102.0, 1)])       # its refresh is not due yet: a poll still says registered
    d.observe([reg(MACS[3], 104.0, 1, "unregistered")])
    d.tick(105.0, nobody)
    assert "restored" not in sink.fields.get("i1", {})
    d.observe([reg(m, 120.0 + i, 1) for i, m in enumerate(MACS)])
    d.tick(125.0, nobody)
    assert sink.fields["i1"]["restored"] == 120.0
