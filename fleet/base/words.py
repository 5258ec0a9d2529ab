"""Lists as an operator reads them: "servers 1 and 2", never a Python repr (counts: soundpoint.values.plural).

Messages were built with f-strings around `len(...)` and lists, which printed "1 sites" and "server(s) [1]";
every rollout message that counts or lists goes through these instead.
"""
from __future__ import annotations

from collections.abc import Iterable


def listed(items: Iterable[object], last: str = "and") -> str:
    """"1", "1 and 2", "1, 2 and 3": items as prose, not as a list's repr."""
    words = [str(i) for i in items]
    if len(words) < 2:
        return "".join(words)
    return f"{', '.join(words[:-1])} {last} {words[-1]}"


def servers(indexes: Iterable[int]) -> str:
    """SIP server indexes as prose: "server 1", "servers 1 and 2"."""
    found = list(indexes)
    return f"{'server' if len(found) == 1 else 'servers'} {listed(found)}"
