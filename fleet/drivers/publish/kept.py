"""Boot-server publishers kept by a worker thread from one push to its next: one connection and one Digest nonce
for a site's pushes, not a fresh pair each.

Every push of a rollout writes to its site's boot server; a fresh publisher per push cost a TCP connection and a
401 challenge (the first write of each push went out unanswered) at the worker and at the server: two of some ten
round trips to the boot server on the path from a phone's dispatch to its reboot. A thread now lends itself the
publisher its previous push used, when that push ended well and not more than IDLE_S ago.

What keeps a lent publisher safe:
- only a push that ended without an error gives it back; one that failed half-way (a body half read, a timeout)
  closes it, so no connection in an unknown state serves another push;
- one idle longer than IDLE_S is closed, not used (any such is closed at the thread's next lend): servers close idle
  keep-alive connections (Apache and lighttpd after 5 s); urllib3 itself checks a kept connection was not dropped
  before it reuses it, and where the server closed it in between, the lent publisher's first request goes once
  more on a fresh connection (http_put.py: every request it sends is idempotent);
- one thread's publishers are its own (a publisher holds a single connection and is not shared between threads);
- a stale nonce is the publisher's own business: the server challenges again and the write answers afresh
  (http_put.py);
- only HTTP(S) publishers are kept; FTP and SFTP sessions, and the local directory, open and close per use.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urlsplit

from fleet.config.inventory import Credentials
from fleet.drivers.publish import Publisher, open_publisher

IDLE_S = 2.0      # a kept publisher idle longer is closed, not lent (under the shortest common keep-alive timeout)
MOST = 4          # publishers one thread keeps (a worker serving several sites), the least recently used closed
KEPT_SCHEMES = ("http", "https")

_local = threading.local()


def _kept() -> dict[tuple[str, Credentials, float], tuple[Publisher, float]]:
    kept = getattr(_local, "kept", None)
    if kept is None:
        kept = _local.kept = {}
    return kept


@contextmanager
def lent(url: str, credentials: Credentials, timeout: float = 10.0) -> Iterator[Publisher]:
    """The boot server's publisher for one push: this thread's kept one when it is fresh enough, else a new one.
    Given back when the block ends well, closed when it raises."""
    if urlsplit(url).scheme not in KEPT_SCHEMES:
        pub = open_publisher(url, credentials, timeout)
        try:
            yield pub
        finally:
            pub.close()
        return
    kept = _kept()
    now = time.monotonic()
    for stale in [k for k, (_, at) in kept.items() if now - at > IDLE_S]:
        kept.pop(stale)[0].close()       # every lend: no socket left to idle on in CLOSE_WAIT
    found = kept.pop((url, credentials, timeout), None)
    if found is not None:
        pub = found[0]
        # its connection may have been closed by the server a moment ago: the first request may go once more
        pub.retry_first_on_closed = True    # type: ignore[attr-defined]  (only HTTP(S) publishers are kept)
    else:
        pub = open_publisher(url, credentials, timeout)
    try:
        yield pub
    except BaseException:
        pub.close()
        raise
    kept[(url, credentials, timeout)] = (pub, time.monotonic())
    while len(kept) > MOST:
        oldest = min(kept, key=lambda k: kept[k][1])
        kept.pop(oldest)[0].close()


def close_all() -> None:
    """Close this thread's kept publishers (a test, or a thread about to end)."""
    kept = _kept()
    while kept:
        kept.popitem()[1][0].close()
