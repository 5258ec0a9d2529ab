"""Registration timing rules the guides print, shared by the controller's predictions and the virtual phone.

One place for each rule, so the lab cannot drift from what fleet predicts (both once used a private reading).
"""
from __future__ import annotations


def refresh_interval(granted: float, overlap: float) -> float:
    """Seconds from a granted registration to its refresh, as the guides' `expires.overlap` row says: "The number
    of seconds before the expiration time returned by server x at which the phone should try to re-register. The
    phone will try to re-register at half the expiration time returned by the server if the server value is less
    than the configured overlap value" (Administrator's Guide SoundPoint IP / SoundStation IP, SIP 2.2.0, p. A-8,
    voIpProt.server.x.expires.overlap; the same row in the UC Software 4.1.6 guide, reg.x.server.y.expires.overlap).

    "The server value" is the granted expiry itself, not half of it: a grant of 100 s with overlap 60 refreshes
    at 40 s, a grant of 50 s at 25 s. A grant equal to the overlap refreshes at once (0 s): that is what the text
    says; a caller that loops on it keeps its own floor."""
    return granted / 2 if granted < overlap else float(granted - overlap)


def rfc5626_wait(base: float, top: float, failures: int) -> float:
    """The nominal wait after `failures` consecutive failed registrations, RFC 5626 section 4.5, which the UC
    Software guides name for reg.x.server.y.registerRetry.baseTimeOut/maxTimeOut ("The algorithm is defined in
    RFC 5626"): W = min(max-time, base-time x 2^consecutive-failures); the phone then waits a random 50-100 % of
    W. A max below the base is read as the base."""
    return min(max(top, base), base * 2 ** max(failures, 0))
