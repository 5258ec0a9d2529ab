"""Which reboot methods a SoundPoint control announces before sending them, and how `rebooted_since` judges a reboot
whose sender was lost by the methods it announced (rollout_work.confirm_reboot's question: send it again or not?).

Unit tests: the control's senders (check-sync NOTIFY, web UI form) are replaced by recorders, and the store by an
object holding the phone's last line unregistration; the end-to-end proof with killed workers is
tests/test_rollout_faults.py::test_worker_dies_around_the_reboot.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from fleet import phones
from fleet.rollout import work as rollout_work
from fleet.drivers.errors import DeviceRefused
from fleet.config.inventory import Credentials, Phone

MAC = "0004f2a0b0c1"
SINCE = 1_000.0
EVENTS = {"apps.telNotification.URL": "http://127.0.0.1:8514/events", "apps.telNotification.lineRegistrationEvent": "1"}
ALWAYS = {"voIpProt.SIP.specialEvent.checkSync.alwaysReboot": "1"}


class FakeStore:
    """The collector's view of the phone: only its last line unregistration matters here."""

    def __init__(self, line_down_at: float | None) -> None:
        self.line_down_at = line_down_at

    def phone_state(self, mac: str) -> SimpleNamespace:
        assert mac == MAC
        return SimpleNamespace(line_down_at=self.line_down_at)


def _control(family: str = "uc-4.0", reboot: str | None = None, refuse_check_sync: bool = False,
             line_down_at: float | None = None, model: str = "SoundPoint IP 650"):
    """The family's control with its senders recorded instead of sent (`sent`), check-sync refused if asked."""
    phone = Phone(mac=MAC, model=model, address="127.0.0.1", credentials="phone_admin", firmware_family=family,
                  reboot=reboot)
    ctl = phones.control(phones.PhoneAccess(phone, Credentials("Polycom", "x"), store=FakeStore(line_down_at)))
    ctl.sent = []

    def check_sync() -> None:
        if refuse_check_sync:
            raise DeviceRefused(f"phone {MAC}", "check-sync challenged (401) and the inventory gives no SIP credentials")
        ctl.sent.append("check-sync")

    ctl._reboot_check_sync = check_sync
    ctl._reboot_web = lambda: ctl.sent.append("web")
    return ctl


def _reboot(ctl) -> tuple[str, list[str]]:
    announced: list[str] = []
    how = ctl.reboot(announced.append)
    return how, announced


def test_each_method_is_announced_before_it_is_sent():
    ctl = _control()
    assert _reboot(ctl) == ("sip check-sync", ["check-sync"]) and ctl.sent == ["check-sync"]
    ctl = _control(refuse_check_sync=True)
    how, announced = _reboot(ctl)
    assert how.startswith("web /form-submit/Reboot (check-sync refused: ") and announced == ["check-sync", "web"]
    assert ctl.sent == ["web"]
    ctl = _control(reboot="web")
    assert _reboot(ctl) == ("web /form-submit/Reboot", ["web"]) and ctl.sent == ["web"]


def test_an_explicit_check_sync_that_is_refused_has_no_fallback_to_announce():
    ctl = _control(reboot="check-sync", refuse_check_sync=True)
    announced: list[str] = []
    with pytest.raises(DeviceRefused, match="challenged"):
        ctl.reboot(announced.append)
    assert announced == ["check-sync"] and ctl.sent == []


def test_a_resend_without_fallback_fails_where_check_sync_is_refused():
    ctl = _control(refuse_check_sync=True)
    announced: list[str] = []
    with pytest.raises(DeviceRefused, match="challenged"):
        ctl.reboot(announced.append, fallback=False)
    assert announced == ["check-sync"] and ctl.sent == []


@pytest.mark.parametrize("tried,falls_back", [
    ((), True), (("web",), True), (("check-sync", "web"), True), (("rest",), True),
    (("check-sync",), False), (None, False)])
def test_a_resend_falls_back_only_where_no_check_sync_may_have_been_accepted(tried, falls_back):
    """A check-sync the lost task sent may have rebooted the phone into files that refuse the next one: a web UI
    fallback then would be the second reboot."""
    assert rollout_work._resend_may_fall_back(tried) is falls_back


@pytest.mark.parametrize("params", [{}, ALWAYS, EVENTS], ids=["plain", "alwaysReboot", "events"])
def test_nothing_announced_means_nothing_was_sent(params):
    """reboot_tried recorded empty: the sender died before sending anything, whatever the phone's method."""
    for ctl in (_control(), _control(reboot="web"), _control(line_down_at=SINCE + 5)):
        assert ctl.rebooted_since(SINCE, params, ()) is False


def test_a_web_fallback_that_may_have_gone_out_is_not_sent_again_without_evidence():
    """The double reboot: check-sync refused, the web UI rebooted the phone, the task died. A second check-sync
    would be refused again and the fallback would reboot the phone a second time; with no events to tell,
    fleet takes the phone as rebooted (verification catches it if it was not)."""
    ctl = _control()
    assert ctl.rebooted_since(SINCE, {}, ("check-sync", "web")) is True
    assert _control(reboot="web").rebooted_since(SINCE, {}, ("web",)) is True


def test_a_check_sync_alone_is_sent_again_unless_it_always_reboots():
    assert _control().rebooted_since(SINCE, {}, ("check-sync",)) is False
    assert _control().rebooted_since(SINCE, ALWAYS, ("check-sync",)) is True


@pytest.mark.parametrize("tried", [("check-sync",), ("check-sync", "web"), ("web",)])
def test_the_unregistration_event_decides_where_the_phone_sends_events(tried):
    assert _control(line_down_at=SINCE + 2).rebooted_since(SINCE, EVENTS, tried) is True
    assert _control(line_down_at=SINCE - 2).rebooted_since(SINCE, EVENTS, tried) is False
    assert _control(line_down_at=None).rebooted_since(SINCE, EVENTS, tried) is False


def test_the_shutdown_event_is_when_the_phone_was_seen_going_down():
    """confirm_reboot verifies from then: a refresh the phone made between the lost task's reboot_at and its
    reboot (its REST lock held, a digest challenge) is not the phone coming back."""
    ctl = _control(line_down_at=SINCE + 2)
    assert ctl.rebooted_since(SINCE, EVENTS, ("check-sync",)) is True and ctl.reboot_seen_at() == SINCE + 2
    silent = _control()
    assert silent.rebooted_since(SINCE, {}, ("check-sync", "web")) is True and silent.reboot_seen_at() is None


def test_unrecorded_methods_count_as_every_method_the_reboot_may_use():
    """A record from before methods were announced: a UC 4.0 phone may have fallen back to the web UI; a SIP 3.x
    phone has no fallback, so its check-sync is sent again as before."""
    assert _control().rebooted_since(SINCE, {}, None) is True
    assert _control(reboot="check-sync").rebooted_since(SINCE, {}, None) is False
    assert _control(family="sip-3.x", model="SoundPoint IP 601").rebooted_since(SINCE, {}, None) is False


def test_a_rest_phone_rebooted_another_way_is_judged_by_that_way():
    """uc-5.x with `reboot: web`: its uptime is not asked (this control has no REST server to ask); the event is."""
    ctl = _control(family="uc-5.x", model="VVX 410", reboot="web", line_down_at=SINCE + 1)
    assert ctl.rebooted_since(SINCE, EVENTS, ("web",)) is True
    assert ctl.rebooted_since(SINCE, EVENTS, ()) is False


def test_a_fresh_line_registration_after_the_reboot_is_evidence_too():
    """A web UI reboot whose unregistration event was lost is confirmed by the line registration the phone sends when
    it is back; one from before the reboot proves nothing."""
    ctl = _control(reboot="web")
    ctl.access.store.phone_state = lambda mac: SimpleNamespace(line_down_at=None, line_up_at=SINCE + 3)
    assert ctl.rebooted_since(SINCE, EVENTS, ("web",)) is True
    ctl.access.store.phone_state = lambda mac: SimpleNamespace(line_down_at=None, line_up_at=SINCE - 3)
    assert ctl.rebooted_since(SINCE, EVENTS, ("web",)) is False
