"""A virtual phone told to reboot answers as one going down from the moment its ground truth says it is.

It sends its shutdown event (LineUnregistrationEvent) before it goes down, and that POST takes a round trip.
While it was in flight the lab's REST lineInfo still said "registered" though the phone's own ground truth
already counted it rebooting, so a collector's poll just after the reboot's answer verified a phone on its
way down (fleet.rollout.policy.evidence_from). Here the collector's events port is a listener that never
answers, so the shutdown event hangs for its whole timeout, and lineInfo is asked in that time.
"""
from __future__ import annotations

import asyncio
import socket

import pytest

from conftest import lab_spec, wait_until
from fleet import phones
from fleet.config import inventory
from fleet.evidence.sources.poller import Poller

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def silent_events():
    """A TCP listener that accepts (the kernel does) and never answers: the phone's event POST waits 5 s."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture(scope="module")
def lab(lab_factory, silent_events):
    spec = lab_spec("shutdown", phones=1, models=["VVX 410"])
    spec["sites"][0]["collector"]["events"] = silent_events
    lab = lab_factory(spec)
    wait_until(lambda: all(p["booted"] and p["registrations"] and p["registrations"][0]["working_server"]
                           for p in lab.status()["phones"]), 30, "the phone registered", state=lab.status)
    return lab


def _line_info(phone, creds) -> list[dict]:
    async def ask():
        async with Poller(timeout=3) as poller:
            return await poller.poll_one(phone, creds)
    result = asyncio.run(ask())
    assert result.ok, result
    return result.lines


def test_line_info_says_unregistered_while_the_shutdown_event_is_in_flight(lab):
    inv = inventory.load(lab.inventory)
    secrets = inventory.Secrets(inv)
    site = inv.sites[0]
    phone = site.phones[0]
    creds = secrets.credentials(phone.credentials)
    assert [line["RegistrationStatus"].lower() for line in _line_info(phone, creds)] == ["registered"]
    control = phones.control(phones.PhoneAccess(phone, creds, inv.effective_params(site, phone), secrets.resolve_param))
    control.reboot()
    lines = _line_info(phone, creds)      # well inside the event POST's 5 s
    truth = lab.status()["ground_truth"]["phones"][phone.mac]["events"]
    kinds = [e["kind"] for e in truth]
    assert "reboot" in kinds and "boot" not in kinds[kinds.index("reboot"):], kinds   # still shutting down
    assert [line["RegistrationStatus"].lower() for line in lines] == ["unregistered"], (lines, truth[-6:])
