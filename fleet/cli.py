"""`fleet`: roll configuration out to SoundPoint phones, run WAN-outage experiments, see which phone is registered where.

Exit codes: 0 success / every expectation held; 1 an expectation failed or a
rollout failed or halted; 2 bad input (playbook, inventory, lab or secrets file,
parameters, command line): nothing was touched, the message names file, line
and field; 3 infrastructure unreachable or a runtime error (Redis, workers, lease
held), or no fleet state to read (FLEET_REDIS_URL not set); 4 internal error (a bug: one line, FLEET_DEBUG=1 shows the traceback);
130 interrupted.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from soundpoint.cli_exit import ExitCodeGroup, one_line
from soundpoint.yamlfile import FileError

from soundpoint.redact import redact

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_INFRA, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
err = Console(stderr=True)


def _fail(message: str, code: int) -> None:
    """Print one line on stderr (user text stays text: a `[/x]` in a value is not markup) and exit."""
    err.print(Text(message, style="red"), soft_wrap=True)   # one line, never wrapped: grep finds it
    sys.exit(code)


def _one_line(exc: BaseException | str) -> str:
    """One line, credentials out first (a cut at the length limit must not fall inside a URL's password)."""
    return one_line(redact(str(exc)), limit=300)


def _infra(exc: BaseException) -> bool:
    """Redis, Celery or the network gave out: not a bug, not bad input."""
    mod = type(exc).__module__.split(".")[0]
    return isinstance(exc, (OSError, TimeoutError)) or (mod in ("redis", "kombu", "celery", "amqp")
                                                        and "rror" in type(exc).__name__)


class _Cli(ExitCodeGroup):
    """Maps every way a command can end onto the exit code table above; never a traceback for the user."""

    debug_env = "FLEET_DEBUG"

    def bad_input(self, exc: FileError) -> NoReturn:
        _fail(f"invalid input: {exc}", EXIT_INPUT)

    def unexpected(self, exc: Exception) -> NoReturn:
        if _infra(exc):
            _fail(f"runtime error: {type(exc).__name__}: {_one_line(exc)}", EXIT_INFRA)
        _fail(f"internal error: {type(exc).__name__}: {_one_line(exc)} (FLEET_DEBUG=1 shows the traceback)",
              EXIT_INTERNAL)


def _store(creates_state: bool = False):
    """The Store on FLEET_REDIS_URL. Without it, a command that reads existing state exits 3 saying there is none;
    one that creates state (`creates_state`) runs on a private redis-server stopped when the command ends."""
    from soundpoint.redisboot import NoFleetState, RedisUnavailable, existing_redis_url, private_redis_url
    from fleet.state.store import Store

    try:
        store = Store(private_redis_url() if creates_state else existing_redis_url())
        store.ping()
        return store
    except (RedisUnavailable, NoFleetState) as exc:
        _fail(_one_line(exc), EXIT_INFRA)
    except Exception as exc:  # redis.ConnectionError and friends
        from soundpoint.redact import redact_url

        _fail(_one_line(f"cannot reach Redis at {redact_url(os.environ.get('FLEET_REDIS_URL'))}: {type(exc).__name__}"), EXIT_INFRA)


def _inventory(path: str):
    """The inventory, validated, with its secrets file checked (shape, and every secret it names present)."""
    from fleet.config import inventory

    try:
        inv = inventory.load(path, keep_source=True)
        inventory.check_secrets(inv)
        return inv
    except FileError as exc:
        _fail(f"invalid inventory: {exc}", EXIT_INPUT)


def _load_checked(load, check_against, playbook_path: str, inventory_path: str):
    """A playbook (`load`), the inventory, and the playbook checked against it (`check_against`): the experiment
    and the rollout playbooks load the same way, and any error exits 2 before anything is touched."""
    try:
        pb = load(playbook_path)
    except FileError as exc:
        _fail(f"invalid playbook: {exc}", EXIT_INPUT)
    inv = _inventory(inventory_path)
    try:
        check_against(pb, inv, playbook_path)
    except FileError as exc:
        _fail(f"invalid playbook: {exc}", EXIT_INPUT)
    return pb, inv


def _check_sites(inv, sites) -> None:
    """Every --site must be in the inventory: a typo stops here, not in a worker's first task."""
    for s in sites:
        try:
            inv.site(s)
        except KeyError as exc:
            _fail(str(exc.args[0]), EXIT_INPUT)


@click.group(help=__doc__, cls=_Cli)
def main() -> None:
    pass


@main.group()
def experiment() -> None:
    """WAN-outage experiments: run a playbook, list and show past runs."""


@experiment.command("run")
@click.argument("playbook_path", metavar="PLAYBOOK", type=click.Path(dir_okay=False))
@click.option("--inventory", "inventory_path", required=True, envvar="FLEET_INVENTORY", type=click.Path(dir_okay=False),
              help="Inventory file (or FLEET_INVENTORY).")
@click.option("--report-dir", default="reports", show_default=True, type=click.Path(file_okay=False),
              help="Where report.json, junit.xml and report.html go (in a subdirectory per run).")
@click.option("--json", "as_json", is_flag=True, help="Print report.json on stdout instead of progress lines.")
@click.option("--task-timeout", default=60.0, show_default=True, help="Seconds to wait for a worker to answer a task.")
def experiment_run(playbook_path: str, inventory_path: str, report_dir: str, as_json: bool, task_timeout: float) -> None:
    """Run an experiment PLAYBOOK against its site; exit 0 only if every expectation held."""
    from fleet.experiment import playbook as pb_mod

    pb, inv = _load_checked(pb_mod.load, pb_mod.check_against, playbook_path, inventory_path)
    # everything is validated: only now the heavy imports (Celery, the runner)
    from fleet.experiment import report
    from fleet.worker.app import configure
    from fleet.experiment.runner import ExperimentRunner
    from fleet.experiment.signals import SignalGuard
    from fleet.state.store import LeaseHeld

    store = _store(creates_state=True)
    configure(store.url)
    out = Console(stderr=as_json)
    runner = ExperimentRunner(pb, inv, store, say=lambda s: out.print(Text.assemble((time.strftime('%H:%M:%S'), "dim"), " ", str(s))),
                              task_timeout=task_timeout)
    # One guard from the first step to the written report: the first stop signal restores the WAN and ends the
    # run; no later one can skip the restore or the report.
    with SignalGuard() as guard:
        try:
            with out.status("running", spinner="dots") if not as_json else _null():
                result = runner.run(guard)
        except LeaseHeld as exc:
            _fail(_one_line(exc), EXIT_INFRA)
        directory = Path(report_dir) / result.id
        doc = report.write(result, directory)
        store.finish_experiment(result.id, result.passed, str(directory.resolve()))
    if as_json:
        click.echo(json.dumps(doc, indent=1))
    else:
        s = doc["summary"]
        out.print(f"[bold {'green' if result.passed else 'red'}]{'PASSED' if result.passed else 'FAILED'}[/]: "
                  f"{s['phones_passed']}/{s['phones']} phones; failover p50/p95/max "
                  f"{_f(s['failover_s']['p50'])}/{_f(s['failover_s']['p95'])}/{_f(s['failover_s']['max'])} s; recovery "
                  f"{_f(s['recovery_s']['p50'])}/{_f(s['recovery_s']['p95'])}/{_f(s['recovery_s']['max'])} s")
        for p in doc["phones"]:
            if not p["passed"]:
                out.print(Text.assemble("  ", (str(p["mac"]), "red"), ": ", "; ".join(map(str, p["reasons"]))))
            undetermined = [f"{m}: {said}" for m, said in (p.get("judgement") or {}).items() if said.startswith("undetermined")]
            if p["passed"] and undetermined:   # passed, but the evidence could only bound the moment: say so
                out.print(Text.assemble("  ", (str(p["mac"]), "yellow"), ": ", "; ".join(undetermined)))
        for e in doc["errors"]:
            out.print(Text(f"  {e}", style="red"))
        out.print(Text(f"report: {(directory / 'report.html').resolve()}"))
    _exit_now(EXIT_INTERRUPTED if result.interrupted else 0 if result.passed else EXIT_FAILED)


def _exit_now(code: int) -> None:
    """Exit without interpreter teardown: Celery's result objects otherwise try to unsubscribe from Redis
    while the interpreter is shutting down and print noise after an interrupted run. A private Redis this run
    started is stopped first (os._exit skips atexit)."""
    from soundpoint.redisboot import stop_private

    stop_private()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _f(v) -> str:
    return "-" if v is None else f"{v:.2f}"


@experiment.command("list")
@click.option("--json", "as_json", is_flag=True)
def experiment_list(as_json: bool) -> None:
    """Past and running experiments, newest first (read back from Redis)."""
    rows = _store().experiments()
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    t = Table("id", "playbook", "site", "status", "started")
    for r in rows:
        t.add_row(*(escape(str(r.get(k, ""))) for k in ("id", "playbook", "site", "status")),
                  time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(r.get("started", 0)))))
    Console().print(t)


@experiment.command("show")
@click.argument("exp_id")
@click.option("--json", "as_json", is_flag=True)
def experiment_show(exp_id: str, as_json: bool) -> None:
    """One experiment's metadata and its append-only event log."""
    store = _store()
    meta = store.experiment(exp_id)
    if not meta:
        _fail(f"no experiment {exp_id}", EXIT_INPUT)
    events = store.events(exp_id)
    if as_json:
        click.echo(json.dumps({"experiment": meta, "events": events}, indent=1))
        return
    click.echo(f"{meta['id']} {meta['playbook']} site={meta['site']} status={meta['status']} report={meta.get('report_dir', '-')}")
    for e in events:
        click.echo(f"  {time.strftime('%H:%M:%S', time.localtime(e['t']))} {e['kind']:<15} "
                   + " ".join(f"{k}={v}" for k, v in e.items() if k not in ('kind', 't', 'mono'))[:200])


@main.group()
def rollout() -> None:
    """Configuration rollouts: plan (dry run), run, status, resume, abort."""


def _load_rollout(playbook_path: str, inventory_path: str):
    """Playbook, inventory, secrets and every cross-check between them, before anything is touched."""
    from fleet.rollout import plan, playbook

    return _load_checked(playbook.load, plan.check_against, playbook_path, inventory_path)


def _plan(pb, inv, rid: str, last_pushed: dict | None, playbook_path: str):
    from fleet.rollout.plan import PlanError, plan

    try:
        return plan(inv, pb, rid, last_pushed, inv.registrar_limits)
    except PlanError as exc:
        _fail(f"{playbook_path}: {exc}", EXIT_INPUT)


def _print_plan(p, console: Console) -> None:
    console.print(f"[bold]{len(p.phones)} phones in {len(p.waves)} waves[/bold]; max unavailable per site "
                  + ", ".join(f"{s}: {n}" for s, n in p.max_unavailable.items()) + f"; failure budget {p.budget_total}")
    for i, wave in enumerate(p.waves):
        console.print(Text(f"  wave {i}: {len(wave)} phones ({', '.join(wave[:6])}{', ...' if len(wave) > 6 else ''})"))
    changed = [ph for ph in p.phones if ph.diff]
    console.print(f"[bold]parameter changes[/bold] ({len(changed)} phones change, {len(p.phones) - len(changed)} unchanged)")
    for ph in changed[:50]:
        for name, (old, new) in ph.diff.items():
            verbatim = " (uncatalogued: passed through verbatim, unchecked)" if name in ph.verbatim else ""
            console.print(Text(f"  {ph.mac} {name}: {old!s} -> {new!s}{verbatim}"))
    if len(changed) > 50:
        console.print(f"  ... and {len(changed) - 50} more phones")
    warned = [ph for ph in p.phones if ph.warnings]
    if warned:
        console.print(f"[bold yellow]failover warnings[/bold yellow] ({len(warned)} phones): "
                      "set-ups their firmware cannot fail over with as the rules expect")
        for ph in warned[:50]:
            for w in ph.warnings:
                console.print(Text(f"  {ph.mac} ({ph.model}): {w}", style="yellow"))
    t = Table("server address", "phones", "REGISTER/s normal", "REGISTER/s primary down", title="registration refresh load (R6)")
    for addr, v in sorted(p.load.items()):
        t.add_row(escape(addr), str(v["phones"]), f"{v['normal']:.2f}", f"{v['primary_down']:.2f}")
    console.print(t)
    for o in p.overloaded:
        console.print(Text(f"over the registrar limit: {o}", style="red"))


@rollout.command("run")
@click.argument("playbook_path", metavar="PLAYBOOK", type=click.Path(dir_okay=False))
@click.option("--inventory", "inventory_path", required=True, envvar="FLEET_INVENTORY", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Print waves, per-phone diff and the refresh-load check; touch nothing.")
@click.option("--json", "as_json", is_flag=True)
def rollout_run(playbook_path: str, inventory_path: str, dry_run: bool, as_json: bool) -> None:
    """Roll PLAYBOOK out: canaries, then waves; halts when the failure budget is spent (exit 1)."""
    pb, inv = _load_rollout(playbook_path, inventory_path)   # everything validated before the heavy imports
    from fleet.rollout.driver import new_id

    rid = new_id(pb.name)
    if dry_run:
        last = None
        if os.environ.get("FLEET_REDIS_URL"):
            from fleet.state.store import RolloutStore, Store

            try:
                store = Store(os.environ["FLEET_REDIS_URL"])
                last = RolloutStore(store).last_pushed([p.mac for s in inv.sites for p in s.phones])
            except Exception:  # a dry run works without Redis too; it then diffs against the inventory
                last = None
        p = _plan(pb, inv, rid, last, playbook_path)
        from fleet.sites.files import describe, survey   # read only: each phone's master and override files

        found = survey(inv, p.phones)
        if as_json:
            click.echo(json.dumps(p.to_dict(refs=False) | {"dry_run": True, "site_files": found}, indent=1))
        else:
            _print_plan(p, Console())
            Console().print("[bold]site files[/bold]")
            for line in describe(found):
                Console().print(Text("  " + line))
        sys.exit(EXIT_INPUT if p.overloaded and not pb.strategy.allow_overload else 0)
    store = _store(creates_state=True)
    from fleet.worker.app import configure
    from fleet.rollout.driver import Overloaded, create
    from fleet.rollout.plan import PlanError

    configure(store.url)
    try:
        rid, pb, inv, _ = create(playbook_path, inventory_path, store, rid)
    except PlanError as exc:
        _fail(f"{playbook_path}: {exc}", EXIT_INPUT)
    except Overloaded as exc:
        _fail(f"refusing: the change would overload a registrar ({exc}); set strategy.allow_overload to override", EXIT_INPUT)
    _drive(rid, pb, inv, store, as_json)


def _drive(rid: str, pb, inv, store, as_json: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fleet.rollout.driver import RolloutDriver, experiment_drill
    from fleet.state.store import LeaseHeld

    console = Console(stderr=as_json)
    console.print(Text(f"rollout {rid}"))
    bars: dict = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[failed]} failed"),
                  TimeElapsedColumn(), console=console, disable=as_json) as progress:
        def show(by_site: dict) -> None:
            for site, c in by_site.items():
                if site not in bars:
                    bars[site] = progress.add_task(f"site {site}", total=c["total"], failed=0)
                progress.update(bars[site], completed=c["settled"], failed=c["failed"])

        driver = RolloutDriver(rid, inv, store, pb, say=lambda s: progress.console.print(Text(str(s))), progress=show,
                               drill=experiment_drill(inv, store))
        try:
            outcome = driver.run()
        except LeaseHeld as exc:
            err.print(Text(_one_line(exc), style="red"))
            _exit_now(EXIT_INFRA)
    summary = {"id": rid, "status": outcome.status, "reason": outcome.reason, "counts": outcome.counts}
    if outcome.reason:
        console.print(Text(str(outcome.reason), style="red"))
    if as_json:
        click.echo(json.dumps(summary))
    else:
        colour = "green" if outcome.status == "done" else "red"
        console.print(Text.assemble((str(outcome.status), f"bold {colour}"),
                                    f"{': ' + str(outcome.reason) if outcome.reason else ''} {outcome.counts}"))
    failed = sum(outcome.counts.get(k, 0) for k in ("failed", "rolled_back", "rollback_failed"))
    _exit_now(0 if outcome.status == "done" and not failed else EXIT_FAILED)


@rollout.command("status")
@click.argument("rid", metavar="ID")
@click.option("--json", "as_json", is_flag=True)
def rollout_status(rid: str, as_json: bool) -> None:
    """Counts and per-phone states of a rollout."""
    from fleet.state.store import RolloutStore

    rs = RolloutStore(_store())
    meta = rs.get(rid)
    if not meta:
        _fail(f"no rollout {rid}", EXIT_INPUT)
    macs = [p["mac"] for p in meta["plan"]["phones"]]
    phones = rs.phones(rid, macs, full=True)
    counts: dict = {}
    for st in phones.values():
        counts[st.get("state")] = counts.get(st.get("state"), 0) + 1
    if as_json:
        from fleet.rollout.policy import why_deferred

        rows = {m: {k: v for k, v in st.items() if not k.startswith("backed_up:") and k != "plan"}
                for m, st in phones.items()}
        for row in rows.values():
            if row.get("state") == "deferred":
                row["waiting_for"] = why_deferred(row.get("deferred_reason"))
        click.echo(json.dumps({"id": rid, "status": meta.get("status"), "reason": meta.get("reason", ""), "counts": counts,
                               "phones": rows}, indent=1))
        return
    console = Console()
    console.print(Text.assemble(f"{rid}: ", (str(meta.get("status")), "bold"), f" {meta.get('reason', '')} {counts}"))
    from fleet.rollout.policy import why_deferred

    t = Table("MAC", "site", "wave", "state", "error / why it waits")
    site_of = {p["mac"]: p["site"] for p in meta["plan"]["phones"]}
    for m, st in phones.items():
        why = st.get("error", "") or (why_deferred(st.get("deferred_reason")) if st.get("state") == "deferred" else "")
        t.add_row(*(escape(str(x)) for x in (m, site_of[m], st.get("wave", ""), st.get("state", ""), why[:120])))
    console.print(t)


@rollout.command("resume")
@click.argument("rid", metavar="ID")
@click.option("--budget", type=int, help="Raise the failure budget (after a halt because it was spent).")
@click.option("--json", "as_json", is_flag=True)
def rollout_resume(rid: str, budget: int | None, as_json: bool) -> None:
    """Continue a halted or interrupted rollout; verified phones are not touched again."""
    from fleet.worker.app import configure
    from fleet.state.store import RolloutStore

    store = _store()
    configure(store.url)
    rs = RolloutStore(store)
    meta = rs.get(rid)
    if not meta:
        _fail(f"no rollout {rid}", EXIT_INPUT)
    if meta.get("status") == "done":
        err.print(Text(f"rollout {rid} is already done"))
        sys.exit(0)
    pb, inv = _load_rollout(meta["playbook_path"], meta["inventory_path"])
    if budget is not None:
        rs.set(rid, budget_override=budget)
    rs.set(rid, abort="0")
    _drive(rid, pb, inv, store, as_json)


@rollout.command("abort")
@click.argument("rid", metavar="ID")
def rollout_abort(rid: str) -> None:
    """Stop a running rollout after its in-flight phones settle."""
    from fleet.state.store import RolloutStore

    rs = RolloutStore(_store())
    if not rs.get(rid):
        _fail(f"no rollout {rid}", EXIT_INPUT)
    rs.set(rid, abort="1")
    click.echo(f"abort requested for {rid}")


@rollout.command("list")
@click.option("--json", "as_json", is_flag=True)
def rollout_list(as_json: bool) -> None:
    """Rollouts, newest first."""
    from fleet.state.store import RolloutStore

    rows = RolloutStore(_store()).list()
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    t = Table("id", "playbook", "status", "reason")
    for r in rows:
        t.add_row(*(escape(str(x)) for x in (r["id"] or "", r["playbook"] or "", r["status"] or "", (r["reason"] or "")[:60])))
    Console().print(t)


@main.group("inventory")
def inventory_group() -> None:
    """Check an inventory before anything uses it."""


@inventory_group.command("check")
@click.argument("inventory_path", metavar="FILE", type=click.Path(dir_okay=False))
@click.option("--site", "sites", multiple=True, help="Only this site (repeatable).")
@click.option("--probe", "do_probe", is_flag=True,
              help="Also try every device read-only: boot server login and read, router host key and state, "
                   "each phone's web interface or REST, the collectors' addresses. Changes nothing anywhere.")
@click.option("--timeout", default=5.0, show_default=True, type=click.FloatRange(0.1, 120), help="Seconds per device.")
@click.option("--json", "as_json", is_flag=True, help="One object: valid, and with --probe a list of checks.")
def inventory_check(inventory_path: str, sites: tuple[str, ...], do_probe: bool, timeout: float, as_json: bool) -> None:
    """Validate FILE (and its secrets file); with --probe, reach every device read-only.

    Exit codes: 0 valid (and every device reached), 1 a device failed its probe, 2 invalid input.
    """
    from fleet.config import inventory as inv_mod
    from fleet.sites.probe import device_count, probe
    from fleet.state.store import Store

    inv = _inventory(inventory_path)
    _check_sites(inv, sites)
    phones = device_count(inv, sites)
    if not do_probe:
        summary = {"valid": True, "inventory": inv.name, "sites": [s.name for s in inv.sites], "phones": phones}
        click.echo(json.dumps(summary) if as_json else f"{inventory_path}: valid ({len(inv.sites)} sites, {phones} phones)")
        return
    secrets = inv_mod.check_secrets(inv)
    # the phones' REST locks live in fleet's Redis: a probe holds them as the collectors and workers do
    store = Store(os.environ["FLEET_REDIS_URL"]) if os.environ.get("FLEET_REDIS_URL") else None
    if as_json or not sys.stderr.isatty():
        rows = probe(inv, secrets, sites, timeout, store=store)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        with Progress(TextColumn("probing phones"), BarColumn(), MofNCompleteColumn(), console=err, transient=True) as bar:
            task = bar.add_task("probe", total=phones)
            rows = probe(inv, secrets, sites, timeout, progress=lambda n: bar.advance(task, n), store=store)
    failed = [r for r in rows if not r.ok]
    if as_json:
        click.echo(json.dumps({"valid": True, "ok": not failed, "checks": [r.to_dict() for r in rows]}, indent=1))
    else:
        t = Table("site", "device", "target", "ok", "detail")
        for r in rows:
            t.add_row(escape(r.site), escape(r.device), escape(r.target), "yes" if r.ok else "[red]NO[/red]", escape(r.detail))
        Console().print(t)
        click.echo(f"{len(rows) - len(failed)} of {len(rows)} checks passed" + (f"; failed: {', '.join(r.device for r in failed)}" if failed else ""))
    sys.exit(EXIT_FAILED if failed else EXIT_OK)


@main.command()
@click.option("--site", help="Only this site.")
@click.option("--live", is_flag=True, help="Refresh every second until Ctrl-C.")
@click.option("--json", "as_json", is_flag=True, help="A list of objects: mac, site, working_server, servers (registration 1's), "
                                                        "lines (other registrations), observed_at, unobservable, evidence_errors, "
                                                        "evidence_foreign.")
def status(site: str | None, live: bool, as_json: bool) -> None:
    """Which phone is registered where, right now (from the collectors' latest observations)."""
    from fleet.evidence.status import view as status_view

    store = _store()
    if as_json:
        click.echo(store.status_json(site))
        return

    def current():
        return status_view(*store.phones_and_evidence(site))

    console = Console()
    if not live:
        console.print(current())
        return
    from rich.live import Live

    with Live(current(), console=console, refresh_per_second=2) as view:
        try:
            while True:
                time.sleep(1)
                view.update(current())
        except KeyboardInterrupt:
            pass


@main.command()
@click.option("--inventory", "inventory_path", required=True, envvar="FLEET_INVENTORY", type=click.Path(dir_okay=False))
@click.option("--playbooks", "playbook_dir", default="playbooks", show_default=True, type=click.Path(file_okay=False),
              help="Directory of rollout playbooks; those with a `schedule` are run by cron.")
@click.option("--check", is_flag=True, help="Print the schedule and any missed runs, then exit.")
def scheduler(inventory_path: str, playbook_dir: str, check: bool) -> None:
    """Run Celery beat with the schedules of the rollout playbooks (a worker with --control runs them)."""
    from fleet.rollout import schedule

    _inventory(inventory_path)
    try:
        entries = schedule.load_entries(playbook_dir)
    except FileError as exc:
        _fail(f"invalid playbook: {exc}", EXIT_INPUT)
    store = _store()
    for e in entries:
        click.echo(f"{e.name}: '{e.cron}' ({e.timezone}) -> {e.playbook}")
    for message in schedule.check_missed(store, entries):
        err.print(Text(f"missed: {message}", style="yellow"))
    if check:
        return
    from fleet.worker.app import app, configure

    configure(store.url)
    app.conf.beat_schedule = schedule.beat_schedule(entries, str(Path(inventory_path).resolve()))
    # no schedule file: the schedule comes from the playbooks, last-sent times go to Redis (fleet.rollout.schedule)
    app.Beat(loglevel="WARNING", scheduler=schedule.scheduler_for(store, entries)).run()


@main.command()
@click.option("--inventory", "inventory_path", required=True, envvar="FLEET_INVENTORY", type=click.Path(dir_okay=False))
@click.option("--site", "sites", multiple=True, required=True, help="Collect for this site (repeatable).")
def collector(inventory_path: str, sites: tuple[str, ...]) -> None:
    """Run the sites' collectors (every evidence source the inventory names) as a service of their own.

    Per site: syslog and telephone notification events (and state polling with
    poll_interval); the SIP wire sources of `capture:` (`router [IFACE]`:
    tcpdump over the router's SSH; `interface NAME`: a local mirror port,
    needs CAP_NET_RAW; `hep HOST:PORT`: a HEP v3 listener fed by the SIP
    servers); and the gateway registrar's bindings of `gateway: {platform:
    kamailio|asterisk|freeswitch}`, polled over the router's SSH.

    Phones push their registration changes the moment they happen; whatever
    arrives while nobody listens is lost until the phone reports again. Run
    this beside workers started with --no-collect, so that a worker that
    crashes or restarts does not blind the site (docker-compose.yml does).
    """
    import logging
    import signal
    import threading

    from fleet.evidence.collector import start_site_collectors
    from fleet.config.inventory import Secrets

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")

    inv = _inventory(inventory_path)
    _check_sites(inv, sites)
    secrets = Secrets(inv)
    running = start_site_collectors(inv, secrets, _store(), list(sites))
    if len(running) != len(sites):
        _fail("a collector could not start (see the log above)", EXIT_INFRA)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    err.print(Text(f"collecting for {', '.join(sites)}; Ctrl-C stops"))
    done.wait()
    for c in running:
        c.stop()


@main.command()
@click.option("--inventory", "inventory_path", required=True, envvar="FLEET_INVENTORY", type=click.Path(dir_okay=False))
@click.option("--site", "sites", multiple=True, help="Serve this site's queue (repeatable).")
@click.option("--control", is_flag=True, help="Also serve the fleet.control queue (scheduled rollouts run there).")
@click.option("--concurrency", default=2, show_default=True)
@click.option("--pool", type=click.Choice(["prefork", "threads"]), default="prefork", show_default=True,
              help="threads suits rollouts: their tasks wait on the network, not the CPU.")
@click.option("--no-collect", is_flag=True, help="Do not run the site collectors (syslog, events, capture, HEP, "
              "gateway bindings) in this worker.")
def worker(inventory_path: str, sites: tuple[str, ...], control: bool, concurrency: int, pool: str, no_collect: bool) -> None:
    """Start a Celery worker for the given sites' queues (site.NAME), with their collectors."""
    if not sites and not control:
        _fail("give at least one --site, or --control", EXIT_INPUT)
    os.environ["FLEET_INVENTORY"] = str(Path(inventory_path).resolve())
    os.environ["FLEET_COLLECT_SITES"] = "" if no_collect else ",".join(sites)
    from fleet.worker.app import app, configure
    from fleet.worker.context import context

    # the tasks' own copy, parsed once before the pool starts (and before prefork forks), not by its first tasks
    try:
        inv, _ = context()
    except FileError as exc:
        _fail(f"invalid inventory: {exc}", EXIT_INPUT)
    _check_sites(inv, sites)
    store = _store()
    configure(store.url)
    queues = [f"site.{s}" for s in sites] + (["fleet.control"] if control else [])
    app.worker_main(["worker", "-Q", ",".join(queues), "--concurrency", str(concurrency), "--pool", pool,
                     "-n", f"{'+'.join(list(sites) + (['control'] if control else []))}@{socket.gethostname()}", "--loglevel", "WARNING", "--without-gossip",
                     "--without-mingle"])


if __name__ == "__main__":
    main()
