"""Unit: rollouts stack (a later playbook keeps what an earlier one set), `--limit`, the dry run's diff against what
the phones apply now, and the refusals of `fleet rollout revert` (real Redis, no lab)."""
from __future__ import annotations

import json
import time

import pytest

from fleet.phoneconf import secrets as secret_params
from fleet.rollout import applied
from fleet.rollout.applied import Applied
from fleet.rollout.plan import PlanError, limit_macs, plan, rediff
from fleet.rollout.playbook import RolloutPlaybook
from fleet.rollout.revert import RevertRefused, plan_revert, revert_playbook
from fleet.state.store import RolloutStore, Store
from soundpoint.yamlfile import FileError
from test_rollout_plan import inventory, site

EXPIRES = "voIpProt.server.1.expires"


def pb(params: dict, **extra) -> RolloutPlaybook:
    return RolloutPlaybook.model_validate({"kind": "rollout", "name": "t", "params": params, **extra})


def ran(p, when: float = 1_700_000_000.0) -> dict[str, Applied]:
    """What each phone of plan `p` runs once it is verified, as fleet.rollout.applied reads it back."""
    return {ph.mac: Applied(ph.pushed_params(), {k: (v[0], when) for k, v in ph.set_by.items()}, p.rollout,
                            tuple(ph.verbatim), ph.config_hash) for ph in p.phones}


# ---------------------------------------------------------------- stacking
def test_a_second_playbook_keeps_the_value_the_first_set():
    inv = inventory(site("hq", 2))
    first = plan(inv, pb({EXPIRES: 1200}), "r1")
    second = plan(inv, pb({"reg.1.label": "x"}), "r2", applied=ran(first))
    for ph in second.phones:
        assert ph.params[EXPIRES] == "1200" and ph.diff == {"reg.1.label": [None, "x"]} and ph.undoes == []
        assert ph.set_by[EXPIRES][0] == "r1" and ph.set_by["reg.1.label"][0] == "r2"
        assert ph.previous["params"][EXPIRES] == "1200" and ph.previous["rollout"] == "r1"


def test_setting_or_resetting_an_earlier_value_is_said_with_who_set_it_and_when():
    inv = inventory(site("hq", 1))
    first = ran(plan(inv, pb({EXPIRES: 1200}), "r1"), when=1_700_000_000.0)
    sets = plan(inv, pb({EXPIRES: 300}), "r2", applied=first).phones[0]
    assert sets.undoes == [f"{EXPIRES}: 1200 (set by rollout r1 on 2023-11-14 22:13 UTC) -> 300 (this playbook sets it)"]
    reset = plan(inv, pb({"reg.1.label": "x"}, reset=[EXPIRES]), "r3", applied=first).phones[0]
    assert reset.params[EXPIRES] == "600" and reset.diff[EXPIRES] == ["1200", "600"]
    assert reset.undoes == [f"{EXPIRES}: 1200 (set by rollout r1 on 2023-11-14 22:13 UTC) -> 600 "
                            "(this playbook resets it to the inventory's value)"]


def test_a_kept_value_the_inventory_now_sets_otherwise_is_said():
    first = ran(plan(inventory(site("hq", 1)), pb({EXPIRES: 1200}), "r1"), when=1_700_000_000.0)
    moved = inventory(site("hq", 1, params={EXPIRES: "900"}))
    ph = plan(moved, pb({"reg.1.label": "x"}), "r2", applied=first).phones[0]
    assert ph.params[EXPIRES] == "1200" and ph.undoes == []
    assert ph.kept == [f"{EXPIRES}: 1200 (set by rollout r1 on 2023-11-14 22:13 UTC) stays; the inventory says 900 "
                       f"(`reset: [{EXPIRES}]` takes it)"]


def test_a_reset_parameter_the_inventory_does_not_set_is_no_longer_written():
    inv = inventory(site("hq", 1))
    first = ran(plan(inv, pb({"reg.1.label": "x"}), "r1"))
    again = plan(inv, pb({EXPIRES: 900}, reset=["reg.1.label"]), "r2", applied=first).phones[0]
    assert "reg.1.label" not in again.params and again.diff["reg.1.label"] == ["x", None]
    assert "fleet no longer writes it" in again.undoes[0]


def test_a_kept_secret_reference_stays_a_reference_and_is_masked():
    inv = inventory(site("hq", 1))
    first = ran(plan(inv, pb({"reg.1.auth.password": "secret:sip_1"}), "r1"))
    second = plan(inv, pb({"reg.1.label": "x"}), "r2", applied=first).phones[0]
    assert second.params["reg.1.auth.password"] == secret_params.MASK
    assert second.secret_refs == {"reg.1.auth.password": "secret:sip_1"}
    changed = plan(inv, pb({"reg.1.auth.password": "secret:sip_2"}), "r3", applied=first).phones[0]
    assert changed.undoes[0].startswith("reg.1.auth.password: *** (set by rollout r1") and "sip_" not in changed.undoes[0]


@pytest.mark.parametrize("doc,message", [
    ({"reset": [EXPIRES]}, "also in params"),
    ({"reset": ["reg.1.label", "reg.1.label"]}, "listed twice"),
    ({"reset": ["not a name"]}, "not a parameter name"),
])
def test_reset_is_checked(tmp_path, doc, message):
    import yaml

    from fleet.rollout import playbook

    path = tmp_path / "pb.yml"
    path.write_text(yaml.safe_dump({"kind": "rollout", "name": "t", "params": {EXPIRES: 900}, **doc}))
    with pytest.raises(FileError, match=rf"pb.yml:\d+: reset\[\d\]: .*{message}"):
        playbook.load(path)


# ---------------------------------------------------------------- --limit
def test_limit_by_mac_site_and_model_is_a_union():
    inv = inventory(site("east", 2), site("west", 2))
    east = [p.mac for p in inv.site("east").phones]
    west = [p.mac for p in inv.site("west").phones]
    colons = ":".join(west[0][i:i + 2] for i in range(0, 12, 2)).upper()
    assert limit_macs(inv, [colons]) == {west[0]}
    assert limit_macs(inv, ["east"]) == set(east)
    assert limit_macs(inv, [f"east,{west[1]}"]) == set(east) | {west[1]}
    assert limit_macs(inv, ["soundpoint ip 650"]) == set(east) | set(west)
    limited = plan(inv, pb({EXPIRES: 900}), "r", limit=limit_macs(inv, ["west"]))
    assert [ph.mac for ph in limited.phones] == sorted(west) and set(limited.max_unavailable) == {"west"}


def test_a_limit_that_names_nothing_says_so_with_a_suggestion():
    inv = inventory(site("east", 2), site("west", 2))
    with pytest.raises(PlanError, match=r"--limit 'wset': no phone, site or model .* \(did you mean west\?\)"):
        limit_macs(inv, ["east", "wset"])
    west_only = pb({EXPIRES: 900}, targets={"sites": ["west"]})
    with pytest.raises(PlanError, match="--limit leaves none of the playbook's targets"):
        plan(inv, west_only, "r", limit=limit_macs(inv, ["east"]))


# ---------------------------------------------------------------- the dry run's diff against the boot server
def test_rediff_compares_against_the_boot_server_where_nothing_was_pushed():
    inv = inventory(site("hq", 1))
    p = plan(inv, pb({EXPIRES: 900, "reg.1.auth.password": "secret:sip_1"}), "r")
    mac = p.phones[0].mac
    site_now = {EXPIRES: "900", "reg.1.address": "1000", "voIpProt.server.1.address": "old.example"}
    rediff(p, {mac: site_now})
    diff = p.phones[0].diff
    assert EXPIRES not in diff, "the site's files set it already: the push changes nothing there"
    assert diff["voIpProt.server.1.address"] == ["old.example", "voip.example"]
    assert diff["voIpProt.server.2.address"] == [None, "10.0.0.1"]
    assert diff["reg.1.auth.password"] == [None, "***"] and p.phones[0].diff_against == "boot server"


# ---------------------------------------------------------------- what phones run, read back from Redis
def _record(rs: RolloutStore, rid: str, p, state: str = "verified", status: str = "done", **meta) -> None:
    rs.create(rid, "t", p.to_dict(), {"playbook_path": "/x.yml", "inventory_path": "/i.yml", **meta})
    rs.set(rid, status=status)
    for ph in p.phones:
        rs.set_phone(rid, ph.mac, state=state, **{f"backed_up:{ph.mac}-fleet.cfg": "absent"})
        if state == "verified":
            rs.set_pushed(ph.mac, ph.pushed_params(), ph.config_hash)


def _ids(tag: str) -> tuple[str, str]:
    n = time.time_ns()
    return f"stack-{tag}-a-{n}", f"stack-{tag}-b-{n}"


def _fresh_inventory(tag: str):
    inv = inventory(site(f"{tag}{time.time_ns() % 10**6}", 2))    # the first letter makes the MACs: one per test
    return inv, [p.mac for p in inv.sites[0].phones]


def test_applied_finds_the_rollout_each_phone_runs_and_who_set_each_value(redis_url):
    rs = RolloutStore(Store(redis_url))
    inv, macs = _fresh_inventory("a")
    a, b = _ids("applied")
    first = plan(inv, pb({EXPIRES: 1200}), a)
    _record(rs, a, first)
    second = plan(inv, pb({"reg.1.label": "x"}), b, applied=applied.read(rs, macs))
    _record(rs, b, second)
    now = applied.read(rs, macs)
    assert {m: x.rollout for m, x in now.items()} == {m: b for m in macs}
    assert now[macs[0]].set_by[EXPIRES][0] == a and now[macs[0]].set_by["reg.1.label"][0] == b
    assert now[macs[0]].params[EXPIRES] == "1200"


def test_revert_is_refused_without_kept_backups_unfinished_or_changed_later(redis_url):
    rs = RolloutStore(Store(redis_url))
    inv, macs = _fresh_inventory("r")
    a, b = _ids("revert")
    first = plan(inv, pb({EXPIRES: 1200}), a)
    _record(rs, a, first, keep_backups="0")
    with pytest.raises(RevertRefused, match=f"rollout {a} did not keep its backups.*keep_backups: true"):
        plan_revert(rs, a, "v")
    rs.set(a, keep_backups="1", status="halted")
    with pytest.raises(RevertRefused, match=f"rollout {a} is halted: only a finished rollout"):
        plan_revert(rs, a, "v")
    rs.set(a, status="done")
    reverting, notes = plan_revert(rs, a, "v")
    assert [ph.restore_from for ph in reverting.phones] == [a, a] and notes == []
    assert all(ph.params == {} and ph.diff[EXPIRES] == ["1200", None] for ph in reverting.phones)
    second = plan(inv, pb({"reg.1.label": "x"}), b, applied=applied.read(rs, macs))
    _record(rs, b, second, keep_backups="1")
    with pytest.raises(RevertRefused, match=f"a later rollout changed phones of rollout {a} .*now runs rollout {b}"):
        plan_revert(rs, a, "v")
    forced, notes = plan_revert(rs, a, "v", force=True)
    assert len(forced.phones) == 2 and "--force" in notes[0]
    back, _ = plan_revert(rs, b, "v")     # reverting the later one: back to what the first pushed, with its origins
    assert back.phones[0].params[EXPIRES] == "1200" and back.phones[0].set_by[EXPIRES][0] == a
    assert back.phones[0].config_hash == first.phones[0].config_hash
    assert revert_playbook(pb({"reg.1.label": "x"}, verify={"registered_to": [1, 2]}), back.to_dict()).verify.registered_to == [1, 2]
    assert back.phones[0].previous["config_hash"] == second.phones[0].config_hash, "a revert can be reverted"
    with pytest.raises(RevertRefused, match="no rollout nope"):
        plan_revert(rs, "nope", "v")
    rs.set(b, **{"backups_removed:hq": "1"})
    with pytest.raises(RevertRefused, match=r"removed from site\(s\) hq"):
        plan_revert(rs, b, "v")


def test_a_dry_run_shows_no_secret_reference_of_what_a_phone_ran_before():
    inv = inventory(site("hq", 1))
    first = ran(plan(inv, pb({"reg.1.auth.password": "secret:sip_1"}), "r1"))
    second = plan(inv, pb({"reg.1.label": "x"}), "r2", applied=first)
    assert "secret:" in json.dumps(second.to_dict()), "the stored plan keeps references for a revert"
    assert "secret:" not in json.dumps(second.to_dict(refs=False))
