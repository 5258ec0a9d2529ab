"""`fleet status`: which phone is registered where, right now."""
from __future__ import annotations

import signal
import time
from typing import Iterator

import click

from fleet.cli.common import EXIT_INPUT, EXIT_INTERRUPTED, fail, open_store, settings

WIDE = 10_000    # `--wide`: lines as long as their cells, for a pager or a file (`less -S`, `> status.txt`)


@click.command()
@click.option("--site", help="Only this site.")
@click.option("--live", is_flag=True, help="Refresh every second until Ctrl-C.")
@click.option("--wide", is_flag=True, help="Never wrap a cell: one line per phone and server, however wide.")
@click.option("--json", "as_json", is_flag=True, help="A list of objects: mac, site, model, address, firmware (the phone's "
                                                        "own word, else the inventory's: firmware_from says which), "
                                                        "working_server, servers (registration 1's), lines (other "
                                                        "registrations), observed_at, unobservable, evidence_errors, "
                                                        "evidence_foreign.")
def status(site: str | None, live: bool, wide: bool, as_json: bool) -> None:
    """Which phone is registered where, right now (from the collectors' latest observations).

    Exit codes: 0 shown (Ctrl-C ends --live with 130), 2 no such site, 3 no fleet state (Redis).
    """
    if as_json:
        pieces = _quick_json(site)
        if pieces is not None:
            _write_json(pieces)
            return
    store = open_store()
    if site is not None and not store.has_site(site):
        from soundpoint import values

        known = store.site_names()
        if site not in known:     # (it may have come between the two reads)
            listed = f"; known: {', '.join(known)}" if 0 < len(known) <= 10 else ""
            fail(f"no site {site!r} in the fleet state{values.did_you_mean(site, known)}{listed} (a site is known once "
                 f"its collector, worker or an experiment has registered its phones)", EXIT_INPUT)
    if as_json:
        _write_json(store.status_json_pieces(site))
        return
    # the table: rich and the evidence view only here (`--json` starts without them)
    from rich.console import Console

    from fleet.cli.incident import open_incident_lines
    from fleet.evidence.status import view as status_view

    def current():
        return status_view(*store.phones_and_evidence(site))

    console = Console(width=WIDE) if wide else Console()
    for line in open_incident_lines(store, site):      # a real outage under way: above the table, once
        console.print(line, style="bold red", markup=False, highlight=False, soft_wrap=True)
    if not live:
        console.print(current())
        return
    from rich.live import Live

    # Ctrl-C only sets a flag, seen between refreshes: a KeyboardInterrupt raised wherever the signal lands (in
    # rich's refresh lock, mid-read) could leave Live unable to stop, and the command hung instead of exiting 130
    interrupted: list[bool] = []
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    try:
        with Live(current(), console=console, refresh_per_second=2) as view:
            while not interrupted:
                for _ in range(10):
                    if interrupted:
                        break
                    time.sleep(0.1)
                else:
                    view.update(current())
    finally:
        signal.signal(signal.SIGINT, previous)
    # README's exit codes: interrupted is 130, even where Ctrl-C is the ordinary way to stop
    raise SystemExit(EXIT_INTERRUPTED)


def _quick_json(site: str | None) -> Iterator[bytes] | None:
    """`--json` read without redis-py (fleet.state.store.status_json_quick), or None: no Redis URL, a URL only
    redis-py reads, no such site, or any failure. The ordinary way (open_store, has_site, a Store) then runs from
    the start and ends as it always did, its messages and exit codes unchanged; a Redis that does not answer at
    all is waited for twice."""
    url = settings().redis_url.value
    if not url:
        return None
    from fleet.state.store import status_json_quick

    try:
        return status_json_quick(url, site)
    except Exception:      # resp.Unsupported, OSError, resp.ReplyError, a damaged reply: see the docstring
        return None


def _write_json(pieces: Iterator[bytes]) -> None:
    """Bytes, in pieces: no 36 MB string for 50,000 phones, and no search of it for colour codes to strip."""
    out = click.get_binary_stream("stdout")
    for piece in pieces:
        out.write(piece)
    out.write(b"\n")
    out.flush()
