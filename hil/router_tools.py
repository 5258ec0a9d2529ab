"""Stand-in `ip`, `tc`, `iptables` and `modprobe` for the userspace router's SSH shell.

Each call sends its argv to the router process over the control socket named
in HIL_ROUTER_CTL and prints what the router answers, with its exit code, so
shell scripts (`&&`, `&`, `sleep N; ip link set ... up`) behave as on Linux.
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
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data)
    sys.stdout.write(answer["stdout"])
    sys.stderr.write(answer["stderr"])
    return int(answer["rc"])


if __name__ == "__main__":
    sys.exit(main())
