"""Phone state polling over HTTP, asynchronous: hundreds of phones in flight from one task.

UC Software phones answer REST `lineInfo` (RegistrationStatus, ProxyAddress; read by
drivers.control.rest.parse_line_info, every corpus shape), one request at a time across
processes: each lineInfo holds the phone's lock (`rest_lock`, fleet.state.lease.PhoneRestLock)
and REST sends Basic first unless the inventory says digest (drivers.control.rest);
every SoundPoint answers state polling (`/polling/deviceHandler`: model and
firmware; `/polling/callstateHandler`: whether a line is in a call) in requestor
mode; in push mode the poll only makes the phone POST its state to the
collector's `/state` (fleet.evidence.collector), so its answer is not read. Digest
authentication, answering the phone's challenge (the last challenge of each
phone is reused, so a steady poll costs one request); basic only for a phone
the inventory marks `http_auth: basic`, since basic hands the admin password to
whoever answers at that address. A phone that times out or answers garbage
yields a PollResult with the error; nothing raises.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import AsyncContextManager, Callable
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import aiohttp

from sipwire import digest

from fleet.config.inventory import Credentials, Phone
from fleet.drivers.control import polling
from fleet.drivers.control.rest import MAX_ANSWER, parse_line_info, uses_rest
from fleet.phoneconf.firmware import REST_FROM
from fleet.drivers.device_json import device_json
from fleet.drivers.errors import DriverError

log = logging.getLogger(__name__)


@dataclass
class PollResult:
    mac: str
    t: float
    ok: bool
    error: str = ""
    lines: list[dict] = field(default_factory=list)     # REST lineInfo entries
    model: str = ""
    firmware: str = ""
    in_call: bool | None = None
    no_rest: str = ""       # why this REST-family phone is polled by state polling instead (a 404 learned), or ""
    sent: float | None = None   # when the lineInfo request left (holding the phone's REST lock): what it answered
                                # held at some moment after this, while `t` (the answer read) may be much later


async def _bounded(resp: aiohttp.ClientResponse) -> bytes:
    """The answer's body, at most MAX_ANSWER + 1 bytes (a longer one is refused by the reader)."""
    out = bytearray()
    async for chunk in resp.content.iter_chunked(65536):
        out += chunk
        if len(out) > MAX_ANSWER:
            break
    return bytes(out)


class Poller:
    def __init__(self, concurrency: int = 200, timeout: float = 3.0,
                 rest_lock: Callable[[Phone], AsyncContextManager] | None = None,
                 polling_login: Callable[[Phone], Credentials] | None = None) -> None:
        self.concurrency = concurrency
        self.timeout = timeout
        self.rest_lock = rest_lock         # the phone's REST lock for one request (None: no other process talks REST)
        # the state polling login of a phone found without REST (None: the login poll_one is given)
        self.polling_login = polling_login
        # MAC -> why the phone is not asked REST any more: a REST-family phone with no firmware_version in the inventory
        # that answered lineInfo with 404 (UC Software 5.0-5.3, or REST off) is polled by state polling for this
        # poller's life, as the controls fall back after device/info (fleet.phones.ucs5)
        self.no_rest: dict[str, str] = {}
        self._session: aiohttp.ClientSession | None = None
        self._challenges: dict[tuple[str, int], dict[str, str]] = {}   # the last digest challenge of each phone

    async def __aenter__(self) -> "Poller":
        # no compression asked for and none undone: a compressed answer reaches the parser as it came, and is
        # malformed there (a decompressed chunk could be a thousand times the bytes that came; MAX_ANSWER bounds these)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout),
                                              connector=aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=2),
                                              headers={"Accept-Encoding": "identity"}, auto_decompress=False)
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session:
            await self._session.close()

    def _authorization(self, phone: Phone, path: str, creds: Credentials, basic_first: bool = False) -> dict[str, str]:
        challenge = self._challenges.get((phone.address, phone.http_port))
        if phone.http_auth == "basic" or (basic_first and challenge is None):
            token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
            return {"Authorization": f"Basic {token}"}
        if challenge is None:
            return {}
        return {"Authorization": digest.authorization(challenge, username=creds.username, password=creds.password,
                                                      method="GET", uri=path)}

    async def _get(self, phone: Phone, path: str, creds: Credentials, basic_first: bool = False) -> bytes:
        url = f"http://{phone.address}:{phone.http_port}{path}"
        for _ in range(2):   # with the last challenge (or none), then once more with a fresh one
            headers = self._authorization(phone, path, creds, basic_first)
            async with self._session.get(url, headers=headers) as resp:  # type: ignore[union-attr]
                if resp.status != 401:
                    resp.raise_for_status()
                    return await _bounded(resp)
                asked = resp.headers.get("WWW-Authenticate", "")
                scheme = asked.split(" ", 1)[0].lower()
                if phone.http_auth == "basic" or scheme != "digest":
                    raise PermissionError(f"credentials refused ({phone.http_auth} sent, the phone asks for "
                                          f"{scheme[:20] or 'nothing'!r})")
                self._challenges[(phone.address, phone.http_port)] = digest.parse_challenge(asked)
        raise PermissionError("digest credentials refused")

    async def poll_one(self, phone: Phone, creds: Credentials, mode: polling.ResponseMode = "requestor") -> PollResult:
        """One phone's poll; `mode` its state polling response mode (fleet.drivers.control.polling.response_mode):
        in push mode the call state arrives at the collector's /state, so only the device handler is read here.
        A REST phone found without REST (lineInfo 404) is polled by state polling, the reason in `no_rest`."""
        found = await self._poll_one(phone, creds, mode)
        found.no_rest = self.no_rest.get(phone.mac, "")
        return found

    async def _poll_one(self, phone: Phone, creds: Credentials, mode: polling.ResponseMode) -> PollResult:
        t = time.time()
        try:
            if uses_rest(phone) and phone.mac not in self.no_rest:
                try:
                    return await self._line_info(phone, creds, t)
                except aiohttp.ClientResponseError as exc:
                    if exc.status != 404:
                        raise
                    self.no_rest[phone.mac] = ("REST lineInfo answered HTTP 404: no REST API (UC Software before "
                                               f"{REST_FROM}, or REST off); state polling from now on")
            if phone.mac in self.no_rest and self.polling_login is not None:
                creds = self.polling_login(phone)
            name = f"phone {phone.mac}"
            if mode != "requestor":
                # push (or nothing): the answers carry no state; the poll makes a push-mode phone POST it to /state
                await self._get(phone, polling.CALL_STATE_PATH, creds)
                return PollResult(phone.mac, time.time(), True)
            info = polling.parse_device_information(await self._get(phone, polling.DEVICE_PATH, creds), name)
            active = polling.parse_call_state(await self._get(phone, polling.CALL_STATE_PATH, creds), name)
            return PollResult(phone.mac, time.time(), True, model=info.get("ModelNumber", ""),
                              firmware=info.get("AppLoadID", ""), in_call=active)
        except asyncio.TimeoutError:
            return PollResult(phone.mac, t, False, f"no answer within {self.timeout:g}s")
        except PermissionError as exc:
            return PollResult(phone.mac, t, False, f"authentication: {exc}")
        except (aiohttp.ClientError, OSError) as exc:
            return PollResult(phone.mac, t, False, f"HTTP error: {type(exc).__name__}")
        except DriverError as exc:
            return PollResult(phone.mac, t, False, f"malformed answer: {exc.message[:200]}")
        except (ValueError, ET.ParseError, AttributeError, RecursionError) as exc:
            return PollResult(phone.mac, t, False, f"malformed answer: {type(exc).__name__}")
        except Exception as exc:   # one phone's answer must not take the round (and the collector's loop) down
            log.warning("poll of phone %s failed unexpectedly: %s", phone.mac, type(exc).__name__, exc_info=True)
            return PollResult(phone.mac, t, False, f"poll failed: {type(exc).__name__}")

    async def _line_info(self, phone: Phone, creds: Credentials, t: float) -> PollResult:
        """REST lineInfo, holding the phone's lock for the one request (other processes talk REST to it too)."""
        basic_first = phone.http_auth != "digest"
        if self.rest_lock is None:
            sent = time.time()
            body = await self._get(phone, "/api/v1/mgmt/lineInfo", creds, basic_first)
        else:
            try:
                async with self.rest_lock(phone):
                    sent = time.time()
                    body = await self._get(phone, "/api/v1/mgmt/lineInfo", creds, basic_first)
            except DriverError as exc:
                return PollResult(phone.mac, t, False, f"lineInfo: {exc.message}")
        if len(body) > MAX_ANSWER:
            return PollResult(phone.mac, t, False, "lineInfo: answer too long")
        try:
            lines = parse_line_info(device_json(body))
        except ValueError as exc:
            return PollResult(phone.mac, t, False, f"lineInfo: {exc}")
        return PollResult(phone.mac, time.time(), True, lines=lines, sent=sent)

    async def poll(self, phones: list[tuple[Phone, Credentials]],
                   modes: dict[str, polling.ResponseMode] | None = None) -> list[PollResult]:
        """Every phone once; `modes`: each phone's state polling response mode by MAC (requestor where unsaid)."""
        sem = asyncio.Semaphore(self.concurrency)
        modes = modes or {}

        async def one(p: Phone, c: Credentials) -> PollResult:
            async with sem:
                return await self.poll_one(p, c, modes.get(p.mac, "requestor"))

        return await asyncio.gather(*(one(p, c) for p, c in phones))
