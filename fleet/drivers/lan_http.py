"""HTTP to devices on the site's LAN (phones' REST, state polling and web UI) with nothing taken from the environment.

requests by default reads the environment on every request (`trust_env`): HTTP_PROXY/ALL_PROXY would send a
phone's request, with its admin login (Basic, as UC Software documents it), to whatever proxy the operator's
shell names for the internet; a ~/.netrc would add credentials to a request that carries none on purpose (a web
UI read that waits to be challenged). Phones are reached directly on the LAN, never through a proxy. It is also
cheaper: the environment's proxies, no_proxy and netrc are looked up per request (bench/rollout.py: some 0.2 ms of
CPU a request, a rollout makes four per phone).
"""
from __future__ import annotations

import requests


def lan_session() -> requests.Session:
    """A session that ignores proxies, no_proxy and ~/.netrc from the environment (the phones have no TLS)."""
    session = requests.Session()
    session.trust_env = False
    return session


def lan_request(method: str, url: str, **kwargs) -> requests.Response:
    """requests.request through a lan_session (a streamed answer stays readable after the session closes, as with
    requests.request itself)."""
    with lan_session() as session:
        return session.request(method, url, **kwargs)
