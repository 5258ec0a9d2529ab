"""The web configuration utility's reboot: POST /form-submit/Reboot (UC Software 4.x; polycom.md "More facts").

The web UI uses HTTP Basic with the realm "SPIP Configuration" (confirmed default). Basic sends the
admin password in clear, so it is sent only after the phone itself asked for Basic with that realm;
a phone that asks for digest gets digest.
"""
from __future__ import annotations

import requests
from requests.auth import HTTPBasicAuth, HTTPDigestAuth

from ...inventory import Credentials, Phone
from ..errors import DeviceRefused, DeviceTimeout

REBOOT_PATH = "/form-submit/Reboot"
REALM = "SPIP Configuration"


def reboot(phone: Phone, credentials: Credentials, timeout: float = 5.0) -> None:
    name = f"phone {phone.mac} ({phone.address})"
    url = f"http://{phone.address}:{phone.http_port}{REBOOT_PATH}"
    try:
        first = requests.post(url, timeout=timeout)
        if first.status_code == 401:
            asked = first.headers.get("WWW-Authenticate", "")
            scheme = asked.split(" ", 1)[0].lower()
            if scheme == "basic" and f'realm="{REALM}"' in asked:
                auth = HTTPBasicAuth(credentials.username, credentials.password)
            elif scheme == "digest":
                auth = HTTPDigestAuth(credentials.username, credentials.password)
            else:
                raise DeviceRefused(name, f"POST {REBOOT_PATH}: the phone asks for {asked[:60]!r}, not the web UI's "
                                          f"Basic realm {REALM!r} or digest; nothing sent")
            first = requests.post(url, auth=auth, timeout=timeout)
    except requests.RequestException as exc:
        raise DeviceTimeout(name, f"POST {REBOOT_PATH}: {type(exc).__name__}") from None
    if first.status_code == 401:
        raise DeviceRefused(name, f"POST {REBOOT_PATH}: HTTP 401 (admin credentials refused)")
    if not first.ok:
        raise DeviceRefused(name, f"POST {REBOOT_PATH}: HTTP {first.status_code}")
