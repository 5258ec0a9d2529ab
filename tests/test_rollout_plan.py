"""Unit tests for rollout planning (fleet.rollout.plan): waves, per-site limits, budgets and the R6 refresh load."""
from __future__ import annotations

import pytest

from fleet.config.inventory import Inventory
from fleet.phoneconf.servers import registrations
from fleet.rollout.plan import (PlanError, failure_budget, plan, refresh_load, register_sends, rfc3261_sends,
                                targets)
from fleet.rollout.playbook import RolloutPlaybook

PRIMARY, BACKUP = "voip.example", "10.0.0.1"


def site(name: str, n: int, params: dict | None = None, phone_params: dict | None = None) -> dict:
    return {"name": name, "gateway": "10.0.0.1", "boot_server": {"url": "file:///srv/tftp/"},
            "params": params or {},
            "phones": [{"mac": f"0004f2{name[:1].encode().hex()}{i:04x}", "model": "SoundPoint IP 650",
                        "address": f"10.0.{len(name)}.{i + 10}", "credentials": "admin",
                        "params": {"reg.1.address": f"{i + 1000}"} | (phone_params or {})} for i in range(n)]}


# the site's servers for every line (a line's own reg.x.server.y.* would take their place)
SERVERS = {"voIpProt.server.1.address": PRIMARY, "voIpProt.server.1.expires": "600",
           "voIpProt.server.1.expires.overlap": "60", "voIpProt.server.2.address": BACKUP,
           "voIpProt.server.2.expires": "600", "voIpProt.server.2.expires.overlap": "60"}


def inventory(*sites: dict, limits: dict | None = None) -> Inventory:
    return Inventory.model_validate({"name": "t", "firmware_family": "uc-4.0", "params": SERVERS,
                                     "registrar_limits": limits or {}, "sites": list(sites)})


def playbook(**strategy) -> RolloutPlaybook:
    return RolloutPlaybook.model_validate({"kind": "rollout", "name": "t", "params": {"reg.1.label": "{phone.mac}"},
                                           "strategy": strategy})


# ---------------------------------------------------------------- waves
def test_canaries_first_then_waves_of_the_rest_in_site_and_mac_order():
    inv = inventory(site("b", 3), site("a", 4))
    p = plan(inv, playbook(canary=2, wave_size=2), "r")
    macs = [ph.mac for ph in p.phones]
    assert [ph.site for ph in p.phones] == ["a"] * 4 + ["b"] * 3
    assert p.waves == [macs[:2], macs[2:4], macs[4:6], macs[6:]]


def test_wave_size_as_a_percent_of_the_phones_after_the_canaries():
    p = plan(inventory(site("a", 11)), playbook(canary=1, wave_size="30%"), "r")
    assert [len(w) for w in p.waves] == [1, 3, 3, 3, 1]


def test_no_canary_and_a_wave_larger_than_the_fleet():
    p = plan(inventory(site("a", 3)), playbook(canary=0, wave_size=10), "r")
    assert [len(w) for w in p.waves] == [3]


def test_more_canaries_than_phones_is_one_wave():
    p = plan(inventory(site("a", 2)), playbook(canary=5), "r")
    assert [len(w) for w in p.waves] == [2]


def test_targets_that_select_nothing_are_an_error():
    pb = RolloutPlaybook.model_validate({"kind": "rollout", "name": "t", "params": {"reg.1.label": "x"},
                                         "targets": {"models": ["VVX 411"]}})
    with pytest.raises(PlanError, match="select no phone"):
        plan(inventory(site("a", 2)), pb, "r")


def test_targets_by_site_and_mac():
    inv = inventory(site("a", 2), site("b", 2))
    mac = inv.sites[1].phones[1].mac
    pb = RolloutPlaybook.model_validate({"kind": "rollout", "name": "t", "params": {"reg.1.label": "x"},
                                         "targets": {"sites": ["b"], "macs": [mac.upper()]}})
    assert [(s.name, p.mac) for s, p in targets(inv, pb)] == [("b", mac)]


# ---------------------------------------------------------------- per-site limits and budgets
def test_max_unavailable_is_per_site_and_at_least_one():
    p = plan(inventory(site("a", 10), site("b", 3)), playbook(max_unavailable="20%"), "r")
    assert p.max_unavailable == {"a": 2, "b": 1}


def test_failure_budget_total_and_per_site():
    pb = RolloutPlaybook.model_validate({"kind": "rollout", "name": "t", "params": {"reg.1.label": "x"},
                                         "strategy": {"failure_budget": {"total": "10%", "per_site": 1}}})
    p = plan(inventory(site("a", 25), site("b", 5)), pb, "r")
    assert (p.budget_total, p.budget_per_site) == (3, {"a": 1, "b": 1})
    assert plan(inventory(site("a", 2)), playbook(), "r").budget_per_site is None


@pytest.mark.parametrize("value,of,expected", [("0", 50, 0), ("0%", 50, 0), (0, 50, 0), ("1%", 50, 1), ("10%", 50, 5),
                                               (3, 50, 3), ("50%", 0, 0)])
def test_failure_budget_amounts(value, of, expected):
    assert failure_budget(value, of) == expected


def test_a_zero_percent_budget_per_site_tolerates_no_failure():
    pb = RolloutPlaybook.model_validate({"kind": "rollout", "name": "t", "params": {"reg.1.label": "x"},
                                         "strategy": {"failure_budget": {"total": "0%", "per_site": "0%"}}})
    p = plan(inventory(site("a", 4)), pb, "r")
    assert (p.budget_total, p.budget_per_site) == (0, {"a": 0})


# ---------------------------------------------------------------- per-phone parameters
def test_interpolated_parameters_diff_and_hash():
    inv = inventory(site("a", 2))
    p = plan(inv, playbook(), "r")
    first = p.phones[0]
    assert first.params["reg.1.label"] == first.mac and first.diff == {"reg.1.label": [None, first.mac]}
    assert first.config_hash != p.phones[1].config_hash
    again = plan(inv, playbook(), "r2", last_pushed={first.mac: first.pushed_params()})
    assert again.phones[0].diff == {} and again.phones[0].config_hash == first.config_hash


def test_a_reference_to_a_value_the_inventory_lacks_names_the_parameter():
    pb = RolloutPlaybook.model_validate({"kind": "rollout", "name": "t", "params": {"reg.1.label": "{provider.name}"}})
    with pytest.raises(PlanError, match=r"parameter reg\.1\.label: \{provider\.name\} does not name an inventory value"):
        plan(inventory(site("a", 1)), pb, "r")


# ---------------------------------------------------------------- R6: retransmissions
def test_rfc3261_schedule_sends_a_non_invite_request_eleven_times():
    # 0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5 s; the next (35.5 s) is past Timer F (32 s)
    assert rfc3261_sends() == 11
    assert rfc3261_sends(t1=0.5, t2=4.0, timeout=3.5) == 3      # 0, 0.5, 1.5 (3.5 is not before Timer F)
    assert rfc3261_sends(t1=1.0, t2=1.0, timeout=5.0) == 5      # a fixed interval: 0, 1, 2, 3, 4


def test_register_sends_follow_retry_timeout():
    assert register_sends(0, 3) == 11                # RFC 3261 timers; retryMaxCount does not shorten them
    assert register_sends(0, 20) == 11
    assert register_sends(2000, 3) == 4              # one send and retryMaxCount retries, retryTimeOut apart


def one_phone(**params) -> list[tuple[str, dict]]:
    return [("a", {"reg.1.address": "1001", **SERVERS, **params})]


def test_primary_down_load_with_rfc_timers_counts_eleven_sends_per_attempt():
    load = refresh_load(one_phone())
    # retry interval 60 s (registerRetry.baseTimeOut default) + 32 s for the attempt to fail
    assert load[PRIMARY]["primary_down"] == round(11 / (60 + 32), 3)
    assert load[PRIMARY]["normal"] == round(2 / 540, 3)
    # server 2 keeps its normal refreshes while server 1 is down
    assert load[BACKUP]["primary_down"] == load[BACKUP]["normal"] == round(2 / 540, 3)


def test_primary_down_load_with_a_configured_retry_timeout():
    load = refresh_load(one_phone(**{"voIpProt.server.1.retryTimeOut": "2000", "voIpProt.server.1.retryMaxCount": "4"}))
    # five sends, 2 s apart: the attempt fails after 10 s, and the next comes a retry interval later
    assert load[PRIMARY]["primary_down"] == round(5 / (60 + 10), 3)


def test_retry_max_count_0_means_3():
    load = refresh_load(one_phone(**{"voIpProt.server.1.retryTimeOut": "1000", "voIpProt.server.1.retryMaxCount": "0"}))
    assert load[PRIMARY]["primary_down"] == round(4 / (60 + 4), 3)


def test_retry_timeout_from_the_server_defaults_applies_to_every_line():
    params = {"voIpProt.server.1.address": PRIMARY, "voIpProt.server.1.retryTimeOut": "1000",
              "voIpProt.server.1.retryMaxCount": "2", "voIpProt.server.1.expires": "600",
              "reg.1.address": "1001", "reg.2.address": "1002"}
    load = refresh_load([("a", params)])
    assert load[PRIMARY]["primary_down"] == round(2 * 3 / (60 + 3), 3)


# ---------------------------------------------------------------- R6: every registration counts
def test_lines_are_the_registrations_with_an_address():
    assert registrations({"reg.1.address": "1001", "reg.3.address": "1003", "reg.2.address": "", "reg.4.label": "x"}) == [1, 3]
    assert registrations({"reg.12.address": "1012", "reg.2.address": "1002"}) == [2, 12]
    assert registrations({"reg.1.server.1.address": PRIMARY}) == [1]   # no line names one: line 1, as a phone's first line


def test_every_line_of_a_phone_is_counted():
    three = [("a", {**SERVERS, "reg.1.address": "1001", "reg.2.address": "1002", "reg.3.address": "1003"})]
    one = refresh_load(one_phone())[PRIMARY]
    load = refresh_load(three)[PRIMARY]
    assert load["registrations"] == 3 and load["phones"] == 1
    assert load["normal"] == pytest.approx(3 * one["normal"], abs=0.002)
    assert load["primary_down"] == pytest.approx(3 * one["primary_down"], abs=0.002)


def test_a_line_with_its_own_servers_loads_those_servers():
    params = {**SERVERS, "reg.1.address": "1001", "reg.2.address": "1002", "reg.2.server.1.address": "other.example",
              "reg.2.server.2.address": BACKUP}
    load = refresh_load([("a", params)])
    assert load[PRIMARY]["registrations"] == 1 and load["other.example"]["registrations"] == 1
    assert load[BACKUP]["registrations"] == 2 and load[BACKUP]["phones"] == 1


def test_a_server_not_registered_to_carries_no_load():
    load = refresh_load(one_phone(**{"voIpProt.server.2.register": "0"}))
    assert BACKUP not in load


def test_the_plan_refuses_load_over_the_registrars_limit_with_the_primary_down():
    # 40 phones, RFC timers: 40 * 11 / 92 = 4.8 REGISTER/s at the primary while it is down
    inv = inventory(site("a", 40), limits={PRIMARY: 4.0, BACKUP: 100})
    p = plan(inv, playbook(), "r", limits=inv.registrar_limits)
    assert p.load[PRIMARY]["primary_down"] == pytest.approx(40 * 11 / 92, abs=0.01)
    assert p.overloaded == [f"{PRIMARY}: 4.8 REGISTER/s with the primary down (limit 4)"]
    assert plan(inv, playbook(), "r", limits={PRIMARY: 5.0}).overloaded == []


def test_a_second_line_can_push_a_site_over_its_limit():
    # 20 phones: 2.4 REGISTER/s at the primary while it is down with one line each, 4.8 with two
    limits = {PRIMARY: 4.0}
    assert plan(inventory(site("a", 20)), playbook(), "r", limits=limits).overloaded == []
    two_lines = inventory(site("a", 20, phone_params={"reg.2.address": "2000"}))
    assert plan(two_lines, playbook(), "r", limits=limits).overloaded == [
        f"{PRIMARY}: 4.8 REGISTER/s with the primary down (limit 4)"]


def test_a_push_that_moves_an_on_failure_fallback_the_playbook_verifies_warns_and_is_recorded():
    """Review of issue 16: server 2 moved on a UC Software phone with reRegisterOn=1 cannot be proven by registration
    while server 1 works; the dry run says so, and the plan carries the moved fallback to the verification."""
    held = {"reg.1.server.1.address": PRIMARY, "reg.1.server.2.address": BACKUP,
            "reg.1.server.2.failOver.reRegisterOn": "1"}
    inv = Inventory.model_validate({"name": "t", "firmware_family": "uc-5.x",
                                    "sites": [site("a", 1, params=held) | {"phones": [
                                        {"mac": "0004f2000001", "model": "VVX 410", "address": "10.0.1.10",
                                         "credentials": "admin", "params": {"reg.1.address": "1000"}}]}]})

    def pb(params: dict, registered_to: list[int]) -> RolloutPlaybook:
        return RolloutPlaybook.model_validate({"kind": "rollout", "name": "t", "params": params,
                                               "verify": {"registered_to": registered_to}})

    (ph,) = plan(inv, pb({"reg.1.server.2.address": "10.0.0.99"}, [1, 2]), "r").phones
    assert ph.on_failure_fallbacks == [2] and ph.moved_fallbacks == [2]
    assert any("server(s) [2] get a new address or port" in w and "fallback unverified" in w for w in ph.warnings)
    (ph,) = plan(inv, pb({"reg.1.server.2.address": "10.0.0.99"}, [1]), "r").phones
    assert ph.moved_fallbacks == [2] and not any("fallback unverified" in w for w in ph.warnings)
    (ph,) = plan(inv, pb({"reg.1.server.1.expires": "300"}, [1, 2]), "r").phones
    assert ph.moved_fallbacks == [] and not any("fallback unverified" in w for w in ph.warnings)
