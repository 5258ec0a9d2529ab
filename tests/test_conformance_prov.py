"""Fleet's readers against every conformance entry of the check-sync, provisioning and sip (request validation) areas.

check-sync: fleet.drivers.control.sip_notify against a phone answering each
entry's SIP answer (its status line and headers). provisioning: every master
layout parses, takes fleet's file first with every other byte kept, and every
override layout is read for shadowed values. sip: the failover lint reads each
entry's validation parameters as the guides define them.
"""
from __future__ import annotations

import asyncio
import posixpath
from types import SimpleNamespace

import pytest

from fleet.sites import overrides
from fleet.phoneconf import polycom
from fleet.drivers.control import sip_notify
from fleet.drivers.errors import DeviceRefused
from fleet.phoneconf.lint import problems
from hil import sip_answers
from sipwire import message as sip
from sipwire.endpoint import SipEndpoint
from soundpoint import bootfiles, conformance

MAC = "0004f200106c"
PHONE_IP = "127.106.9.7"


def _ids(area: str) -> list[str]:
    return [e.id for e in conformance.select(area=area)]


@pytest.mark.parametrize("entry_id", [e for e in _ids("check-sync") if conformance.get(e).status_code])
def test_the_check_sync_driver_reads_every_answer_in_the_corpus(entry_id):
    code, _, _ = sip_answers.shape(entry_id)
    seen: list[sip.SipMessage] = []

    async def run():
        async def answer(msg, addr):
            seen.append(msg)
            if msg.get("authorization"):                     # the driver answered the challenge: accepted
                return sip_answers.answer("checksync-notify-accepted", msg, addr)
            return sip_answers.answer(entry_id, msg, addr)
        phone_ep = await SipEndpoint.bind(PHONE_IP, 5060, answer, name="phone")
        try:
            target = SimpleNamespace(mac=MAC, address=PHONE_IP, sip_port=5060)
            return await sip_notify.check_sync(target, timeout=2.0, user="1001", auth=("1001", "pw"))
        finally:
            phone_ep.close()

    if 200 <= code < 300:
        assert asyncio.run(run()) == code
    elif code in (401, 407):
        assert asyncio.run(run()) == 200 and len(seen) == 2 and seen[1].get("authorization")
    else:
        with pytest.raises(DeviceRefused, match=f"check-sync refused: {code}") as err:
            asyncio.run(run())
        assert ("requestValidation" in str(err.value)) == (code == 400)
    assert all(m.get("event") == "check-sync" for m in seen)


@pytest.mark.parametrize("entry_id", _ids("provisioning"))
def test_every_provisioning_layout_is_read_as_the_phone_reads_it(entry_id):
    e = conformance.get(entry_id)
    name = posixpath.basename(e.request["path"])
    data = e.body.encode()
    if b"<APPLICATION" in data:
        ours = polycom.fleet_file_name(MAC)
        assert name == bootfiles.DEFAULT_MASTER or name == bootfiles.master_name(MAC) \
            or bootfiles.named_master_problem(name) is None
        master = bootfiles.parse_master(name, data)
        edited = polycom.with_fleet_file(name, data, ours, MAC)
        after = bootfiles.parse_master(name, edited)
        assert [bootfiles.expand(f, MAC) for f in after.config_files][0] == ours
        assert {k: v for k, v in after.attributes.items() if k != "CONFIG_FILES"} == \
            {k: v for k, v in master.attributes.items() if k != "CONFIG_FILES"}
        shared = polycom.with_fleet_file(name, data, ours, MAC, polycom.SHARED_ENTRY)
        assert [bootfiles.expand(f, MAC) for f in bootfiles.parse_master(name, shared).config_files][0] == ours
    elif name in bootfiles.override_names(MAC):
        params = bootfiles.parse_parameters(name, data)
        assert params
        found = overrides.OverrideFiles([(name, params)])
        pushed = {k: v + "-pushed" for k, v in params.items()}
        assert {s.param for s in found.shadows(pushed)} == set(params)
    else:
        assert name == f"{MAC}-app.log" and e.body == ""


BASE = {"reg.1.address": "1001", "reg.1.server.1.address": "voip.example", "reg.1.server.2.address": "10.0.0.1"}


@pytest.mark.parametrize("entry_id", [e for e in _ids("sip") if conformance.get(e).request.get("params")])
def test_the_failover_lint_reads_every_validation_setting_as_the_guides_define_it(entry_id):
    params = {k: str(v) for k, v in conformance.get(entry_id).request["params"].items()}
    for family in ("sip-2.x", "sip-3.x", "uc-4.0"):
        found = problems(BASE | params, family)
        invite_by_source = params.get("voIpProt.SIP.requestValidation.1.request") == "INVITE" and \
            params.get("voIpProt.SIP.requestValidation.1.method") in ("source", "both", "all")
        assert bool(found) == invite_by_source, (family, found)
        assert all("server 2" not in f for f in found)     # a configured server is never refused
