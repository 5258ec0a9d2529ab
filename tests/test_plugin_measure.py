"""fleet.testing's measured recovery when a phone is back on server 1 before the router answered the restore.

A link-down restore answers once its routes are back; a phone may register with server 1 in between. The
change then lies before `ended`: it is found from the restore request on and counts as 0 s, not as no
recovery at all (the pytest plugin's example failed on a loaded machine that way). Unit test: the site's
inventory and evidence are stand-ins, the measuring is fleet.testing.site's own.
"""
from __future__ import annotations

from types import SimpleNamespace

from fleet.base.outage import Outage
from fleet.testing import site as site_mod
from fleet.testing.wan import OutageRun

MAC = "0004f2000001"


class Evidence:
    def __init__(self, observations: list[dict]) -> None:
        self.configured = {MAC: [1, 2]}
        self._obs = observations

    def observations(self, mac: str, since: float = 0.0) -> list[dict]:
        return [o for o in self._obs if o["t"] >= since]


def _site(observations: list[dict]) -> site_mod.FleetSite:
    fs = object.__new__(site_mod.FleetSite)
    fs.phones = [SimpleNamespace(mac=MAC, model="VVX 410", family=SimpleNamespace(name="uc-5.x"))]
    fs.name = "hq"
    fs.params = lambda ref: {}
    fs._evidence = Evidence(observations)
    return fs


def _run(t_restore: float, done: float) -> OutageRun:
    outage = Outage(id="outage-0001", mode="link-down", max_duration=300)
    return OutageRun("hq", outage, cut={"outcome": "cut", "t_cut_done": 100.0},
                     restore={"outcome": "restored", "t_restore": t_restore, "t_restore_done": done})


def obs(t: float, server: int, working: int) -> dict:
    return {"t": t, "server": server, "state": "registered", "working_server": working, "kind": "registration"}


def test_a_phone_back_before_the_restore_answer_recovers_in_zero_seconds():
    fs = _site([obs(90, 1, 1), obs(108, 2, 2), obs(130.4, 1, 1)])
    m = fs.measure(_run(t_restore=130.0, done=131.0), MAC)
    assert m["failover_s"] == 8.0 and m["recovery_s"] == 0.0, m


def test_a_phone_back_after_the_restore_answer_is_measured_from_it():
    fs = _site([obs(90, 1, 1), obs(108, 2, 2), obs(134.5, 1, 1)])
    m = fs.measure(_run(t_restore=130.0, done=131.0), MAC)
    assert m["recovery_s"] == 3.5, m


def test_a_server_1_registration_from_before_the_restore_request_is_not_a_recovery():
    fs = _site([obs(90, 1, 1), obs(108, 2, 2), obs(129.0, 1, 2)])
    m = fs.measure(_run(t_restore=130.0, done=131.0), MAC)
    assert m["recovery_s"] is None, m


def test_a_failover_between_the_cut_request_and_its_answer_is_0_s():
    fs = _site([obs(90, 1, 1), obs(99.95, 2, 2), obs(134.5, 1, 1)])
    run = _run(t_restore=130.0, done=131.0)
    run.cut["t_cut"] = 99.9
    m = fs.measure(run, MAC)
    assert m["failover_s"] == 0.0 and m["recovery_s"] == 3.5, m
