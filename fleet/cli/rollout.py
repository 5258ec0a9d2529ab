"""`fleet rollout`: plan (dry run), run, status, resume, abort and list configuration rollouts."""
from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from fleet.cli.common import EXIT_FAILED, EXIT_INPUT, EXIT_INFRA, err, fail, brief, open_store, optional_store, load_checked, exit_now, check_worker_files


@click.group()
def rollout() -> None:
    """Configuration rollouts: plan (dry run), run, status, resume, abort."""


def _load_rollout(playbook_path: str, inventory_path: str):
    """Playbook, inventory, secrets and every cross-check between them, before anything is touched."""
    from fleet.rollout import plan, playbook

    return load_checked(playbook.load, plan.check_against, playbook_path, inventory_path)


def _plan(pb, inv, rid: str, last_pushed: dict | None, playbook_path: str):
    from fleet.rollout.plan import PlanError, plan

    try:
        return plan(inv, pb, rid, last_pushed, inv.registrar_limits)
    except PlanError as exc:
        fail(f"{playbook_path}: {exc}", EXIT_INPUT)


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
@click.option("--force", is_flag=True, help="Roll out even when the site's workers run with another inventory or secrets file.")
def rollout_run(playbook_path: str, inventory_path: str, dry_run: bool, as_json: bool, force: bool) -> None:
    """Roll PLAYBOOK out: canaries, then waves; halts when the failure budget is spent (exit 1)."""
    pb, inv = _load_rollout(playbook_path, inventory_path)   # everything validated before the heavy imports
    from fleet.rollout.driver import new_id

    rid = new_id(pb.name)
    if dry_run:
        last = None
        store = optional_store()
        if store is not None:
            from fleet.state.store import RolloutStore

            try:
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
    store = open_store()
    from fleet.worker.app import configure
    from fleet.rollout.driver import Overloaded, create
    from fleet.rollout.plan import PlanError, targets

    check_worker_files(store, inv, [site.name for site, _ in targets(inv, pb)], refuse=True, force=force)

    configure(store.url)
    try:
        rid, pb, inv, _ = create(playbook_path, inventory_path, store, rid)
    except PlanError as exc:
        fail(f"{playbook_path}: {exc}", EXIT_INPUT)
    except Overloaded as exc:
        fail(f"refusing: the change would overload a registrar ({exc}); set strategy.allow_overload to override", EXIT_INPUT)
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
            err.print(Text(brief(exc), style="red"))
            exit_now(EXIT_INFRA)
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
    exit_now(0 if outcome.status == "done" and not failed else EXIT_FAILED)


@rollout.command("status")
@click.argument("rid", metavar="ID")
@click.option("--json", "as_json", is_flag=True)
def rollout_status(rid: str, as_json: bool) -> None:
    """Counts and per-phone states of a rollout."""
    from fleet.state.store import RolloutStore

    rs = RolloutStore(open_store())
    meta = rs.get(rid)
    if not meta:
        fail(f"no rollout {rid}", EXIT_INPUT)
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
@click.option("--force", is_flag=True, help="Resume even when the site's workers run with another inventory or secrets file.")
def rollout_resume(rid: str, budget: int | None, as_json: bool, force: bool) -> None:
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
    check_worker_files(store, inv, {p["site"] for p in meta["plan"]["phones"]}, refuse=True, force=force)
    if budget is not None:
        rs.set(rid, budget_override=budget)
    rs.set(rid, abort="0")
    _drive(rid, pb, inv, store, as_json)


@rollout.command("abort")
@click.argument("rid", metavar="ID")
def rollout_abort(rid: str) -> None:
    """Stop a running rollout after its in-flight phones settle."""
    from fleet.state.store import RolloutStore

    rs = RolloutStore(open_store())
    if not rs.get(rid):
        fail(f"no rollout {rid}", EXIT_INPUT)
    rs.set(rid, abort="1")
    click.echo(f"abort requested for {rid}")


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
