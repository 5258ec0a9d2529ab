"""How many virtual phones one lab process sustains on one core without a late refresh.

Each step starts a lab in a fresh process pinned to one core (os.sched_setaffinity): N phones with 2 servers each
(the provider through the site router's relay, and the site gateway), 60 s expiry, 10 s overlap, no HTTP servers
on the phones. It waits until every phone is registered, then watches a window of refresh cycles and prints the
phones, REGISTERs per second, the worst and p99 lateness of a refresh (sent after it was due), how many were late
(more than --late s), the descriptors the process holds by kind against the lab's own estimate (hil.limits), and
CPU and memory. Steps go up (--steps) until the first step with a late refresh; the largest step without one is
the figure. A step the lab cannot hold stops by itself with the reason (hil.limits.OutOfDescriptors), timed.

Run:
  .venv/bin/python bench/lab_scale.py                           # steps 5k,10k,20k,25k,30k, 70 s windows
  .venv/bin/python bench/lab_scale.py --steps 5000 --window 20  # a quick run
  .venv/bin/python bench/lab_scale.py --steps 30000 --hard-limit 20000 --unprivileged   # the clear stop
  .venv/bin/python bench/lab_scale.py --steps 5000 --sip-sockets per-phone              # where descriptors went before
  .venv/bin/python bench/lab_scale.py --steps 20000 --processes 2   # two lab processes on one core (10,000 each)
"""
from __future__ import annotations

import argparse
import warnings
import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore", module="asyncssh")  # its DSA deprecation notes, not ours
from hil import limits, netlock  # noqa: E402
from soundpoint import gc_policy  # noqa: E402
from hil.lab import Lab  # noqa: E402
from hil.labfile import LabFile  # noqa: E402


def lab_spec(phones: int, net: int | None, sip_sockets: str, boot_rate: float = 200) -> LabFile:
    """One site up to 20,000 phones (the lab file's per-site bound), more sites beyond: one process either way."""
    sites, left, k = [], phones, 0
    while left > 0:
        n = min(left, 20000)
        sites.append({"name": f"big{k}", "phones": {"count": n, "models": ["SoundPoint IP 650"]},
                      "servers": [{"address": "provider", "expires": 60, "overlap": 10},
                                  {"address": "gateway", "expires": 60, "overlap": 10}],
                      "collector": {"syslog": "127.0.0.1:9", "events": "127.0.0.1:9"}})
        left, k = left - n, k + 1
    doc = {"name": "scale", "http": False, "sip_sockets": sip_sockets,
           "timing": {"boot_time": 0, "boot_jitter": max(1.0, phones / boot_rate), "retry_interval": 30,
                      "log_upload_period": 0, "dns_ttl": 300, "test_speed": True},
           "sites": sites}
    if net is not None:
        doc["net"] = net
    return LabFile.model_validate(doc)


class GcClock:
    """Time the interpreter spends in garbage collection (gc.callbacks), by generation: a lab of 10,000 phones
    holds millions of objects, and a full collection walks every one not frozen (gc.freeze)."""

    def __init__(self) -> None:
        self.reset()
        self._began = 0.0

    def reset(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self.worst = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        took = time.perf_counter() - self._began
        self.seconds[info["generation"]] += took
        self.count[info["generation"]] += 1
        self.worst = max(self.worst, took)

    def install(self) -> "GcClock":
        gc.callbacks.append(self._callback)
        return self

    def summary(self) -> str:
        return (", ".join(f"gen{g} {self.count[g]}x {self.seconds[g]:.2f} s" for g in range(3))
                + f"; longest {self.worst * 1000:.0f} ms")


async def one_step(phones: int, window: float, net: int | None, sip_sockets: str, late_s: float,
                   unprivileged: bool, ready_timeout: float, boot_rate: float,
                   barrier: tuple[Path, int] | None = None) -> dict:
    spec = lab_spec(phones, net, sip_sockets, boot_rate)
    claim = netlock.claim(spec.net, len(spec.sites), lab=spec.name)    # a free net (or the one asked), held till exit
    spec = spec.on_net(claim.net)
    gc_policy.young_die_young()     # as `hil up` does
    lab = Lab(spec, Path(tempfile.mkdtemp(prefix="lab-scale-")))
    lab.may_raise_hard_limit = not unprivileged
    budget = lab.descriptor_budget()
    out: dict = {"phones": phones, "sip_sockets": "shared" if spec.shared_sip else "per-phone",
                 "estimate": budget.parts, "estimate_total": budget.total,
                 "hard_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1]}
    gc_clock = GcClock().install()
    t0 = time.monotonic()
    try:
        await lab.start()
    except limits.OutOfDescriptors as exc:
        await lab.stop()
        out.update(stopped=str(exc), stopped_after_s=round(time.monotonic() - t0, 3))
        return out
    gc_policy.settled()     # as `hil up` does once the lab is built, and again once it is ready
    out["limit"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    ok = await lab.wait_ready(ready_timeout)
    gc_policy.settled()
    out.update(ready=ok, ready_s=round(time.monotonic() - t0, 1))
    all_phones = [p for rt in lab.sites for p in rt.phones]
    while ok and not lab.fatal and time.monotonic() - t0 < ready_timeout and any(   # both servers, not just one
            s.state != "registered" for p in all_phones for r in p.regs for s in r.servers):
        await asyncio.sleep(0.5)
    out["all_servers_s"] = round(time.monotonic() - t0, 1)
    if lab.fatal:
        await lab.stop()
        out.update(stopped=lab.fatal, stopped_after_s=round(time.monotonic() - t0, 3))
        return out
    if barrier is not None:     # several lab processes on one core: every one registered before any window starts
        barrier_dir, of = barrier
        (barrier_dir / f"ready.{os.getpid()}").touch()
        while len(list(barrier_dir.glob("ready.*"))) < of and time.monotonic() - t0 < ready_timeout and not lab.fatal:
            await asyncio.sleep(0.2)
    for p in all_phones:
        p.lateness.clear()
    sent0 = sum(p.register_count for p in all_phones)
    out["gc_before_window"] = gc_clock.summary()
    gc_clock.reset()
    cpu0 = time.process_time()
    end = time.monotonic() + window
    while time.monotonic() < end and not lab.fatal:   # the measurement window; a fatal stop ends it at once
        await asyncio.sleep(min(1.0, end - time.monotonic()))
    elapsed = window - max(0.0, end - time.monotonic())
    sent = sum(p.register_count for p in all_phones) - sent0
    cpu = time.process_time() - cpu0
    late = sorted(x for p in all_phones for x in p.lateness)
    down = sum(1 for p in all_phones for r in p.regs for s in r.servers if s.state != "registered")
    out.update(
        window_s=round(elapsed, 1), refreshes=len(late), register_per_s=round(sent / max(elapsed, 1e-9)),
        late=sum(1 for x in late if x > late_s), late_worst_ms=round(late[-1] * 1000) if late else None,
        late_p99_ms=round(late[int(len(late) * 0.99)] * 1000) if late else None, servers_down=down,
        descriptors_open=limits.open_count(), descriptors_by_kind=limits.by_kind(),
        relay_flows=sum(rt.router.flows for rt in lab.sites),
        relay_flows_by_forward=[[len(li.sessions) for li in rt.router.listeners] for rt in lab.sites],
        shared_socket=({"port": lab.sip_socket.port, "unknown": lab.sip_socket.unknown,
                        "dropped": lab.sip_socket.dropped} if lab.sip_socket is not None else None),
        gc_window=gc_clock.summary(), cpu_pct=round(cpu / max(elapsed, 1e-9) * 100), rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    t_stop = time.monotonic()
    await lab.stop()
    out["stop_s"] = round(time.monotonic() - t_stop, 1)
    if lab.fatal:
        out["stopped"] = lab.fatal
    return out


def child(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {args.core})
    if args.hard_limit:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(args.hard_limit, 1024), args.hard_limit))
    barrier = (Path(args.barrier), args.processes) if args.barrier else None
    result = asyncio.run(one_step(args.one, args.window, args.net, args.sip_sockets, args.late, args.unprivileged,
                                  args.ready_timeout, args.boot_rate, barrier))
    print(json.dumps(result), flush=True)


def report(r: dict, late_s: float) -> None:
    print(f"--- {r['phones']} phones, SIP sockets {r['sip_sockets']}")
    print(f"  descriptors estimated:    {r['estimate_total']} ({', '.join(f'{k} {v}' for k, v in r['estimate'].items())}); "
          f"hard limit {r['hard_limit']}")
    if "stopped" in r and "ready" not in r:
        print(f"  STOPPED after {r['stopped_after_s']:.2f} s: {r['stopped']}")
        return
    print(f"  all registered:           {r['ready']} in {r['ready_s']} s, with both servers in {r['all_servers_s']} s "
          f"(soft limit set to {r['limit']})")
    if "window_s" not in r:
        print(f"  STOPPED after {r['stopped_after_s']:.2f} s: {r['stopped']}")
        return
    print(f"  window:                   {r['window_s']} s; refreshes observed {r['refreshes']}; "
          f"REGISTER sent {r['register_per_s']}/s (incl. digest retries)")
    print(f"  refresh lateness:         worst {r['late_worst_ms']} ms, p99 {r['late_p99_ms']} ms; "
          f"late (> {late_s:g} s): {r['late']}; server registrations down: {r['servers_down']}")
    print(f"  descriptors open:         {r['descriptors_open']} {r['descriptors_by_kind']}; relay flows {r['relay_flows']} {r.get('relay_flows_by_forward')}; "
          f"shared socket {r['shared_socket']}")
    print(f"  CPU of the lab process:   {r['cpu_pct']}% of one core; max RSS {r['rss_mib']} MiB; stop took {r['stop_s']} s")
    if r.get("gc_window"):
        print(f"  garbage collection:       in the window {r['gc_window']}; before it (start, boot) {r.get('gc_before_window')}")
    if r.get("stopped"):
        print(f"  STOPPED: {r['stopped']}")


def combined(parts: list[dict]) -> dict:
    """One step run as several lab processes on one core, seen as one: phones, refreshes, late ones and servers
    down added up, the worst lateness the worst of any, CPU added up (the windows start together: a barrier)."""
    out = dict(parts[0])
    out["phones"] = sum(r["phones"] for r in parts)
    out["estimate_total"] = max(r["estimate_total"] for r in parts)
    out["processes"] = len(parts)
    stopped = [r for r in parts if r.get("stopped")]
    if stopped:
        out.update(stopped="; ".join(r["stopped"] for r in stopped),
                   stopped_after_s=max(r.get("stopped_after_s", 0) for r in stopped))
    if all("window_s" in r for r in parts):
        lates = [r["late_worst_ms"] for r in parts if r["late_worst_ms"] is not None]
        p99s = [r["late_p99_ms"] for r in parts if r["late_p99_ms"] is not None]
        out.update(ready=all(r["ready"] for r in parts), ready_s=max(r["ready_s"] for r in parts),
                   all_servers_s=max(r["all_servers_s"] for r in parts),
                   refreshes=sum(r["refreshes"] for r in parts), register_per_s=sum(r["register_per_s"] for r in parts),
                   late=sum(r["late"] for r in parts), late_worst_ms=max(lates) if lates else None,
                   late_p99_ms=max(p99s) if p99s else None, servers_down=sum(r["servers_down"] for r in parts),
                   descriptors_open=[r["descriptors_open"] for r in parts],
                   relay_flows=sum(r["relay_flows"] for r in parts), cpu_pct=sum(r["cpu_pct"] for r in parts),
                   rss_mib=sum(r["rss_mib"] for r in parts), stop_s=max(r["stop_s"] for r in parts),
                   window_s=min(r["window_s"] for r in parts), descriptors_by_kind="(each process's above)",
                   relay_flows_by_forward=None, shared_socket="(each process's above)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="5000,10000,20000,25000,30000", help="phone counts, in order")
    ap.add_argument("--window", type=float, default=70, help="seconds watched once all are registered")
    ap.add_argument("--late", type=float, default=1.0, help="a refresh sent more than this many s after due is late")
    ap.add_argument("--net", type=int, default=None, help="the lab's net (default: a free one, hil.netlock)")
    ap.add_argument("--core", type=int, default=0, help="the core every step is pinned to")
    ap.add_argument("--sip-sockets", default="auto", choices=["auto", "shared", "per-phone"])
    ap.add_argument("--hard-limit", type=int, default=0, help="set RLIMIT_NOFILE's hard limit first (as a smaller "
                    "machine would have it)")
    ap.add_argument("--unprivileged", action="store_true", help="never raise the hard limit (as a non-root user)")
    ap.add_argument("--all", action="store_true", help="run every step, also after a late one")
    ap.add_argument("--ready-timeout", type=float, default=300)
    ap.add_argument("--boot-rate", type=float, default=200, help="first boots per second (boot_jitter = phones / this)")
    ap.add_argument("--processes", type=int, default=1, help="lab processes per step, all pinned to --core, the "
                    "phones shared out (hil runs a site or a group of sites per process; a process holds at most its "
                    "descriptor limit's worth of relay flows)")
    ap.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)   # a step, in the child process
    ap.add_argument("--barrier", default="", help=argparse.SUPPRESS)       # the step's processes start windows together
    args = ap.parse_args()
    if args.processes > 1 and args.net is not None and not args.one:
        ap.error("--net names one lab's net: with --processes > 1 each process takes a free one")
    if args.one:
        child(args)
        return
    sustained = None
    for n in [int(x) for x in args.steps.split(",") if x.strip()]:
        cmd = [sys.executable, __file__, "--one", str(n), "--window", str(args.window), "--late", str(args.late),
               "--core", str(args.core), "--sip-sockets", args.sip_sockets, "--ready-timeout", str(args.ready_timeout),
               "--boot-rate", str(args.boot_rate)]
        cmd += (["--net", str(args.net)] if args.net is not None else [])
        cmd += (["--hard-limit", str(args.hard_limit)] if args.hard_limit else [])
        cmd += (["--unprivileged"] if args.unprivileged else [])
        t0 = time.monotonic()
        k = max(1, args.processes)
        barrier = Path(tempfile.mkdtemp(prefix="lab-scale-barrier-"))
        shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
        procs = [subprocess.Popen([*cmd[:3], str(share), *cmd[4:], "--boot-rate", str(args.boot_rate / k),
                                   "--processes", str(k), *(["--barrier", str(barrier)] if k > 1 else [])],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for share in shares]
        parts, failed = [], False
        for proc in procs:
            out, err = proc.communicate()
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            if proc.returncode != 0 or not lines:
                print(f"--- {n} phones: a step's process exited {proc.returncode} after {time.monotonic() - t0:.1f} s")
                print(err[-3000:])
                failed = True
                continue
            parts.append(json.loads(lines[-1]))
        if failed:
            break
        r = combined(parts) if k > 1 else parts[0]
        if k > 1:
            print(f"=== {n} phones as {k} lab processes of {', '.join(map(str, shares))} phones, all on core {args.core}")
            for part in parts:
                report(part, args.late)
            print("  --- together:")
        report(r, args.late)
        held = r.get("ready") and not r.get("stopped") and r.get("late") == 0 and not r.get("servers_down")
        if held:
            sustained = n
        elif not args.all:
            break
    print(f"largest phone count sustained on one core with no late refresh: {sustained if sustained else 'none of the steps'}")


if __name__ == "__main__":
    main()
