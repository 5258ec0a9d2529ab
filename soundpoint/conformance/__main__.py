"""List the conformance corpus: `python -m soundpoint.conformance [list|unconfirmed|summary] [--json|--markdown]`.

`summary --markdown` prints the table README.md holds between its corpus-summary markers (a test keeps the
two equal), so what the README says is confirmed per family is what the corpus says."""
from __future__ import annotations

import json
import sys
from collections import Counter

from . import CorpusError, entries


def main(argv: list[str]) -> int:
    args = [a for a in argv if a not in ("--json", "--markdown")]
    as_json, as_markdown = "--json" in argv, "--markdown" in argv
    what = args[0] if args else "list"
    if what not in ("list", "unconfirmed", "summary") or len(args) > 1:
        print("usage: python -m soundpoint.conformance [list|unconfirmed|summary] [--json|--markdown]", file=sys.stderr)
        return 2
    try:
        all_entries = entries()
    except CorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    chosen = [e for e in all_entries if what != "unconfirmed" or e.status != "confirmed"]
    if what == "summary":
        counts = Counter((fam, e.status) for e in all_entries for fam in (e.families or ("(devices)",)))
        rows = sorted({f for f, _ in counts})
        if as_markdown:
            print(markdown_summary(all_entries))
        elif as_json:
            print(json.dumps({f: {s: counts[(f, s)] for s in ("confirmed", "unconfirmed", "disputed")} for f in rows}))
        else:
            print(f"{len(all_entries)} entries")
            for f in rows:
                print(f"{f:12} confirmed {counts[(f, 'confirmed')]:3}  unconfirmed {counts[(f, 'unconfirmed')]:3}"
                      f"  disputed {counts[(f, 'disputed')]:3}")
        return 0
    if as_json:
        print(json.dumps([{"id": e.id, "area": e.area, "families": list(e.families), "versions": e.versions,
                           "status": e.status, "sources": [s.ref for s in e.sources], "note": e.note}
                          for e in chosen], indent=1))
        return 0
    for e in chosen:
        fams = ",".join(e.families) or "-"
        print(f"{e.status:11} {e.area:12} {e.id:48} {fams:28} {e.versions}")
        if what == "unconfirmed":
            print(f"{'':12}{e.note}")
    return 0


def markdown_summary(all_entries) -> str:
    """Per family: how many answers a source confirms, and which ones none does (by area), as README shows it."""
    fams = sorted({f for e in all_entries for f in e.families}) + ["(routers, switches, gateways, DNS)"]
    lines = [f"{len(all_entries)} entries.", "",
             "| family | confirmed | disputed | unconfirmed | not confirmed by any source (area: entries) |",
             "| --- | --- | --- | --- | --- |"]
    for fam in fams:
        mine = [e for e in all_entries if (fam in e.families) or (fam.startswith("(") and not e.families)]
        open_ = [e for e in mine if e.status != "confirmed"]
        by_area: dict[str, list[str]] = {}
        for e in open_:
            by_area.setdefault(e.area, []).append(e.id + (" (disputed)" if e.status == "disputed" else ""))
        what = "; ".join(f"{a}: {', '.join(ids)}" for a, ids in sorted(by_area.items())) or "-"
        count = Counter(e.status for e in mine)
        lines.append(f"| {fam} | {count['confirmed']} | {count['disputed']} | {count['unconfirmed']} | {what} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
