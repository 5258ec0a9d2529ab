"""List the conformance corpus: `python -m soundpoint.conformance [list|unconfirmed|summary] [--json]`."""
from __future__ import annotations

import json
import sys
from collections import Counter

from . import CorpusError, entries


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "--json"]
    as_json = "--json" in argv
    what = args[0] if args else "list"
    if what not in ("list", "unconfirmed", "summary") or len(args) > 1:
        print("usage: python -m soundpoint.conformance [list|unconfirmed|summary] [--json]", file=sys.stderr)
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
        if as_json:
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
