"""`fleet`: roll configuration out to SoundPoint phones, run WAN-outage experiments, see which phone is registered where.

Exit codes: 0 success / every expectation held; 1 an expectation failed or a
rollout failed or halted; 2 bad input (playbook, inventory, lab or secrets file,
parameters, command line): nothing was touched, the message names file, line
and field; 3 infrastructure unreachable or a runtime error (Redis, workers, lease
held), or no fleet state to read (FLEET_REDIS_URL not set); 4 internal error (a bug: one line, FLEET_DEBUG=1 shows the traceback);
130 interrupted.
"""
from __future__ import annotations

import click

from fleet.cli.common import FleetCli
from fleet.cli.experiment import experiment
from fleet.cli.inventory import inventory_group
from fleet.cli.rollout import rollout
from fleet.cli.services import collector, scheduler, worker
from fleet.cli.status import status


@click.group(help=__doc__, cls=FleetCli)
def main() -> None:
    pass


for command in (experiment, rollout, inventory_group, status, scheduler, collector, worker):
    main.add_command(command)
