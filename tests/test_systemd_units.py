"""The systemd unit examples in examples/systemd run commands that exist, with options that exist, from a working
directory holding fleet.toml, and give a stopping worker time for a WAN restore in flight."""
from __future__ import annotations

import configparser
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, ROOT

UNITS = sorted((ROOT / "examples" / "systemd").glob("*.service"))


def _unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str           # systemd keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def _restore_worst_case_s() -> float:
    """A router_restore task in flight at the worst: every try (DEVICE_RETRY) logs in and runs a command, each up
    to the router's default timeout, with the backoff between tries, then the LAN-side probe."""
    from fleet.config.inventory import Router
    from fleet.worker.base import DEVICE_RETRY

    tries = DEVICE_RETRY["max_retries"] + 1
    backoff = sum(min(DEVICE_RETRY["retry_backoff_max"], DEVICE_RETRY["retry_backoff"] * 2 ** n) for n in range(tries - 1))
    probe_for = 10.0   # fleet.experiment.tasks.router_restore's default
    return tries * 2 * Router.model_fields["timeout"].default + backoff + probe_for


def test_there_is_a_unit_for_workers_collectors_and_the_scheduler():
    assert {p.name for p in UNITS} >= {"fleet-worker@.service", "fleet-collector@.service", "fleet-scheduler.service"}


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_runs_an_existing_fleet_command_with_existing_options(path):
    service = _unit(path)["Service"]
    argv = [a.replace("%i", "hq") for a in shlex.split(service["ExecStart"])]
    assert Path(argv[0]).name == "fleet", argv
    assert not any(a.startswith("--inventory") for a in argv), "the inventory comes from fleet.toml"
    # click parses every option before --help acts: an unknown command or option exits 2 here
    res = subprocess.run([BIN / "fleet", *argv[1:], "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, (argv, res.stderr)
    assert res.stdout.startswith(f"Usage: fleet {argv[1]}"), res.stdout
    bogus = subprocess.run([BIN / "fleet", *argv[1:], "--no-such-option", "--help"], capture_output=True, text=True,
                           timeout=60)
    assert bogus.returncode == 2, "the check above would not notice a wrong option"


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_restarts_on_failure_stops_with_sigterm_and_waits_long_enough(path):
    service = _unit(path)["Service"]
    assert service["WorkingDirectory"].startswith("/"), "fleet.toml is read from the working directory"
    assert service["Restart"] == "on-failure" and service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) >= _restore_worst_case_s(), (service["TimeoutStopSec"], _restore_worst_case_s())
