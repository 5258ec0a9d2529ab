"""Stand-in `ip`, `tc`, `iptables`, `modprobe` and `tcpdump` for the userspace router's SSH shell.

Each call sends its argv to the router process over the control socket named
in HIL_ROUTER_CTL and prints what the router answers, with its exit code, so
shell scripts (`&&`, `&`, `sleep N; ip link set ... up`) behave as on Linux.
`tcpdump -w -` is answered with a stream: after the answer line, the pcap
bytes the router writes are copied to stdout as they come, until the router
closes the socket or stdout breaks (the SSH client went away), as tcpdump ends.
"""
from __future__ import annotations

import json
import os
import socket
import sys


def main() -> int:
    path = os.environ.get("HIL_ROUTER_CTL")
    if not path:
        print(f"{sys.argv[1]}: HIL_ROUTER_CTL is not set", file=sys.stderr)
        return 2
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        try:
            sock.connect(path)
        except OSError as exc:
            print(f"{sys.argv[1]}: router control unreachable ({exc})", file=sys.stderr)
            return 2
        sock.sendall(json.dumps(sys.argv[1:]).encode() + b"\n")
        data = b""
        while b"\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        line, _, rest = data.partition(b"\n")
        answer = json.loads(line)
        sys.stderr.write(answer.get("stderr", ""))
        if answer.get("stream"):
            sys.stderr.flush()
            sock.settimeout(None)
            return _stream(sock, rest)
    sys.stdout.write(answer["stdout"])
    return int(answer["rc"])


def _stream(sock: socket.socket, first: bytes) -> int:
    """Copy the router's bytes to stdout unbuffered (tcpdump -U: each packet as it is captured)."""
    out = sys.stdout.buffer
    try:
        chunk = first
        while True:
            if chunk:
                out.write(chunk)
                out.flush()
            chunk = sock.recv(65536)
            if not chunk:
                return 0
    except (BrokenPipeError, ConnectionError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())    # nothing left to flush at exit
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
