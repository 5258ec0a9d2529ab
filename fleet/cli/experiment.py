"""`fleet experiment`: run a WAN-outage playbook against its site, list and show past runs."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from soundpoint.values import plural
from fleet.cli.common import (EXIT_FAILED, EXIT_INPUT, EXIT_INFRA, EXIT_INTERRUPTED, fail, brief, open_store, load_checked,
                              exit_now, nothing, seconds, check_worker_files)


@click.group()
def experiment() -> None:
    """WAN-outage experiments: run a playbook, list and show past runs."""


@experiment.command("run")
@click.argument("playbook_path", metavar="PLAYBOOK", type=click.Path(dir_okay=False))
@click.option("--inventory", "inventory_path", required=True, envvar="FLEET_INVENTORY", type=click.Path(dir_okay=False),
              help="Inventory file (default: FLEET_INVENTORY, or `inventory` in fleet.toml).")
@click.option("--report-dir", default="reports", show_default=True, type=click.Path(file_okay=False),
              help="Where report.json, junit.xml and report.html go (in a subdirectory per run).")
@click.option("--json", "as_json", is_flag=True, help="Print report.json on stdout instead of progress lines.")
@click.option("--task-timeout", default=60.0, show_default=True, help="Seconds to wait for a worker to answer a task.")
def experiment_run(playbook_path: str, inventory_path: str, report_dir: str, as_json: bool, task_timeout: float) -> None:
    """Run an experiment PLAYBOOK against its site; exit 0 only if every expectation held."""
    from fleet.experiment import playbook as pb_mod

    pb, inv = load_checked(pb_mod.load, pb_mod.check_against, playbook_path, inventory_path)
    # everything is validated: only now the heavy imports (Celery, the runner)
    from fleet.experiment import report
    from fleet.worker.app import configure
    from fleet.experiment.runner import ExperimentRunner
    from fleet.experiment.signals import SignalGuard
    from fleet.state import record
    from fleet.state.store import LeaseHeld

    store = open_store()
    check_worker_files(store, inv, [pb.site])
    configure(store.url)
    out = Console(stderr=as_json)
    spinner = out.status("running", spinner="dots") if not as_json else nothing()
    runner = ExperimentRunner(pb, inv, store, say=lambda s: out.print(Text.assemble((time.strftime('%H:%M:%S'), "dim"), " ", str(s))),
                              task_timeout=task_timeout,
                              progress=(lambda s: spinner.update(escape(s))) if not as_json else (lambda s: None))
    # One guard from the first step to the written report: the first stop signal restores the WAN and ends the
    # run; no later one can skip the restore or the report.
    with SignalGuard() as guard:
        try:
            with spinner:
                result = runner.run(guard)
        except LeaseHeld as exc:
            fail(brief(exc), EXIT_INFRA)
        directory = Path(report_dir) / result.id
        doc = report.write(result, directory, record.last_outages(store, result.site))
        store.finish_experiment(result.id, result.passed, str(directory.resolve()), interrupted=bool(result.interrupted))
    if as_json:
        click.echo(json.dumps(doc, indent=1))
    elif result.interrupted:
        print_interrupted(out, result, doc, len(pb.steps))
        out.print(Text(f"report: {(directory / 'report.html').resolve()}"))
    else:
        print_verdict(out, result, doc)
        out.print(Text(f"report: {(directory / 'report.html').resolve()}"))
    exit_now(EXIT_INTERRUPTED if result.interrupted else 0 if result.passed else EXIT_FAILED)


@experiment.command("report")
@click.argument("report_dir", metavar="REPORT_DIR", type=click.Path(file_okay=False))
@click.option("--ground-truth", "truth_path", type=click.Path(dir_okay=False),
              help="A lab's ground truth (the JSON `hil status --json` prints): shown beside each phone's measurement.")
def experiment_report(report_dir: str, truth_path: str | None) -> None:
    """Write a run's report pages again from its REPORT_DIR/report.json, with a lab's ground truth if given."""
    from fleet.experiment import report

    try:
        doc = report.rewrite(Path(report_dir), Path(truth_path) if truth_path else None)
    except ValueError as exc:        # ReportError, GroundTruthError: they name the file and the field
        fail(brief(exc), EXIT_INPUT)
    gt = doc.get("ground_truth") or {}
    for p in gt.get("phones", []):
        said = "; ".join(f"{m} {seconds(p[m]['measured_s'])} s, truth {seconds(p[m]['truth_s'])} s"
                         + (f" ({report.signed(p[m]['difference_s'])} s)" if p[m]["difference_s"] is not None else "")
                         for m in ("failover", "recovery")) if p["known"] else "not in the ground truth"
        click.echo(f"{p['mac']}: {said}")
    click.echo(f"report: {(Path(report_dir) / 'report.html').resolve()}")


def print_verdict(out: Console, result, doc: dict) -> None:
    """PASSED or FAILED with the phones' numbers, then each failed phone's reasons and each error."""
    s = doc["summary"]
    out.print(f"[bold {'green' if result.passed else 'red'}]{'PASSED' if result.passed else 'FAILED'}[/]: "
              f"{s['phones_passed']}/{plural(s['phones'], 'phone')}; failover p50/p95/max "
              f"{seconds(s['failover_s']['p50'])}/{seconds(s['failover_s']['p95'])}/{seconds(s['failover_s']['max'])} s; recovery "
              f"{seconds(s['recovery_s']['p50'])}/{seconds(s['recovery_s']['p95'])}/{seconds(s['recovery_s']['max'])} s")
    for p in doc["phones"]:
        if not p["passed"] and p["reasons"]:
            out.print(Text.assemble("  ", (str(p["mac"]), "red"), ": ", "; ".join(map(str, p["reasons"]))))
        undetermined = [f"{m}: {said}" for m, said in (p.get("judgement") or {}).items() if said.startswith("undetermined")]
        if p["passed"] and undetermined:   # passed, but the evidence could only bound the moment: say so
            out.print(Text.assemble("  ", (str(p["mac"]), "yellow"), ": ", "; ".join(undetermined)))
    for e in doc["errors"]:
        out.print(Text(f"  {e}", style="red"))


def print_interrupted(out: Console, result, doc: dict, total: int) -> None:
    """A stopped run is no verdict on the phones: say it was interrupted, how far it got and what the WAN is now."""
    out.print(Text.assemble(("INTERRUPTED", "bold yellow"), f" ({result.interrupted}) after {len(result.steps)} of "
                            f"{plural(total, 'step')}; no verdict on the phones"))
    for o in result.outages:
        out.print(Text(f"  outage {o['id']}: {o.get('confirmed', '')}"))
    for e in doc["errors"]:
        if not str(e).startswith("interrupted ("):   # the line above says it already
            out.print(Text(f"  {e}", style="red"))


@experiment.command("list")
@click.option("--json", "as_json", is_flag=True)
def experiment_list(as_json: bool) -> None:
    """Past and running experiments, newest first (read back from Redis)."""
    rows = open_store().experiments()
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
    store = open_store()
    meta = store.experiment(exp_id)
    if not meta:
        fail(f"no experiment {exp_id}", EXIT_INPUT)
    events = store.events(exp_id)
    if as_json:
        click.echo(json.dumps({"experiment": meta, "events": events}, indent=1))
        return
    click.echo(f"{meta['id']} {meta['playbook']} site={meta['site']} status={meta['status']} report={meta.get('report_dir', '-')}")
    for e in events:
        click.echo(f"  {time.strftime('%H:%M:%S', time.localtime(e['t']))} {e['kind']:<15} "
                   + " ".join(f"{k}={v}" for k, v in e.items() if k not in ('kind', 't', 'mono'))[:200])
