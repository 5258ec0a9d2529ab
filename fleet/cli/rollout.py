"""`fleet rollout`: plan (dry run), run, status, resume, abort and list configuration rollouts."""
from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from soundpoint.values import plural
from fleet.cli.common import (EXIT_FAILED, EXIT_INPUT, EXIT_INFRA, EXIT_INTERRUPTED, err, fail, brief, open_store,
                              optional_store, load_checked, exit_now, check_worker_files)


@click.group()
def rollout() -> None:
    """Configuration rollouts: plan (dry run), run, status, resume, abort."""


def _load_rollout(playbook_path: str, inventory_path: str):
    """Playbook, inventory, secrets and every cross-check between them, before anything is touched."""
    from fleet.rollout import plan, playbook

    return load_checked(playbook.load, plan.check_against, playbook_path, inventory_path)


def _plan(pb, inv, rid: str, applied: dict | None, playbook_path: str, limit: frozenset[str] | None = None):
    from fleet.rollout.plan import PlanError, plan

    try:
        return plan(inv, pb, rid, limits=inv.registrar_limits, limit=limit, applied=applied or {})
    except PlanError as exc:
        fail(f"{playbook_path}: {exc}" if "--limit" not in str(exc) else str(exc), EXIT_INPUT)


def _limit(inv, items: tuple[str, ...]) -> frozenset[str] | None:
    """`--limit` as a set of MACs, or None without one; an item naming nothing is bad input (exit 2)."""
    if not items:
        return None
    from fleet.rollout.plan import PlanError, limit_macs

    try:
        return limit_macs(inv, list(items))
    except PlanError as exc:
        fail(str(exc), EXIT_INPUT)


def _print_plan(p, console: Console) -> None:
    console.print(f"[bold]{plural(len(p.phones), 'phone')} in {plural(len(p.waves), 'wave')}[/bold]; max unavailable per site "
                  + ", ".join(f"{s}: {n}" for s, n in p.max_unavailable.items()) + f"; failure budget {p.budget_total}")
    for i, wave in enumerate(p.waves):
        console.print(Text(f"  wave {i}: {plural(len(wave), 'phone')} ({', '.join(wave[:6])}{', ...' if len(wave) > 6 else ''})"))
    changed = [ph for ph in p.phones if ph.diff]
    console.print(f"[bold]parameter changes[/bold] ({len(changed)} phones change, {len(p.phones) - len(changed)} unchanged)")
    against = sorted({ph.diff_against for ph in p.phones})
    console.print(Text(f"  (old values: what each phone applies now, from {' / '.join(against)}; "
                       "None: no file sets it, the firmware default applies)"))
    for ph in changed[:50]:
        for name, (old, new) in ph.diff.items():
            verbatim = " (uncatalogued: passed through verbatim, unchecked)" if name in ph.verbatim else ""
            by = ph.set_by.get(name)
            origin = f" (kept from rollout {by[0]})" if by and by[0] != p.rollout else ""
            console.print(Text(f"  {ph.mac} {name}: {old!s} -> {new!s}{verbatim}{origin}"))
    if len(changed) > 50:
        console.print(f"  ... and {len(changed) - 50} more phones")
    undoing = [ph for ph in p.phones if ph.undoes]
    if undoing:
        console.print(f"[bold yellow]changes values earlier rollouts set[/bold yellow] ({len(undoing)} phones)")
        for ph in undoing[:50]:
            for line in ph.undoes:
                console.print(Text(f"  {ph.mac} {line}", style="yellow"))
    kept = [ph for ph in p.phones if ph.kept]
    if kept:
        console.print(f"[bold]kept from earlier rollouts over the inventory's value[/bold] ({len(kept)} phones)")
        for ph in kept[:50]:
            for line in ph.kept:
                console.print(Text(f"  {ph.mac} {line}"))
    warned = [ph for ph in p.phones if ph.warnings]
    if warned:
        console.print(f"[bold yellow]failover warnings[/bold yellow] ({plural(len(warned), 'phone')}): "
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
@click.option("--dry-run", is_flag=True, help="Print waves, per-phone diff against what each phone applies now, the "
                                             "values it changes that earlier rollouts set, and the refresh-load check; "
                                             "touch nothing.")
@click.option("--limit", "limit", multiple=True, metavar="MAC|SITE|MODEL",
              help="Only these of the playbook's targets: MACs, sites or models; repeat it or give a comma list.")
@click.option("--json", "as_json", is_flag=True)
@click.option("-v", "--verbose", is_flag=True, help="A line for every step of every phone (push, reboot, verify...).")
@click.option("--force", is_flag=True, help="Roll out even when the site's workers run with another inventory or secrets file.")
def rollout_run(playbook_path: str, inventory_path: str, dry_run: bool, limit: tuple[str, ...], as_json: bool,
                verbose: bool, force: bool) -> None:
    """Roll PLAYBOOK out: canaries, then waves; halts when the failure budget is spent (exit 1)."""
    pb, inv = _load_rollout(playbook_path, inventory_path)   # everything validated before the heavy imports
    only = _limit(inv, limit)
    from fleet.rollout.driver import new_id

    rid = new_id(pb.name)
    if dry_run:
        now = None
        store = optional_store()
        if store is not None:
            from fleet.rollout import applied
            from fleet.state.store import RolloutStore

            try:
                now = applied.read(RolloutStore(store), [p.mac for s in inv.sites for p in s.phones])
            except Exception:  # a dry run works without Redis too; it then diffs against the inventory
                now = None
        p = _plan(pb, inv, rid, now, playbook_path, only)
        from fleet.rollout.plan import rediff
        from fleet.sites.files import describe, survey   # read only: each phone's master and override files

        found = survey(inv, p.phones, with_values=True)
        rediff(p, {mac: r["applies"] for mac, r in found.items() if "applies" in r})
        for r in found.values():
            r.pop("applies", None)     # in the diff now; the site's whole configuration is not the plan's business
        if as_json:
            click.echo(json.dumps(p.to_dict(refs=False) | {"dry_run": True, "site_files": found,
                                                           "limit": sorted(only) if only else None}, indent=1))
        else:
            _print_plan(p, Console())
            Console().print("[bold]site files[/bold]")
            for line in describe(found):
                Console().print(Text("  " + line))
        sys.exit(EXIT_INPUT if p.overloaded and not pb.strategy.allow_overload else 0)
    store = open_store()
    from fleet.worker.app import configure
    from fleet.rollout.driver import Overloaded, create
    from fleet.rollout.plan import PlanError, targets

    check_worker_files(store, inv, [site.name for site, _ in targets(inv, pb)], refuse=True, force=force)

    configure(store.url)
    try:
        rid, pb, inv, _ = create(playbook_path, inventory_path, store, rid, limit=list(limit) or None, loaded=(pb, inv))
    except PlanError as exc:
        fail(f"{playbook_path}: {exc}" if "--limit" not in str(exc) else str(exc), EXIT_INPUT)
    except Overloaded as exc:
        fail(f"refusing: the change would overload a registrar ({exc}); set strategy.allow_overload to override", EXIT_INPUT)
    _drive(rid, pb, inv, store, as_json, verbose)


def _drive(rid: str, pb, inv, store, as_json: bool, verbose: bool = False) -> None:
    """Drive the rollout in this process: a bar per site, a line per phone as it settles (every step with
    `verbose`), the summary in words; exit 0 done, 1 failed/halted/aborted, 130 interrupted (README table)."""
    from rich.control import strip_control_codes
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fleet.experiment.signals import SignalGuard
    from fleet.rollout.driver import RolloutDriver, experiment_drill
    from fleet.rollout.progress import EventTail, PhoneLines, summary
    from fleet.state.store import LeaseHeld, RolloutStore

    console = Console(stderr=as_json)
    console.print(Text(f"rollout {rid}"))
    bars: dict = {}
    rs = RolloutStore(store)
    lines = PhoneLines(rs.get(rid)["plan"], pb.verify.registered_to, verbose)
    tail = EventTail(rs, rid) if verbose else None
    # Ctrl-C, SIGTERM and SIGHUP all stop the run the same way: the driver records it halted (resumable) and this
    # command exits 130; a second signal while the outcome is written is only noted (fleet.experiment.signals)
    with SignalGuard(), Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(), console=console,
                                 disable=as_json) as progress:
        def say(line: str) -> None:
            if not progress.console.is_terminal:
                # a log or a pipe: the line as it is, one line each (rich laid each out, wrapped at 80 columns:
                # 8 % of the controller process's CPU in a 1,000-phone run)
                out = progress.console.file
                out.write(strip_control_codes(line) + "\n")     # a device's reason text is not terminal control
                out.flush()      # as rich did: `tail -f` and a log's order see each line when it is said
                return
            progress.console.print(Text(line, style="red" if line.startswith("failed:") else
                                        "yellow" if line.startswith("deferred:") else ""))

        def show(by_site: dict) -> None:
            for site, c in by_site.items():
                if site not in bars:
                    bars[site] = progress.add_task(f"site {site}", total=c["total"], failed=0)
                progress.update(bars[site], completed=c["settled"], failed=c["failed"])

        def watch(records) -> None:
            try:
                steps = lines.steps(tail.new()) if tail is not None else []
            except Exception:   # the step lines are best effort: a read that fails must not stop the rollout
                steps = []
            for line in steps + lines.states(records):
                say(line)

        driver = RolloutDriver(rid, inv, store, pb, say=lambda s: say(str(s)), progress=show,
                               drill=experiment_drill(inv, store), watch=watch)
        try:
            outcome = driver.run()
        except LeaseHeld as exc:
            err.print(Text(brief(exc), style="red"))
            exit_now(EXIT_INFRA)
        except KeyboardInterrupt:      # before the driver took the lease: nothing was driven
            err.print(Text(f"interrupted; `fleet rollout resume {rid}` continues"))
            exit_now(EXIT_INTERRUPTED)
        try:    # what settled in the last pass, and anything the passes did not show
            watch(rs.phones(rid, list(driver.site_of)))
        except Exception:   # best effort: the outcome below is what counts
            pass
    summary_doc = {"id": rid, "status": outcome.status, "reason": outcome.reason, "counts": outcome.counts}
    if as_json:
        click.echo(json.dumps(summary_doc | ({"interrupted": outcome.interrupted} if outcome.interrupted else {})))
    else:
        colour = "green" if outcome.status == "done" else "red"
        console.print(Text.assemble((str(outcome.status), f"bold {colour}"),
                                    f": {outcome.reason}" if outcome.reason else "", f"; {summary(outcome.counts)}"))
    if outcome.interrupted:
        exit_now(EXIT_INTERRUPTED)
    failed = sum(outcome.counts.get(k, 0) for k in ("failed", "rolled_back", "rollback_failed"))
    exit_now(0 if outcome.status == "done" and not failed else EXIT_FAILED)


@rollout.command("revert")
@click.argument("rid", metavar="ID")
@click.option("--force", is_flag=True, help="Revert even phones a later rollout changed since (that is undone too).")
@click.option("--json", "as_json", is_flag=True)
def rollout_revert(rid: str, force: bool, as_json: bool) -> None:
    """Roll a finished rollout back from its backups (kept with `keep_backups: true`), as a rollout of its own:
    its waves, one phone at a time per site as it did, each phone verified after its reboot."""
    from fleet.worker.app import configure
    from fleet.rollout.driver import new_id
    from fleet.rollout.revert import RevertRefused, meta_for, missing_backups, plan_revert, revert_playbook
    from fleet.state.store import RolloutStore

    store = open_store()     # a rollout to revert is existing state: no private Redis
    rs = RolloutStore(store)
    meta = rs.get(rid)
    new_rid = new_id(f"revert-{meta.get('playbook') or 'rollout'}")
    try:
        p, notes = plan_revert(rs, rid, new_rid, force)
    except RevertRefused as exc:
        fail(f"refusing to revert: {exc}", EXIT_INPUT)
    pb, inv = _load_rollout(meta["playbook_path"], meta["inventory_path"])
    missing = missing_backups(inv, rs, rid, p)
    if missing:
        fail(f"refusing to revert: rollout {rid}'s backups are gone: " + "; ".join(missing[:5])
             + (f"; and {len(missing) - 5} more" if len(missing) > 5 else ""), EXIT_INPUT)
    pb = revert_playbook(pb, p.to_dict())
    rs.create(new_rid, pb.name, p.to_dict(), meta_for(rid, meta, pb))
    rs.log(rid, "reverted_by", rollout=new_rid, phones=len(p.phones))
    console = Console(stderr=as_json)
    console.print(Text(f"reverting {rid}: {len(p.phones)} phones back to what they ran before it"))
    for note in notes[:50]:
        console.print(Text(f"  {note}", style="yellow"))
    configure(store.url)
    _drive(new_rid, pb, inv, store, as_json)


@rollout.command("status")
@click.argument("rid", metavar="ID")
@click.option("--json", "as_json", is_flag=True)
def rollout_status(rid: str, as_json: bool) -> None:
    """Counts and per-phone states of a rollout; a failed or deferred phone's reason is always in the table."""
    from fleet.rollout.policy import why_deferred
    from fleet.rollout.progress import counts_of, summary, why
    from fleet.state.store import RolloutStore

    rs = RolloutStore(open_store())
    meta = rs.get(rid)
    if not meta:
        fail(f"no rollout {rid}", EXIT_INPUT)
    macs = [p["mac"] for p in meta["plan"]["phones"]]
    phones = rs.phones(rid, macs, full=True)
    counts = counts_of(phones)
    counts.pop("total")
    if as_json:
        rows = {m: {k: v for k, v in st.items() if not k.startswith("backed_up:") and k != "plan"}
                for m, st in phones.items()}
        for row in rows.values():
            if row.get("state") == "deferred":
                row["waiting_for"] = why_deferred(row.get("deferred_reason"))
        click.echo(json.dumps({"id": rid, "status": meta.get("status"), "reason": meta.get("reason", ""), "counts": counts,
                               "phones": rows}, indent=1))
        return
    console = Console()
    console.print(Text.assemble(f"{rid}: ", (str(meta.get("status")), "bold"),
                                f": {meta['reason']}" if meta.get("reason") else "",
                                f"; {summary(counts_of(phones))}"))
    t = Table("MAC", "site", "wave", "state", "error / why it waits")
    t.columns[0].no_wrap = True
    site_of = {p["mac"]: p["site"] for p in meta["plan"]["phones"]}
    for m, st in phones.items():
        t.add_row(*(escape(str(x)) for x in (m, site_of[m], st.get("wave", ""), st.get("state", ""), why(st)[:300])))
    console.print(t)


@rollout.command("resume")
@click.argument("rid", metavar="ID")
@click.option("--budget", type=int, help="Raise the failure budget (after a halt because it was spent).")
@click.option("--json", "as_json", is_flag=True)
@click.option("-v", "--verbose", is_flag=True, help="A line for every step of every phone (push, reboot, verify...).")
@click.option("--force", is_flag=True, help="Resume even when the site's workers run with another inventory or secrets file.")
def rollout_resume(rid: str, budget: int | None, as_json: bool, verbose: bool, force: bool) -> None:
    """Continue a halted or interrupted rollout; verified phones are not touched again."""
    from fleet.worker.app import configure
    from fleet.state.store import RolloutStore

    store = open_store()
    configure(store.url)
    rs = RolloutStore(store)
    meta = rs.get(rid)
    if not meta:
        fail(f"no rollout {rid}", EXIT_INPUT)
    if meta.get("status") == "done":
        err.print(Text(f"rollout {rid} is already done"))
        sys.exit(0)
    pb, inv = _load_rollout(meta["playbook_path"], meta["inventory_path"])
    if meta.get("revert_of"):      # a revert runs its rollout's playbook without drill, verifying what it restores
        from fleet.rollout.revert import revert_playbook

        pb = revert_playbook(pb, meta["plan"])
    check_worker_files(store, inv, {p["site"] for p in meta["plan"]["phones"]}, refuse=True, force=force)
    if budget is not None:
        rs.set(rid, budget_override=budget)
    rs.set(rid, abort="0")
    _drive(rid, pb, inv, store, as_json, verbose)


@rollout.command("abort")
@click.argument("rid", metavar="ID")
@click.option("--wait", type=float, default=60.0, show_default=True,
              help="Seconds to wait for the sites' workers to remove the backups of a rollout no run is driving.")
def rollout_abort(rid: str, wait: float) -> None:
    """Abort a rollout. A running one stops after its in-flight phones settle and removes its backups itself; a
    halted (or never started) one is marked aborted now and its backups are removed from the boot servers, unless
    the playbook keeps them (`keep_backups: true`)."""
    import time

    from fleet.rollout import backups, playbook
    from fleet.rollout.policy import IN_FLIGHT
    from fleet.state.store import RolloutStore

    store = open_store()
    rs = RolloutStore(store)
    meta = rs.get(rid)
    if not meta:
        fail(f"no rollout {rid}", EXIT_INPUT)
    status = meta.get("status")
    if status == "done":
        fail(f"rollout {rid} is done: there is nothing to abort", EXIT_INPUT)
    sites = sorted({p["site"] for p in meta["plan"]["phones"]})
    if status == "running" and any(store.lease_info(s)[0] == meta.get("driver") for s in sites):
        rs.set(rid, abort="1")
        click.echo(f"abort requested for {rid}: its run stops once the phones in flight settle, then has the backups "
                   "removed")
        return
    rs.set(rid, abort="1", status="aborted", finished=time.time(),
           reason=f"aborted by request (it was {status}{': ' + meta['reason'] if meta.get('reason') else ''})"[:300])
    rs.log(rid, "aborted", was=status)
    busy = [m for m, st in rs.phones(rid, [p["mac"] for p in meta["plan"]["phones"]]).items()
            if st.get("state") in IN_FLIGHT]
    try:
        keep = playbook.load(meta["playbook_path"]).keep_backups
    except Exception as exc:    # the playbook moved or changed: its backups are removed (they may hold passwords)
        err.print(Text(f"playbook {meta.get('playbook_path')} not read ({brief(exc)}): its backups are removed"))
        keep = False
    if keep:
        click.echo(f"{rid} aborted; backups kept on the boot server (keep_backups: true in the playbook)")
        return
    if busy:
        rs.log(rid, "backups_kept", reason=f"{plural(len(busy), 'phone')} still in flight", phones=busy[:20])
        click.echo(f"{rid} aborted; backups kept: {plural(len(busy), 'phone')} still in flight "
                   f"({', '.join(busy[:5])}{', ...' if len(busy) > 5 else ''}) may need them for a rollback; "
                   f"`fleet rollout abort {rid}` again removes them once they settle")
        return
    from fleet.worker.app import configure

    configure(store.url)
    removal = backups.remove_backups(rs, rid, sites, wait)
    said = f"{rid} aborted; removed {plural(removal.removed, 'backup file')}"
    if removal.kept:
        said += f" (kept those of {plural(removal.kept, 'phone')} whose rollback failed)"
    click.echo(said)
    for site, why in removal.failed.items():
        err.print(Text(f"site {site}: backups not removed: {why}", style="red"))
    if removal.unanswered:
        err.print(Text(f"no word from the worker of {'site' if len(removal.unanswered) == 1 else 'sites'} "
                       f"{', '.join(removal.unanswered)} within {wait:g} s (is `fleet worker --site "
                       f"{removal.unanswered[0]}` running?); its backups may still be on the boot server: "
                       f"`fleet rollout abort {rid}` again asks again", style="red"))
    if removal.failed or removal.unanswered:
        exit_now(EXIT_INFRA)


@rollout.command("list")
@click.option("--json", "as_json", is_flag=True)
def rollout_list(as_json: bool) -> None:
    """Rollouts, newest first."""
    from fleet.state.store import RolloutStore

    rows = RolloutStore(open_store()).list()
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    t = Table("id", "playbook", "status", "reason")
    for r in rows:
        t.add_row(*(escape(str(x)) for x in (r["id"] or "", r["playbook"] or "", r["status"] or "", (r["reason"] or "")[:60])))
    Console().print(t)
