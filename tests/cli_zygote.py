"""Run many CLI commands as separate processes without paying the interpreter's start-up and imports for each.

The bad-input corpus runs about 200 `fleet` and `hil` commands; started one by
one each pays half a second of imports (several under load). This process
imports both CLIs once, then forks a child per command: the child is a fresh
process with the command's own argv, file descriptors, exit status and output,
running the same `main()` the console scripts run, so what the test sees is
what an operator's shell would see. Requests are JSON lines on stdin
(`{"argv": [...], "timeout": s}`, argv[0] the script's path or name); each
answer is one JSON line on stdout (`{"rc": int | null, "out": stdout + stderr}`,
rc null on a timeout). Commands run one at a time, in this process's working
directory and environment.

Run: python tests/cli_zygote.py   (CliZygote below starts and talks to it)
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path


def _child(argv: list[str], out_fd: int, err_fd: int) -> None:
    """In the forked child: the command's own stdio, argv and exit status; never returns."""
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        prog = Path(argv[0]).name
        sys.argv = [prog, *argv[1:]]
        if prog == "fleet":
            from fleet.cli import main
        elif prog == "hil":
            from hil.cli import main
        else:
            raise SystemExit(f"cli_zygote: unknown program {prog!r}")
        try:
            main()
            code = 0
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:   # what an uncaught exception does to a real process: traceback, exit 1
            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def run_one(argv: list[str], timeout: float) -> dict:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(argv, out.fileno(), err.fileno())
        deadline = time.monotonic() + timeout
        rc: int | None = None
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                rc = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.005)
        out.seek(0)
        err.seek(0)
        text = out.read().decode(errors="replace") + err.read().decode(errors="replace")
        return {"rc": rc, "out": text if rc is not None else f"TIMEOUT after {timeout:g} s: {text!r}"}


def preload(packages: tuple[str, ...] = ("soundpoint", "fleet", "hil")) -> None:
    """Import every module of our packages once, here: the CLIs import most of what a command needs inside the
    command (a fast `--help`), and each child would pay that again. A module that will not import here (an
    optional dependency) is left to the child, which reports it as the command would."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # a library's deprecation notes: each command prints its own
        _import_all(packages)


def _import_all(packages: tuple[str, ...]) -> None:
    import importlib
    import pkgutil

    for name in packages:
        pkg = importlib.import_module(name)
        for info in pkgutil.walk_packages(pkg.__path__, f"{name}."):
            if info.name.endswith("__main__") or info.name.startswith("fleet.testing"):
                continue
            try:
                importlib.import_module(info.name)
            except Exception:
                pass


def serve() -> None:
    import fleet.cli  # noqa: F401  (imported once here: every child starts with it loaded)
    import hil.cli  # noqa: F401
    preload()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        print(json.dumps(run_one(req["argv"], float(req.get("timeout", 60)))), flush=True)


class CliZygote:
    """The test side: starts `python tests/cli_zygote.py` with `env` in `cwd` and runs commands through it."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__], cwd=cwd, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline() if self.proc.stdout else ""
        if json.loads(first or "{}").get("ready") is not True:
            self.close()
            raise RuntimeError(f"cli_zygote did not start: {first!r}")

    def run(self, argv: list[str], timeout: float = 60) -> tuple[int | None, str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"argv": argv, "timeout": timeout}) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"cli_zygote ended (exit {self.proc.poll()}) while running {argv}")
        res = json.loads(answer)
        return res["rc"], res["out"]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    serve()
