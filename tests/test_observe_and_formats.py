import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.evidence.sources.formats import parse_line_event, parse_syslog
from fleet.drivers.control.rest import parse_uptime
from fleet.state.observe import Observation, PhoneState, apply
from hil import phone_reports


def obs(server, state, t, kind="registration"):
    return Observation(mac="0004f2000001", t=t, source="syslog", server=server, state=state, kind=kind)


def test_working_server_is_highest_priority_registered_server():
    st_ = PhoneState(mac="0004f2000001")
    assert apply(st_, obs(2, "registered", 1.0)) and st_.working_server == 2
    assert apply(st_, obs(1, "registered", 2.0)) and st_.working_server == 1
    assert apply(st_, obs(1, "unregistered", 3.0)) and st_.working_server == 2
    assert not apply(st_, obs(2, "registered", 4.0))


def test_late_old_message_does_not_override_newer_state():
    st_ = PhoneState(mac="0004f2000001")
    apply(st_, obs(1, "unregistered", 5.0))
    apply(st_, obs(1, "registered", 4.0))
    assert st_.servers[1]["state"] == "unregistered"


def test_a_receipt_stamped_report_of_the_same_registration_keeps_when_it_was_sent():
    """Wire saw the REGISTER sent (and answered); syslog reports the same registration a moment later. Latest wins,
    but the later report must not erase `sent`: without it the rollout's verification waits (policy.registered)."""
    state = PhoneState("0004f2000001")
    apply(state, Observation("0004f2000001", 10.0, "wire", server=1, state="registered", sent=9.98))
    apply(state, Observation("0004f2000001", 10.3, "syslog", server=1, state="registered"))
    entry = state.line(1).servers[1]
    assert (entry["source"], entry["t"], entry["sent"]) == ("syslog", 10.3, 9.98)
    apply(state, Observation("0004f2000001", 12.0, "syslog", server=1, state="registered"))   # a later one: its own
    assert "sent" not in state.line(1).servers[1]
    # reports 0.8 s apart do not carry a send time along from one to the next
    apply(state, Observation("0004f2000001", 20.0, "wire", server=1, state="registered", sent=19.98))
    for t in (20.8, 21.6, 22.4):
        apply(state, Observation("0004f2000001", t, "syslog", server=1, state="registered"))
    assert "sent" not in state.line(1).servers[1]
    # the capture of a newer REGISTER arriving after a report that took an older `sent`: its own counts
    apply(state, Observation("0004f2000001", 30.0, "wire", server=1, state="registered", sent=29.9))
    apply(state, Observation("0004f2000001", 30.5, "syslog", server=1, state="registered"))
    apply(state, Observation("0004f2000001", 30.45, "wire", server=1, state="registered", sent=30.4))
    assert (state.line(1).servers[1]["t"], state.line(1).servers[1]["sent"]) == (30.5, 30.4)
    apply(state, Observation("0004f2000001", 40.0, "wire", server=1, state="unregistered"))
    apply(state, Observation("0004f2000001", 40.2, "syslog", server=1, state="registered"))
    assert "sent" not in state.line(1).servers[1]


def test_line_unregistration_clears_every_server():
    st_ = PhoneState(mac="0004f2000001")
    apply(st_, obs(1, "registered", 1.0))
    apply(st_, Observation(mac="0004f2000001", t=2.0, source="event", server=None, state="unregistered"))
    assert st_.working_server is None


def test_syslog_lines_from_the_phone_parse_into_observations():
    line = phone_reports.syslog_registration("0004f2000001", "127.0.0.2", 1, 2, "172.23.0.1:5060", True, expires=60)
    o = parse_syslog(line, 10.0)
    assert (o.mac, o.reg, o.server, o.state, o.address) == ("0004f2000001", 1, 2, "registered", "172.23.0.1:5060")
    fail = parse_syslog(phone_reports.syslog_registration("0004f2000001", "h", 1, 1, "p:5060", False, reason="timeout"), 1.0)
    assert fail.state == "unregistered" and "timeout" in fail.detail
    call = parse_syslog(phone_reports.syslog_call("0004f2000001", "h", "2000", 2, "g:5060", 200), 1.0)
    assert call.kind == "call" and call.server == 2


def test_line_events_parse_and_garbage_is_ignored():
    o = parse_line_event(phone_reports.line_event("LineRegistrationEvent", "0004F2000001", "127.0.0.2", 1), 1.0)
    assert o.state == "registered" and o.mac == "0004f2000001" and o.server is None
    assert parse_line_event(b"<PolycomIPPhone><LineRegistrationEvent><MACAddress>zz</MACAddress></LineRegistrationEvent></PolycomIPPhone>", 1) is None
    assert parse_line_event(b'<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>', 1) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_collector_parsers_never_raise(data):
    parse_syslog(data, 0.0)
    parse_line_event(data, 0.0)


def test_line_info_names_the_working_server_and_implies_higher_ones_are_down():
    from fleet.state.observe import from_line_info

    configured = [{"index": 1, "address": "voip.example", "register": True}, {"index": 2, "address": "10.0.0.1", "register": True}]
    obs = from_line_info("0004f2000001", 5.0, {"LineNumber": "1", "RegistrationStatus": "registered", "ProxyAddress": "10.0.0.1"},
                         configured)
    st_ = PhoneState(mac="0004f2000001")
    for o in obs:
        apply(st_, o)
    assert st_.working_server == 2 and st_.servers[1]["state"] == "unregistered"
    assert all(o.source == "poll-rest" for o in obs)
    assert from_line_info("m", 1.0, {"LineNumber": "x"}, configured) == []
    unreg = from_line_info("m", 1.0, {"LineNumber": "1", "RegistrationStatus": "unregistered"}, configured)
    assert unreg[0].server is None and unreg[0].state == "unregistered"


@pytest.mark.parametrize("value,seconds", [
    ("20 Days 16:11:42", 20 * 86400 + 16 * 3600 + 11 * 60 + 42),
    ("1 Day 00:00:05", 86405.0),
    ("0:07:09", 429.0),
    ({"Days": 2, "Hours": 1, "Minutes": 0, "Seconds": 3}, 2 * 86400 + 3600 + 3),
    ("yesterday", None), ("", None), (None, None), (17, None), ({"Days": "many"}, None)])
def test_uptime_is_read_in_both_firmware_shapes_and_garbage_is_none(value, seconds):
    assert parse_uptime(value) == seconds


def test_a_line_unregistration_is_remembered_after_the_phone_registers_again():
    """The proof a check-sync phone went down: it survives the registrations that follow the reboot."""
    state = PhoneState(mac="0004f2000001")
    apply(state, Observation("0004f2000001", 10.0, "syslog", server=1, state="registered"))
    apply(state, Observation("0004f2000001", 20.0, "event", server=None, state="unregistered"))
    apply(state, Observation("0004f2000001", 21.0, "syslog", server=1, state="registered"))
    again = PhoneState.from_dict(state.to_dict())
    assert again.line_down_at == 20.0 and again.working_server == 1


def test_failpoints_reject_a_malformed_setting(monkeypatch):
    from fleet.base import failpoints

    failpoints._armed.cache_clear()
    monkeypatch.setenv("FLEET_FAILPOINTS", "rollout.reboot_sent=explode")
    with pytest.raises(ValueError, match="NAME=kill@N"):
        failpoints.failpoint("rollout.reboot_sent")
    failpoints._armed.cache_clear()


def test_failpoints_fire_only_on_their_name_key_and_pass(monkeypatch):
    """The kill itself is faked (it would take pytest down): what matters is when it is asked for."""
    import signal

    from fleet.base import failpoints

    kills: list[tuple[int, int]] = []
    monkeypatch.setattr(failpoints.os, "killpg", lambda pgid, sig: kills.append((pgid, sig)))
    monkeypatch.setattr(failpoints, "_hits", {})
    failpoints._armed.cache_clear()
    monkeypatch.setenv("FLEET_FAILPOINTS", "rollout.reboot_sent:0004f2000009=kill@2,rollout.confirm=kill@1")
    try:
        failpoints.failpoint("rollout.reboot_sent", "0004f2000001")   # another phone
        failpoints.failpoint("rollout.other", "0004f2000009")         # another point
        failpoints.failpoint("rollout.reboot_sent", "0004f2000009")   # its first pass: kill@2 waits for the second
        assert kills == []
        failpoints.failpoint("rollout.reboot_sent", "0004f2000009")
        assert kills == [(failpoints.os.getpgid(0), signal.SIGKILL)]
        failpoints.failpoint("rollout.reboot_sent", "0004f2000009")   # fires once, not on every later pass
        failpoints.failpoint("rollout.confirm")
        assert len(kills) == 2
    finally:
        failpoints._armed.cache_clear()
