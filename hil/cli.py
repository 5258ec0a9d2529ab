"""`hil`: start, inspect and stop the virtual lab.

`hil up` starts the lab in a background process, waits until every phone has
registered, writes the inventory for `fleet`, and returns; `hil down` stops it.
`hil status --json` is the lab's ground truth, for tests to compare with what
`fleet` observed.

Exit codes: 0 success; 2 bad input (the lab file: the message names file, line
and field; nothing was started); 3 runtime error (no lab running, a lab that
did not become ready, a port in use); 4 internal error (a bug: one line,
HIL_DEBUG=1 shows the traceback); 130 interrupted.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

import click
import requests

from soundpoint.cli_exit import ExitCodeGroup, one_line
from soundpoint import gc_policy
from soundpoint.yamlfile import FileError

from . import labfile, netlock
from .limits import OutOfDescriptors

DEFAULT_STATE = Path(os.environ.get("HIL_STATE_DIR", ".hil"))
EXIT_INPUT, EXIT_RUNTIME, EXIT_INTERNAL = 2, 3, 4


class LabError(click.ClickException):
    """The lab could not do what was asked (not running, not ready): a runtime error, exit 3."""
    exit_code = EXIT_RUNTIME


class InputError(click.ClickException):
    """A lab file that cannot be used: exit 2, nothing started."""
    exit_code = EXIT_INPUT


def _control(state_dir: Path) -> dict:
    path = state_dir / "control.json"
    if not path.exists():
        raise LabError(f"no lab is running with state directory {state_dir}")
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise LabError(f"{path} is damaged; remove it if no lab is running") from None


class _Cli(ExitCodeGroup):
    """Every way a command ends maps onto the exit code table; never a traceback for the user."""

    debug_env = "HIL_DEBUG"

    def bad_input(self, exc: FileError) -> NoReturn:
        raise InputError(str(exc)) from None

    def unexpected(self, exc: Exception) -> NoReturn:
        message = one_line(exc)
        if isinstance(exc, (OSError, requests.RequestException)):
            raise LabError(f"{type(exc).__name__}: {message}") from None
        click.echo(f"Error: internal error: {type(exc).__name__}: {message} (HIL_DEBUG=1 shows the traceback)", err=True)
        sys.exit(EXIT_INTERNAL)


@click.group(help=__doc__, cls=_Cli)
def main() -> None:
    logging.basicConfig(level=os.environ.get("HIL_LOG", "WARNING"), format="%(asctime)s %(name)s %(message)s")


@main.command()
@click.argument("labfile_path", metavar="LABFILE", type=click.Path(dir_okay=False))
@click.option("--inventory-out", type=click.Path(dir_okay=False), help="Where to write the inventory for `fleet`.")
@click.option("--state-dir", type=click.Path(file_okay=False), default=str(DEFAULT_STATE), show_default=True,
              help="Keys, boot directories, secrets and the control file of this lab.")
@click.option("--foreground", is_flag=True, help="Run in this process until Ctrl-C instead of in the background.")
@click.option("--ready-timeout", default=120.0, show_default=True, help="Seconds to wait for every phone to register.")
def up(labfile_path: str, inventory_out: str | None, state_dir: str, foreground: bool, ready_timeout: float) -> None:
    """Start the lab described by LABFILE."""
    try:
        spec = labfile.load(labfile_path)
    except FileError as exc:
        raise InputError(str(exc)) from None
    if spec.backend == "netns":
        from .netns.daemons import preflight

        if (problem := preflight()) is not None:
            raise LabError(f"{labfile_path}: {problem}")
    if any(site.gateway == "kamailio" for site in spec.sites):
        from .kamailio import unavailable

        if (problem := unavailable(siptrace=True)) is not None:
            raise LabError(f"{labfile_path}: a site has `gateway: kamailio`, but {problem}")
    state = Path(state_dir).resolve()
    inv = Path(inventory_out).resolve() if inventory_out else state / "inventory.yml"
    if foreground:
        asyncio.run(_serve(spec, state, inv, ready_timeout, announce=True))
        return
    if (state / "control.json").exists():
        try:
            requests.get(_control(state)["url"] + "/status", timeout=2)
            raise LabError(f"a lab is already running with state directory {state}; `hil down` first")
        except requests.RequestException:
            (state / "control.json").unlink()
    state.mkdir(parents=True, exist_ok=True)
    (state / "ready").unlink(missing_ok=True)
    log = open(state / "lab.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "hil.cli", "up", str(Path(labfile_path).resolve()), "--foreground",
                             "--state-dir", str(state), "--inventory-out", str(inv), "--ready-timeout", str(ready_timeout)],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + ready_timeout + 10
    while time.monotonic() < deadline:
        ready = _read_ready(state)
        if ready is not None:
            if not ready.get("ok") and ready.get("error"):
                raise LabError(ready["error"])
            if not ready.get("ok"):
                raise LabError(f"lab started but not every phone registered within {ready_timeout}s; see {state / 'lab.log'}")
            click.echo(f"lab {spec.name} up (pid {proc.pid}): {ready.get('phones', '?')} phones; inventory: {inv}")
            return
        if proc.poll() is not None:
            raise LabError(f"lab process exited with {proc.returncode}; see {state / 'lab.log'}")
        time.sleep(0.2)
    proc.terminate()
    raise LabError("lab did not become ready in time")


def raise_file_limit() -> None:
    """Every phone holds a few sockets; a 1,000-phone lab needs more than the usual 1,024 descriptors."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _write_ready(state: Path, doc: dict) -> None:
    """The `ready` file `hil up` waits for, written whole or not at all (a temporary file renamed over it): the
    waiting process polls for it and read an empty file once, between its creation and its write, when two test
    suites loaded the machine ("internal error: JSONDecodeError")."""
    part = state / f".ready.{os.getpid()}"
    part.write_text(json.dumps(doc))
    os.replace(part, state / "ready")


def _read_ready(state: Path) -> dict | None:
    """The `ready` file's document; None while it is not there (or, from a lab of an older version that wrote it
    in place, not yet whole)."""
    try:
        doc = json.loads((state / "ready").read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


async def _serve(spec: labfile.LabFile, state: Path, inv: Path, ready_timeout: float, announce: bool) -> None:
    from .lab import Lab

    raise_file_limit()
    try:   # held until this process ends: no other lab on the machine takes these addresses meanwhile
        net_claim = netlock.claim(spec.net, len(spec.sites), backend=spec.backend, lab=spec.name, state=str(state))
    except netlock.NetTaken as exc:
        state.mkdir(parents=True, exist_ok=True)
        _write_ready(state, {"ok": False, "error": str(exc)})
        raise LabError(str(exc)) from None
    spec = spec.on_net(net_claim.net)
    if spec.backend == "netns":
        from .netns.lab import NetnsLab

        lab: Lab = NetnsLab(spec, state)
    else:
        lab = Lab(spec, state)
    gc_policy.young_die_young()
    loop = asyncio.get_running_loop()
    try:
        await lab.start()
    except OutOfDescriptors as exc:     # nothing left running: the reason for `hil up`, exit 3
        await lab.stop()
        _write_ready(state, {"ok": False, "phones": 0, "error": str(exc)})
        net_claim.release()
        raise LabError(str(exc)) from None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lab.stopping.set)
    gc_policy.settled()     # what start built lives as long as the lab (soundpoint.gc_policy)
    lab.write_inventory(inv)
    ok = await lab.wait_ready(ready_timeout)
    gc_policy.settled()     # ... and what the phones' boots built
    phones = sum(len(rt.phones) for rt in lab.sites)
    _write_ready(state, {"ok": ok and not lab.fatal, "phones": phones,
                         **({"error": f"lab stopped: {lab.fatal}"} if lab.fatal else {})})
    if announce:
        print(f"lab {spec.name}: {phones} phones, ready={ok}, inventory {inv}", flush=True)
    await lab.stopping.wait()
    await lab.stop()
    (state / "ready").unlink(missing_ok=True)
    net_claim.release()
    if lab.fatal:
        raise LabError(f"lab stopped: {lab.fatal}")


@main.command()
@click.option("--state-dir", type=click.Path(file_okay=False), default=str(DEFAULT_STATE), show_default=True)
def down(state_dir: str) -> None:
    """Stop the running lab."""
    state = Path(state_dir).resolve()
    from .netns.ns import RECORD, teardown_recorded

    if not (state / "control.json").exists() and (state / RECORD).exists():
        click.echo(f"lab stopped (namespaces removed: {' '.join(teardown_recorded(state)) or 'none'})")
        return
    ctl = _control(state)
    try:
        requests.post(ctl["url"] + "/shutdown", timeout=5)
    except requests.RequestException:
        try:
            os.kill(ctl["pid"], signal.SIGTERM)
        except ProcessLookupError:
            (state / "control.json").unlink(missing_ok=True)
    for _ in range(300):
        if not (state / "control.json").exists():
            break
        time.sleep(0.1)
    if (state / RECORD).exists():   # a namespace lab killed before it could clean up after itself
        teardown_recorded(state)
    click.echo("lab stopped")


@main.command()
@click.option("--state-dir", type=click.Path(file_okay=False), default=str(DEFAULT_STATE), show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the full ground truth as JSON.")
def status(state_dir: str, as_json: bool) -> None:
    """Ground truth of the running lab: every phone's registrations and every state change."""
    data = requests.get(_control(Path(state_dir).resolve())["url"] + "/status", timeout=10).json()
    if as_json:
        click.echo(json.dumps(data, indent=1))
        return
    for phone in data["phones"]:
        regs = "; ".join(f"line {r['index']} working={r['working_server']} " +
                         " ".join(f"s{s['index']}={s['state']}" for s in r["servers"]) for r in phone["registrations"])
        click.echo(f"{phone['mac']} {phone['ip']:<16} {phone['model']:<18} {regs}")


if __name__ == "__main__":
    main()
