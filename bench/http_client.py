"""CPU per HTTP request of the client libraries fleet could use to talk to phones and boot servers.

The rollout worker's profile (bench/rollout.py --profile, py-spy --gil) puts about half of its GIL time in
requests and what it calls (urllib3, http.client, email header parsing), for the twelve requests a push makes per
phone. This measures one small keep-alive GET (a phone's JSON answer) against a local server, CPU of the client
thread only, for: a requests Session (trust_env off, as fleet's sessions are), the same streamed, urllib3's
connection pool, http.client, and fleet's own clients on urllib3 since session 19 (issue 22): the boot-server
publisher reading a file (9 of a push's 12 requests go to the boot server) and a phone's REST device/info (its
JSON parsed; the rest of a push's requests). State polling and the web UI, rare in a rollout, stay on requests.

Run: .venv/bin/python bench/http_client.py [--requests N]
"""
from __future__ import annotations

import argparse
import http.client
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
import urllib3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fleet.config.inventory import Credentials, Phone  # noqa: E402
from fleet.drivers.control.rest import RestPhone  # noqa: E402
from fleet.drivers.publish.http_put import HttpPublisher  # noqa: E402

BODY = b'{"data": {"ModelNumber": "VVX 410", "Firmware": {"Application": "5.9.5.0614"}}, "Status": "2000"}'


class Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # the answer leaves in one segment: headers and body written apart met the client's delayed ACK (a 40 ms stall
    # now and then, which made a run last minutes)
    wbufsize = 65536
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args) -> None:
        pass


def per_request(fn, n: int) -> float:
    """Milliseconds of this thread's CPU per call of fn, over n calls (after 50 to warm up)."""
    for _ in range(50):
        fn()
    cpu = time.thread_time()
    for _ in range(n):
        fn()
    return (time.thread_time() - cpu) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=1, help="each row this many times, in turn (the figures move)")
    args = ap.parse_args()
    n = args.requests
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{port}/api/v1/mgmt/device/info"
    session = requests.Session()
    session.trust_env = False

    def streamed() -> None:
        r = session.get(url, timeout=5, stream=True)
        r.raw.read(4096)
        r.close()
    pool = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)

    def plain() -> None:
        conn.request("GET", "/api/v1/mgmt/device/info")
        conn.getresponse().read()
    publisher = HttpPublisher(f"http://127.0.0.1:{port}/boot/", Credentials(), 5.0)
    phone = RestPhone(Phone(mac="0004f2000001", model="VVX 410", address="127.0.0.1", http_port=port,
                            credentials="admin", firmware_family="uc-5.x"), Credentials("Polycom", "456"), timeout=5.0)
    rows = [("requests Session", lambda: session.get(url, timeout=5).content),
            ("requests Session, streamed", streamed),
            ("urllib3 pool", lambda: pool.request("GET", "/api/v1/mgmt/device/info", timeout=5).data),
            ("http.client", plain),
            ("fleet boot-server read", lambda: publisher.read("0004f2000001.cfg")),
            ("fleet REST device/info", phone.device_info)]
    for _ in range(args.rounds):
        for name, fn in rows:
            print(f"{name:28s} {per_request(fn, n):.3f} ms CPU per request (client thread, {n} keep-alive GETs)")
    server.shutdown()


if __name__ == "__main__":
    main()
