"""What `fleet rollout run` imports before it drives a rollout: its start-up is part of every rollout's time as a
command (bench/rollout.py prints it), and the experiment runner with the collectors behind it (aiohttp, the wire
decoders, the evidence sources) cost it some 0.4 s though only a rollout with a drill uses them."""
from __future__ import annotations

import subprocess
import sys

HEAVY = ("aiohttp", "dpkt", "fleet.experiment.runner", "fleet.evidence.collector", "fleet.worker.collectors")


def test_the_rollout_command_and_its_driver_do_not_import_the_experiment_runner_or_the_collectors():
    code = ("import sys, fleet.cli, fleet.cli.rollout, fleet.rollout.plan, fleet.rollout.driver\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout

