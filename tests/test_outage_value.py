"""Unit: an outage is one typed value from the playbook to the router's shell words, and the router's answer one typed
state (fleet/base/outage.py). No lab, no Redis: the driver's SSH transport is replaced by a recorder, and the cut
script's mode snippets run in a real /bin/sh with stand-in `tc`, `iptables` and `ip`."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import get_args

import pytest
from pydantic import ValidationError

from conftest import ROOT
from fleet.base import outage as outage_mod
from fleet.base.outage import OUTAGE_MODES, Outage, OutageMode, WanState
from fleet.drivers.errors import DeviceRefused
from fleet.drivers.router import RouterOutcome
from fleet.drivers.router.linux_ssh import PLATFORM, LinuxSshRouter
from fleet.drivers.router.ssh_base import _PROLOGUE, CUT_SCRIPT, _cases
from fleet.experiment import playbook
from fleet.experiment.runner import ExperimentResult, ExperimentRunner
from fleet.worker import args as task_args
from soundpoint.yamlfile import FileError

OID = "exp-unit-o1"


# ---------------------------------------------------------------- the modes: one tuple
def test_every_outage_mode_literal_is_built_from_the_one_tuple():
    assert get_args(OutageMode) == OUTAGE_MODES
    assert get_args(Outage.model_fields["mode"].annotation) == OUTAGE_MODES
    assert get_args(playbook.OutageStep.model_fields["outage"].annotation) == OUTAGE_MODES
    assert task_args.RouterOutageArgs.model_fields["outage"].annotation is Outage
    assert task_args.RouterRestoreArgs.model_fields["outage"].annotation is Outage
    assert tuple(outage_mod._SHOWS) == OUTAGE_MODES


def test_no_other_module_spells_out_the_list_of_modes():
    """Two modes side by side in a literal anywhere but fleet/base/outage.py is a second copy of the list."""
    mode = "|".join(re.escape(m) for m in OUTAGE_MODES)
    two_in_a_row = re.compile(rf"""["']({mode})["']\s*,\s*["']({mode})["']""")
    copies = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "fleet").rglob("*.py"))
              if p != ROOT / "fleet" / "base" / "outage.py" and two_in_a_row.search(p.read_text())]
    assert not copies, f"a list of outage modes outside fleet/base/outage.py: {copies}"


# ---------------------------------------------------------------- Outage
def test_outage_survives_the_json_a_task_message_is():
    outage = Outage(id=OID, mode="degrade", max_duration=90, loss=0.25, delay_ms=40, rate_kbit=256)
    sent = json.loads(json.dumps(outage.to_dict()))
    assert Outage.from_dict(sent) == outage
    # the task's argument model takes the same dict back into an Outage
    args = task_args.RouterOutageArgs.model_validate({"site_name": "hq", "exp_id": "exp-unit", "outage": sent})
    assert args.outage == outage and isinstance(args.outage, Outage)


@pytest.mark.parametrize("fields, why", [
    ({"max_duration": "60"}, "max_duration"),             # strict: no "60" for 60
    ({"max_duration": 0}, "max_duration"),
    ({"loss": 1.5}, "loss"),
    ({"delay_ms": True}, "delay_ms"),
    ({"rate_kbit": 10_000_001}, "rate_kbit"),
    ({"id": "short"}, "id"),
    ({"id": "exp-unit-o1; reboot"}, "id"),
    ({"mode": "link-up"}, "mode"),
    ({"shell": "sh"}, "shell"),
])
def test_outage_refuses_values_no_driver_may_see(fields, why):
    with pytest.raises(ValidationError, match=why):
        Outage.from_dict({"id": OID, "mode": "drop", "max_duration": 60} | fields)


def test_a_degrade_needs_something_to_degrade_with():
    with pytest.raises(ValidationError, match="degrade outage needs loss, delay_ms or rate_kbit"):
        Outage(id=OID, mode="degrade", max_duration=60)
    for name, value in (("loss", 0.1), ("delay_ms", 50), ("rate_kbit", 64)):
        assert getattr(Outage(id=OID, mode="degrade", max_duration=60, **{name: value}), name) == value


@pytest.mark.parametrize("mode", [m for m in OUTAGE_MODES if m != "degrade"])
@pytest.mark.parametrize("name, value", [("loss", 0.1), ("delay_ms", 50), ("rate_kbit", 64)])
def test_degrade_numbers_on_a_mode_that_cuts_outright_are_refused(mode, name, value):
    with pytest.raises(ValidationError, match=f"{name} shapes a degrade outage only; a {mode} outage cuts outright"):
        Outage(id=OID, mode=mode, max_duration=60, **{name: value})


# ---------------------------------------------------------------- WanState
CUT_STATES = {
    "link-down": WanState(link_up=False),
    "drop": WanState(link_up=True, dropping=True, rules_ours=2),
    "degrade": WanState(link_up=True, degraded=True, qdisc_ours=True, root_qdisc="qdisc tbf 1fe1: root"),
    "dns-fail": WanState(link_up=True, dns_blocked=True, rules_ours=2),
}


@pytest.mark.parametrize("mode", OUTAGE_MODES)
def test_wan_state_shows_exactly_the_mode_that_made_it(mode):
    assert [m for m in OUTAGE_MODES if CUT_STATES[mode].shows(m)] == [mode]
    assert not WanState(link_up=True).shows(mode)


def test_wan_state_in_words():
    assert WanState(link_up=True).describe() == "link up, no rule or qdisc of ours"
    cut = WanState(link_up=True, rules_ours=2, qdisc_ours=True, outage="cut")
    assert cut.describe() == "link up, 2 rule(s) of ours, our qdisc, outage cut"
    assert cut.describe(with_outage=False) == "link up, 2 rule(s) of ours, our qdisc"
    assert WanState(link_up=False, outage="restored by deadman").describe() == "link DOWN, no rule or qdisc of ours, outage restored by deadman"


def test_wan_state_leftovers_are_what_of_ours_is_still_there():
    assert WanState(link_up=True).leftovers() == []
    assert WanState(link_up=True, outage="restored by controller").leftovers() == []
    left = WanState(link_up=True, rules_ours=1, qdisc_ours=True, routes_missing=("10.0.0.0/8 via 203.0.113.1",)).leftovers()
    assert left == ["1 firewall rule(s) of this outage remain", "our qdisc remains on the WAN interface",
                    "1 route(s) through the WAN not back: 10.0.0.0/8 via 203.0.113.1"]
    # routes cannot come back through a link that is down: the link is the one leftover named
    assert WanState(link_up=False, routes_missing=("default via 203.0.113.1",)).leftovers() == ["the WAN link is down"]


def test_wan_state_travels_in_a_task_result_and_back():
    state = WanState(link_up=True, oper_up=True, rules_ours=1, routes_missing=("default via 203.0.113.1",), outage="cut")
    result = json.loads(json.dumps(RouterOutcome("cut", deadman="pid 7", state=state, done_at=1.5).to_dict()))
    assert result["state"]["rules_ours"] == 1 and WanState.from_dict(result["state"]) == state
    assert WanState.from_dict(None) is None and WanState.from_dict({}) is None
    assert WanState.from_dict({"link_up": True, "a_key_of_a_newer_worker": 1}) == WanState(link_up=True)
    assert RouterOutcome("cancelled").to_dict()["state"] == {}


# ---------------------------------------------------------------- from a playbook file
PLAYBOOK = """kind: experiment
name: slow-wan
site: hq
steps:
  - {name: baseline, expect: working_server, server: 1, within: 30}
  - {name: thin the WAN, STEP}
  - {name: restore, restore: true}
"""


def _playbook(tmp_path: Path, step: str) -> Path:
    path = tmp_path / "slow-wan.yml"
    path.write_text(PLAYBOOK.replace("STEP", step))
    return path


def test_rate_kbit_on_a_degrade_step_is_accepted_from_a_playbook_file(tmp_path):
    pb = playbook.load(_playbook(tmp_path, "outage: degrade, max_duration: 120, rate_kbit: 256"))
    step = pb.steps[1]
    assert isinstance(step, playbook.OutageStep) and step.rate_kbit == 256
    assert step.to_outage(OID) == Outage(id=OID, mode="degrade", max_duration=120, rate_kbit=256)


@pytest.mark.parametrize("step, field, why", [
    ("outage: drop, max_duration: 120, rate_kbit: 256", "steps[1].rate_kbit", "rate_kbit shapes a degrade outage only"),
    ("outage: link-down, max_duration: 120, loss: 0.5", "steps[1].loss", "loss shapes a degrade outage only"),
    ("outage: degrade, max_duration: 120", "steps[1].outage", "needs loss, delay_ms or rate_kbit"),
    ("outage: degrade, max_duration: 120, rate_kbit: -1", "steps[1].rate_kbit", "greater than or equal to 0"),
    ("outage: degrade, max_duration: 120, rate_kbit: 256k", "steps[1].rate_kbit", ""),
])
def test_a_playbook_outage_that_makes_no_sense_names_its_line_and_field(tmp_path, step, field, why):
    path = _playbook(tmp_path, step)
    with pytest.raises(FileError) as exc:
        playbook.load(path)
    assert str(exc.value).startswith(f"{path}:6: {field}: "), str(exc.value)
    assert why in str(exc.value)


# ---------------------------------------------------------------- to the router's shell words
class RecordingRouter(LinuxSshRouter):
    """The Linux driver with its SSH transport replaced: `run` records the command and answers like the cut script."""

    def __init__(self) -> None:       # no SSH connection
        self.router = SimpleNamespace(address="192.0.2.1", port=22, state_dir="/var/lib/fleet-outages", wan_interface="wan0",
                                      wan_lock_dir="", dns_port=53)
        self.name = "router 192.0.2.1:22"
        self.commands: list[list[str]] = []

    def run(self, command: str, check: bool = True, what: str = "") -> str:
        self.commands.append(shlex.split(command))
        return "outcome=cut\ndeadman=4242\n"

    def wan_state(self, outage_id: str | None = None) -> WanState:
        return CUT_STATES["degrade"]


def _cut_words(outage: Outage) -> list[str]:
    """The positional arguments ($1, $2, ...) the router's shell gets for this cut."""
    drv = RecordingRouter()
    res = drv.cut(outage)
    assert res.outcome == "cut" and "pid 4242" in res.deadman and res.state == CUT_STATES["degrade"]
    (argv,) = drv.commands
    assert argv[:2] == ["sh", "-c"] and argv[2] == drv.cut_script() and argv[3] == "fleet"
    return argv[4:]


def _run_mode_snippet(tmp_path: Path, words: list[str]) -> list[str]:
    """Run the cut script's own variable line and its mode snippet with `words` as $1...; the stand-ins for tc,
    iptables and ip record each call. Returns the calls."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    for tool in ("tc", "iptables", "ip"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\n')
        (bin_dir / tool).chmod(0o755)
    variables = CUT_SCRIPT[len(_PROLOGUE):].splitlines()[0]
    assert variables.startswith("MODE=$5;"), variables
    script = (f'{variables}\nWAN=$3; TAG="fleet-$2"; F="{tmp_path}/$2"\nadd_rule() {{ iptables -w -I FORWARD "$@"; }}\n'
              f'set -e\ncase "$MODE" in\n{_cases(PLATFORM.cut)}\nesac\n')
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    subprocess.run(["sh", "-c", script, "fleet", *words], env=env, check=True, timeout=10)
    return log.read_text().splitlines() if log.exists() else []


def test_rate_kbit_from_a_playbook_reaches_the_routers_tc_command(tmp_path):
    pb = playbook.load(_playbook(tmp_path, "outage: degrade, max_duration: 120, rate_kbit: 256"))
    words = _cut_words(pb.steps[1].to_outage(OID))
    assert words[1:3] == [OID, "wan0"] and words[4:10] == ["degrade", "120", "0", "0", "256", "53"]
    assert _run_mode_snippet(tmp_path, words) == ["tc qdisc add dev wan0 root handle 1fe1: tbf rate 256kbit burst 32kbit latency 400ms"]


def test_rate_with_delay_is_one_netem_and_loss_is_tagged_rules(tmp_path):
    words = _cut_words(Outage(id=OID, mode="degrade", max_duration=60, loss=0.125, delay_ms=80, rate_kbit=512))
    assert words[4:9] == ["degrade", "60", "0.1250", "80", "512"]
    calls = _run_mode_snippet(tmp_path, words)
    assert calls == [
        f"iptables -w -I FORWARD -i wan0 -m statistic --mode random --probability 0.1250 -m comment --comment fleet-{OID} -j DROP",
        f"iptables -w -I FORWARD -o wan0 -m statistic --mode random --probability 0.1250 -m comment --comment fleet-{OID} -j DROP",
        "tc qdisc add dev wan0 root handle 1fe1: netem delay 80ms rate 512kbit",
    ]


def test_a_mode_the_platform_cannot_make_is_refused_before_any_command():
    drv = RecordingRouter()
    drv.platform = SimpleNamespace(cut={"link-down": ""})   # a platform without degrade
    with pytest.raises(DeviceRefused, match="'degrade' not supported"):
        drv.cut(Outage(id=OID, mode="degrade", max_duration=60, rate_kbit=64))
    assert drv.commands == []


# ---------------------------------------------------------------- through the runner's task message
class _Events:
    def __init__(self) -> None:
        self.logged: list[tuple[str, dict]] = []

    def log_event(self, exp: str, kind: str, **fields) -> None:
        self.logged.append((kind, fields))


def _runner(answers: dict[str, dict]):
    """An ExperimentRunner with its task sending replaced: each task's message is checked against the task's own
    argument model (as a worker would) and answered from `answers`."""
    runner = ExperimentRunner.__new__(ExperimentRunner)
    runner.site, runner.store, runner.task_timeout, runner.open_outage = SimpleNamespace(name="hq"), _Events(), 5.0, None
    runner.sent = []
    models = {"fleet.router_outage": task_args.RouterOutageArgs, "fleet.router_restore": task_args.RouterRestoreArgs}

    def send(sig, expires=None):
        message = json.loads(json.dumps(list(sig.args)))          # Celery's JSON, both ways
        names = [n for n in models[sig.task].model_fields][:len(message)]
        runner.sent.append((sig.task, models[sig.task].model_validate(dict(zip(names, message))), expires))
        runner.pending["sent"] = sig.task

    def answer():
        return dict(answers[runner.pending["sent"]])

    runner._send, runner._answer = send, answer
    return runner


def _move(runner, step):
    """One step as the runner's moves run it: a fresh pending record, sent and answered at once."""
    runner.pending = {"started": 0.0}
    return step()


def test_a_playbooks_degrade_reaches_the_tasks_as_one_outage_and_its_state_is_judged_typed(tmp_path):
    pb = playbook.load(_playbook(tmp_path, "outage: degrade, max_duration: 120, rate_kbit: 256"))
    degraded = RouterOutcome("cut", deadman="armed", state=CUT_STATES["degrade"]).to_dict()
    restored = RouterOutcome("restored", by="controller", state=WanState(link_up=True, outage="restored by controller")).to_dict()
    runner = _runner({"fleet.router_outage": dict(degraded, outcome="cut"), "fleet.router_restore": dict(restored, probe={})})
    result = ExperimentResult(id="exp-unit", playbook="slow-wan", site="hq", started=0.0)
    cut = _move(runner, lambda: runner._outage("exp-unit", pb.steps[1], result))
    assert cut.passed and cut.message == "router: link up, our qdisc; dead-man: armed; LAN probe: n/a", cut.message
    back = _move(runner, lambda: runner._restore("exp-unit", "restore", result))
    assert back.passed, back.message
    (task, sent, _), (task2, sent2, expires) = runner.sent
    asked = Outage(id="exp-unit-o1", mode="degrade", max_duration=120, rate_kbit=256)
    assert (task, sent.outage) == ("fleet.router_outage", asked)
    assert (task2, sent2.outage) == ("fleet.router_restore", asked) and expires == 120.0   # restores expire with the dead-man
    assert result.outages[0]["asked"] == asked.to_dict()
    assert result.outages[0]["confirmed"] == "restored by the controller: link up, no rule or qdisc of ours"


def test_a_cut_the_routers_state_does_not_show_fails_the_step(tmp_path):
    pb = playbook.load(_playbook(tmp_path, "outage: drop, max_duration: 60"))
    unchanged = RouterOutcome("cut", state=WanState(link_up=True)).to_dict()
    runner = _runner({"fleet.router_outage": unchanged})
    cut = _move(runner, lambda: runner._outage("exp-unit", pb.steps[1],
                                               ExperimentResult(id="exp-unit", playbook="p", site="hq", started=0.0)))
    assert not cut.passed
    assert cut.message == "router state after the cut does not show it: link up, no rule or qdisc of ours"
