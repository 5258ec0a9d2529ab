"""HTTP to devices (phones' REST, state polling and web UI; the boot server) with nothing taken from the environment.

requests by default reads the environment on every request (`trust_env`): HTTP_PROXY/ALL_PROXY would send a
phone's request, with its admin login (Basic, as UC Software documents it), to whatever proxy the operator's
shell names for the internet; a ~/.netrc would add credentials to a request that carries none on purpose (a web
UI read that waits to be challenged). Phones are reached directly on the LAN, never through a proxy. It is also
cheaper: requests otherwise looks the environment's proxies, no_proxy and netrc up for every request.

Two ways in: `lan_session`/`lan_request` (requests, for state polling and the web UI, rare in a rollout) and
`lan_pool` (urllib3 itself, for the phones' REST and the boot-server publisher, the requests every push makes:
about half the CPU per request, bench/http_client.py).
"""
from __future__ import annotations

import os

import requests
import urllib3

# No answer from a device is followed to another address, and no source shows a phone or a boot server redirecting.
# requests reads a redirect's whole body (`resp.content`, unbounded and untimed) before it follows it, and even
# when told not to follow (Session.send works out the next request all the same): the sessions here therefore take
# the Location out of a 3xx answer as it arrives (`_not_a_redirect`), and the answer goes to the caller's own
# status handling like any other.
NO_REDIRECTS = False


def _not_a_redirect(resp: requests.Response, *args, **kwargs) -> requests.Response:
    """A response hook: a 3xx answer loses its Location (kept as X-Fleet-Location), so requests neither follows it
    nor reads its body; runs before Session.send looks at redirects."""
    if "location" in resp.headers and 300 <= resp.status_code < 400:
        resp.headers["X-Fleet-Location"] = resp.headers.pop("location")[:200]
    return resp


def lan_session() -> requests.Session:
    """A session that ignores proxies, no_proxy and ~/.netrc from the environment (the phones have no TLS), never
    reads or follows a redirect and asks for no compression."""
    session = requests.Session()
    session.trust_env = False
    session.hooks["response"].append(_not_a_redirect)
    # no compression (requests asks for gzip by default): read_answer refuses a compressed answer, whose decoding
    # could hold a read past its deadline
    session.headers["Accept-Encoding"] = "identity"
    return session


def lan_request(method: str, url: str, **kwargs) -> requests.Response:
    """requests.request through a lan_session, redirects not followed (NO_REDIRECTS); a streamed answer stays
    readable after the session closes, as with requests.request itself."""
    kwargs.setdefault("allow_redirects", NO_REDIRECTS)
    with lan_session() as session:
        return session.request(method, url, **kwargs)


USER_AGENT = "soundpoint-fleet"     # what fleet's urllib3 clients (lan_pool's users) say they are


def ca_bundle() -> str:
    """The CA certificates an https device is checked against: the bundle the environment names for requests
    (REQUESTS_CA_BUNDLE, then CURL_CA_BUNDLE, as requests itself reads them), else certifi's, requests' default."""
    named = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if named:
        return named
    import certifi     # requests' own dependency

    return certifi.where()


def lan_pool(url: str, timeout: float) -> urllib3.HTTPConnectionPool:
    """A keep-alive connection to the server of `url`, for a client that sends many small requests to one server
    (the boot-server publisher, a phone's REST client): urllib3 directly, half the CPU per request of a requests Session
    (bench/http_client.py). urllib3 reads no proxy or ~/.netrc from the environment, follows a redirect only when
    told to (fleet never does) and then reads no body of it; https is verified (`ca_bundle`)."""
    kwargs: dict = {"maxsize": 1, "retries": False, "timeout": urllib3.Timeout(connect=timeout, read=timeout)}
    if url.lower().startswith("https:"):
        bundle = ca_bundle()
        kwargs.update(cert_reqs="CERT_REQUIRED",
                      **({"ca_cert_dir": bundle} if os.path.isdir(bundle) else {"ca_certs": bundle}))
    return urllib3.connection_from_url(url, **kwargs)
