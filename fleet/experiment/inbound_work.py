"""Make the site's gateway place one call to a phone's line (an experiment's `expect: inbound_via_fallback`).

A plain function (no Celery), as router_work's: it runs the gateway platform's originate command
(fleet.experiment.inbound_answers) through the router's SSH, where the gateway's bindings are read too, and
returns the parsed answer. The call comes from the gateway's own address, as a call into the site during an
outage does: that is the source a phone's request validation judges.
"""
from __future__ import annotations

import time

from fleet.drivers import router as routers
from fleet.drivers.errors import DriverError
from fleet.experiment import inbound_answers
from fleet.worker.context import context
from fleet.worker.errors import DeviceNotReached, TaskFailed, failure_text
from fleet.base.steps import step


@step("inbound call", args=("mac",))
def place_inbound(site_name: str, mac: str, user: str, ring_s: int) -> dict:
    """Place the call and wait for its outcome (at most `ring_s` s on the gateway); returns the InboundAnswer as a
    dict with the time the command was started (`t`) and what the gateway platform was."""
    inv, secrets = context()
    try:
        site = inv.site(site_name)
        if site.router is None or site.gateway_registrar is None:
            raise TaskFailed(f"site {site_name} has no router with a gateway platform to place a call from")
        originate = inbound_answers.platform(site.gateway_registrar.platform)
        command = originate.command(inbound_answers.line_user(user), site.gateway, ring_s)
        drv = routers.connect(site.router, secrets.credentials(site.router.credentials))
    except (KeyError, ValueError) as exc:
        raise TaskFailed(failure_text(exc)) from None
    except DriverError as exc:
        raise DeviceNotReached(failure_text(exc)) from None
    try:
        t = time.time()
        text = drv.run(command, check=False, what=f"{originate.name} call to line {user}")  # type: ignore[attr-defined]
    finally:
        drv.close()
    answer = originate.parse(text)
    return {"t": t, "mac": mac, "platform": originate.name, **answer.to_dict()}
