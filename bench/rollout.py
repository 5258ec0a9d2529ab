"""Rollout speed against the physical limit: `fleet rollout run` vs the phones' own reboot times and a bare client.

Per case it prints the rollout's wall time (the CLI as a whole, interpreter start included) against
- the physical lower bound: the lab's ground truth of each phone's reboot-to-registered time (reboot received to
  every required server registered again), scheduled with no controller cost on `max_unavailable` slots per site in
  the plan's order (a phone starts the moment a slot frees). With equal times that is ceil(N/M) x R per site;
  the bench also prints ceil(N/M) x the slowest phone's time, the textbook figure;
- the bare client with the same concurrency (`max_unavailable` threads per site, all sites at once, requests:
  PUT the phone's files, POST safeRestart, poll lineInfo until registered), on the same lab right after;
and the controller's CPU seconds per phone (workers, collector, CLI, Redis, each named) and Redis memory per phone
(the rollout's own records: used_memory after it minus before it).

Cases (one at a time, on an idle machine for figures worth quoting):
  --case 1000x2        1,000 phones on 2 sites, quick reboots, 25 down per site, a worker per site (target <= 1.25x bare)
  --case 200-waves     200 phones on 2 sites, 20 s reboots, max_unavailable 50 per site (target <= 1.05x the bound)
  --case 100-one-wave  100 phones on 2 sites, 20 s reboots, all at once (controller overhead target <= 2 %)
  --case 10000x10      10,000 phones on 10 sites, a worker per site on its own queue (target <= 1.25x bare); a lab
                       process per site, their inventories merged (one process holds ~6 descriptors per phone)
  --case ansible       Ansible (ansible-core, `uri`, forks 50) on 200 phones, measured, not scaled
Run: .venv/bin/python -u bench/rollout.py [--case 1000x2 ...] [--repeat N] [--profile DIR] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fleet.config import inventory
from fleet.phoneconf import polycom  # noqa: E402
from hil.harness import BIN, Harness, Lab, wait_for  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (from /proc), to show where a run's time goes."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds per named process over a block, plus this process and its waited-for children."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def __enter__(self) -> "CpuMeter":
        self.t0 = time.perf_counter()
        self.before = {n: cpu_seconds(p) for n, p in self.pids.items()}
        self.self0 = time.process_time()
        self.child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.t0
        self.used = {n: cpu_seconds(p) - self.before[n] for n, p in self.pids.items()}
        child = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.used["bench process"] = time.process_time() - self.self0
        self.used["cli (controller)"] = child.ru_utime + child.ru_stime - self.child0.ru_utime - self.child0.ru_stime

    def line(self) -> str:
        parts = ", ".join(f"{n} {v:.1f}" for n, v in sorted(self.used.items(), key=lambda kv: -kv[1]) if v >= 0.05)
        return f"CPU s over {self.wall:.1f} s wall: {parts} (total {sum(self.used.values()):.1f})"


def lab_spec(name: str, site_names: list[str], per_site: int, boot_time: float) -> dict:
    """A lab on a free net (`net` left out: chosen at start, hil.netlock), its collectors in its own addresses."""
    site = lambda n: {"name": n, "phones": {"count": per_site, "models": ["VVX 410"]},  # noqa: E731
                      "servers": [{"address": "provider", "expires": 60, "overlap": 10, "retry_timeout_ms": 500},
                                  {"address": "gateway", "expires": 60, "overlap": 10, "retry_timeout_ms": 500}]}
    return {"name": name, "firmware_family": "uc-5.x",
            "timing": {"boot_time": boot_time, "boot_jitter": 5, "retry_interval": 5, "log_upload_period": 0, "dns_ttl": 30,
                       "test_speed": True},
            "sites": [site(n) for n in site_names]}


def merged_inventory(labs: list[Lab], out: Path) -> Path:
    """One inventory (and secrets file) over several labs' sites: each lab's secret names prefixed with its number,
    so that equal names in two labs (router, phone_admin, sip_1001) stay apart. A stop-gap while one lab process
    cannot hold every site (file descriptors: about 6 per phone here, 20,000 per process)."""
    def renamed(node, prefix: str):
        if isinstance(node, dict):
            return {k: (prefix + v if k == "credentials" and isinstance(v, str) else renamed(v, prefix))
                    for k, v in node.items()}
        if isinstance(node, list):
            return [renamed(v, prefix) for v in node]
        if isinstance(node, str) and node.startswith("secret:"):
            return "secret:" + prefix + node[len("secret:"):]
        return node

    merged: dict = {}
    secrets: dict = {}
    for i, lab in enumerate(labs):
        prefix = f"l{i}_"
        inv = yaml.safe_load(lab.inventory.read_text())
        own = yaml.safe_load(Path(inv["secrets_file"]).read_text())
        secrets.update({prefix + k: v for k, v in own.items()})
        sites = renamed(inv["sites"], prefix)
        if not merged:
            merged = {k: v for k, v in inv.items() if k != "sites"} | {"name": "merged", "sites": []}
        merged["sites"] += sites
    out.mkdir(parents=True, exist_ok=True)
    secrets_file = out / "secrets.yml"
    secrets_file.touch(mode=0o600)
    secrets_file.write_text(yaml.safe_dump(secrets))
    merged["secrets_file"] = str(secrets_file)
    path = out / "inventory.yml"
    path.write_text(yaml.safe_dump(merged, sort_keys=False))
    return path


class Labs:
    """One or several labs (a lab process for every `per_lab` sites) seen as one: inventory, ground truth, pids."""

    def __init__(self, labs: list[Lab], inventory: Path) -> None:
        self.labs, self.inventory = labs, inventory

    def unsettled(self) -> list[str]:
        return [m for lab in self.labs for m in lab.unsettled()]

    def truth(self, since: float, servers: tuple[int, ...]) -> dict[str, float]:
        return {m: t for lab in self.labs for m, t in truth_registered_after_reboot(lab.state, since, servers).items()}


def lab_and_workers(h: Harness, name: str, sites: int, per_site: int, boot_time: float, threads: int,
                    per_lab: int) -> tuple[Labs, dict[str, int]]:
    """The labs (`per_lab` sites each, started side by side), then the deployment docker-compose.yml describes: a
    worker per site on its own queue, without collectors (`threads` threads each), and the collectors as a process
    of their own. Returns the labs and the pids to meter."""
    names = [f"s{k}" for k in range(sites)]
    groups = [names[i:i + per_lab] for i in range(0, sites, per_lab)]
    specs = [lab_spec(f"{name}-{i}", group, per_site, boot_time) for i, group in enumerate(groups)]
    ready = 60 + per_site * per_lab * 0.1
    # two at a time: ten labs choosing their nets at once wait on each other's lock (hil.netlock) past its 10 s
    with ThreadPoolExecutor(min(2, len(specs))) as starting:
        labs = list(starting.map(lambda sp: h.lab(sp, sp["name"], ready_timeout=ready, timeout=None), specs))
    inv = labs[0].inventory if len(labs) == 1 else merged_inventory(labs, h.work / "merged")
    both = Labs(labs, inv)
    workers = h.workers(inv, tuple(names), extra=("--concurrency", str(threads), "--pool", "threads"))
    collector = h.collector(inv, tuple(names))
    # `hil up` returns once every phone has a working server; the second registrations are still under way
    wait_for(lambda: not both.unsettled(), 120 + per_site * sites * 0.02, "every phone registered with both servers",
             step=2.0)
    return both, {**{f"lab {i}": lab.pid for i, lab in enumerate(labs)},
                  **{f"worker {n}": w.pid for n, w in zip(names, workers)}, "collector": collector.pid}


class Profiler:
    """py-spy on the CLI and the workers while the rollout runs (--profile DIR): where the controller's CPU goes (--gil:
    only samples of a thread holding the GIL, so a thread waiting on a socket is not counted)."""

    def __init__(self, out: Path | None, pids: dict[str, int]) -> None:
        self.out, self.pids, self.procs = out, pids, []

    def attach(self, extra: dict[str, int]) -> None:
        spy = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
        if self.out is None or not spy:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        for name, pid in {**self.pids, **extra}.items():
            if name.startswith("lab") or name == "redis":
                continue
            target = self.out / f"{name.replace(' ', '-')}.txt"
            self.procs.append(subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "50",
                                                "--nonblocking", "--threads", "--gil", "-o", str(target)],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def redis_memory(url: str) -> int:
    import redis
    return int(redis.Redis.from_url(url).info("memory")["used_memory"])


def redis_calls(url: str) -> dict[str, int]:
    """Commands Redis has served so far, per command (INFO commandstats): what a run costs it, in round trips'
    worth of work (a pipeline's commands count one each)."""
    import redis
    stats = redis.Redis.from_url(url).info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def calls_line(before: dict[str, int], after: dict[str, int], phones: int) -> str:
    """Redis commands per phone over a run, the busiest named."""
    delta = {k: n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0) > 0}
    top = sorted(delta.items(), key=lambda kv: -kv[1])[:8]
    return (f"Redis commands {sum(delta.values()) / phones:.1f} per phone ("
            + ", ".join(f"{k} {n / phones:.1f}" for k, n in top) + ")")


def our_rollout(inv: Path, url: str, work: Path, expires: int, phones: int, max_unavailable: int,
                profiler: Profiler | None = None, registered_to: tuple[int, ...] = (1, 2)) -> float:
    pb = work / f"pb-{expires}.yml"
    pb.write_text(yaml.safe_dump({"kind": "rollout", "name": "bench", "params": {"reg.1.server.1.expires": expires},
                                  "strategy": {"canary": 0, "wave_size": phones, "max_unavailable": max_unavailable,
                                               "failure_budget": {"total": 0}, "progress_deadline": 1800},
                                  "verify": {"registered_to": list(registered_to), "within": 120}}))
    env = dict(os.environ, FLEET_REDIS_URL=url)
    mem0 = redis_memory(url)
    calls0 = redis_calls(url)
    t0 = time.perf_counter()
    proc = subprocess.Popen([BIN / "fleet", "rollout", "run", str(pb), "--inventory", str(inv), "--json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if profiler is not None:
        profiler.attach({"cli": proc.pid})
    stdout, stderr = proc.communicate()
    elapsed = time.perf_counter() - t0
    if profiler is not None:
        profiler.stop()
    try:
        out = json.loads(stdout)
    except ValueError:
        raise RuntimeError(f"fleet rollout run exited {proc.returncode}: {stderr[-2000:]}") from None
    assert out["status"] == "done" and out["counts"].get("verified") == phones, out
    from fleet.state.store import RolloutStore, Store

    rs = RolloutStore(Store(url))
    our_rollout.memory = redis_memory(url) - mem0
    our_rollout.calls = calls_line(calls0, redis_calls(url), phones)
    created = float(rs.get_field(out["id"], "created"))
    our_rollout.span = float(rs.get_field(out["id"], "finished")) - created   # its own recorded span, no CLI start-up
    our_rollout.cli_start = elapsed - our_rollout.span
    records = rs.phones(out["id"], rs.macs(out["id"]), full=True)
    our_rollout.order = list(records)
    our_rollout.records = records
    stamps = [[float(rec[k]) for k in ("dispatched_at", "reboot_at", "settled_at")] for rec in records.values()
              if all(rec.get(k) for k in ("dispatched_at", "reboot_at", "settled_at"))]

    our_rollout.phases = (f"p50/p95/max s: dispatched after start {pct([d - created for d, _, _ in stamps])}, "
                          f"reboot after dispatch {pct([b - d for d, b, _ in stamps])}, "
                          f"verified after reboot {pct([v - b for _, b, v in stamps])}; "
                          f"CLI start to recorded start {our_rollout.cli_start:.2f}")
    our_rollout.reboots = {mac: float(rec["reboot_at"]) for mac, rec in records.items() if rec.get("reboot_at")}
    # the push task's own steps, from the rollout's event log: queue wait (dispatched to its first step) and each step
    first: dict[str, float] = {}
    steps: dict[str, list[float]] = {}
    for e in rs.events(out["id"]):
        if e.get("kind") == "step" and e.get("phase") == "start":
            first.setdefault(str(e.get("mac")), float(e["t"]))
        elif e.get("kind") == "step" and e.get("phase") == "end" and isinstance(e.get("duration_s"), (int, float)):
            steps.setdefault(str(e.get("step")), []).append(float(e["duration_s"]))
    waits = [first[m] - float(rec["dispatched_at"]) for m, rec in records.items() if m in first and rec.get("dispatched_at")]
    our_rollout.steps = (f"p50/p95/max s: task queue wait {pct(waits)}, "
                         + ", ".join(f"{name} {pct(v)}" for name, v in sorted(steps.items())))
    return elapsed


def calls(inv_path: Path, expires: int):
    """Per phone: (boot server PUT url, file bytes, REST base url) for the bare client and Ansible."""
    inv = inventory.load(inv_path)
    secrets = inventory.Secrets(inv)
    out = []
    for site in inv.sites:
        boot = secrets.credentials(site.boot_server.credentials)
        for p in site.phones:
            params = {k: secrets.resolve_param(k, v) for k, v in inv.effective_params(site, p).items()}
            params["reg.1.server.1.expires"] = str(expires)
            files = polycom.render_phone_files(p.mac, params)
            out.append({"mac": p.mac, "site": site.name, "server_1": params.get("reg.1.server.1.address", ""), "put": site.boot_server.url + f"{p.mac}-fleet.cfg", "master": site.boot_server.url + f"{p.mac}.cfg",
                        "files": files, "boot": (boot.username, boot.password), "rest": f"http://{p.address}:{p.http_port}",
                        "admin": (secrets.credentials(p.credentials).username, secrets.credentials(p.credentials).password)})
    return out


def bare(items: list[dict], per_site: int) -> float:
    """The bare client: `per_site` threads for each site, every site at once (the concurrency max_unavailable
    gives the rollout); wall time until every phone is registered again."""
    def one(it: dict) -> None:
        s = requests.Session()
        s.put(it["put"], data=it["files"][it["put"].rsplit("/", 1)[1]], auth=it["boot"], timeout=10).raise_for_status()
        s.put(it["master"], data=it["files"][it["master"].rsplit("/", 1)[1]], auth=it["boot"], timeout=10).raise_for_status()
        t = time.time()
        s.post(it["rest"] + "/api/v1/mgmt/safeRestart", auth=it["admin"], timeout=10).raise_for_status()
        time.sleep(0.3)   # the measured client's own pacing (as a hand-written script would): part of the experiment
        while time.time() - t < 120:
            try:
                r = s.get(it["rest"] + "/api/v1/mgmt/lineInfo", auth=it["admin"], timeout=5)
                line = r.json()["data"][0] if r.ok else {}
                # what the rollout verifies (verify.registered_to [1]): the line registered with server 1, not with
                # whichever server answered first (the gateway's REGISTER often returns before the provider's)
                if line.get("RegistrationStatus") == "registered" and line.get("ProxyAddress") == it["server_1"]:
                    return
                seen_down.add(it["mac"])
            except (requests.RequestException, ValueError, KeyError, IndexError):
                seen_down.add(it["mac"])
            time.sleep(0.2)   # the measured client's poll interval: part of the experiment
        raise RuntimeError(f"{it['mac']} did not re-register")

    seen_down: set[str] = set()
    sites: dict[str, list[dict]] = {}
    for it in items:
        sites.setdefault(it["site"], []).append(it)

    def site(todo: list[dict]) -> None:
        with ThreadPoolExecutor(per_site) as threads:
            list(threads.map(one, todo))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(sites)) as each:
        list(each.map(site, sites.values()))
    bare.seen_down = len(seen_down)
    return time.perf_counter() - t0


def ansible(items: list[dict], work: Path) -> float | None:
    if not shutil.which("ansible-playbook", path=str(BIN)) and not shutil.which("ansible-playbook"):
        return None
    hosts = {f"p{i}": {"ansible_connection": "local", "put_url": it["put"], "master_url": it["master"],
                       "body": it["files"][it["put"].rsplit("/", 1)[1]].decode(),
                       "master_body": it["files"][it["master"].rsplit("/", 1)[1]].decode(), "rest": it["rest"],
                       "boot_user": it["boot"][0], "boot_pw": it["boot"][1],    # each site's boot server its own
                       "admin_user": it["admin"][0], "admin_pw": it["admin"][1]}
             for i, it in enumerate(items)}
    (work / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": hosts, "vars": {
        "ansible_python_interpreter": sys.executable}}}))
    (work / "site.yml").write_text(yaml.safe_dump([{"hosts": "all", "gather_facts": False, "tasks": [
        {"uri": {"url": "{{ put_url }}", "method": "PUT", "body": "{{ body }}", "user": "{{ boot_user }}",
                 "password": "{{ boot_pw }}", "force_basic_auth": True, "status_code": [200, 201, 204]}},
        {"uri": {"url": "{{ master_url }}", "method": "PUT", "body": "{{ master_body }}", "user": "{{ boot_user }}",
                 "password": "{{ boot_pw }}", "force_basic_auth": True, "status_code": [200, 201, 204]}},
        {"uri": {"url": "{{ rest }}/api/v1/mgmt/safeRestart", "method": "POST", "user": "{{ admin_user }}",
                 "password": "{{ admin_pw }}", "force_basic_auth": True}},
        {"uri": {"url": "{{ rest }}/api/v1/mgmt/lineInfo", "user": "{{ admin_user }}", "password": "{{ admin_pw }}",
                 "force_basic_auth": True, "return_content": True}, "register": "li",
         "until": "li.status == 200 and li.json.data[0].RegistrationStatus == 'registered'", "retries": 100, "delay": 1}]}]))
    env = dict(os.environ, ANSIBLE_FORKS="50", ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_STDOUT_CALLBACK="default", ANSIBLE_DISPLAY_OK_HOSTS="false")
    t0 = time.perf_counter()
    # its own process group, so that an interrupted bench does not leave 50 forks behind
    proc = subprocess.Popen([BIN / "ansible-playbook", "-i", str(work / "hosts.yml"), str(work / "site.yml"), "-f", "50"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work, start_new_session=True)
    try:
        out, errs = proc.communicate()
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        print(out[-2000:], errs[-2000:])
        raise RuntimeError("ansible-playbook failed")
    return elapsed


def ground_truth(state: Path) -> dict:
    """Every phone's timeline, as the lab itself recorded it."""
    control = json.loads((state / "control.json").read_text())["url"]
    return requests.get(control + "/status", timeout=120).json()["ground_truth"]["phones"]


def truth_registered_after_reboot(state: Path, since: float, servers: tuple[int, ...] = (1, 2)) -> dict[str, float]:
    """Per phone (MAC), from the lab's ground truth: seconds from its reboot (the lab received the request) until
    every server in `servers` is registered again."""
    truth = ground_truth(state)
    out = {}
    phases: dict[str, list[float]] = {}
    for mac, p in truth.items():
        reboot = next((e["t"] for e in p["events"] if e["kind"] == "reboot" and e["t"] >= since), None)
        if reboot is None:
            continue
        up: dict[int, float] = {}
        for e in p["events"]:
            if e["t"] > reboot and e["kind"] == "server_state" and e["data"]["state"] == "registered":
                up.setdefault(e["data"]["server"], e["t"])
        if all(s in up for s in servers):
            out[mac] = max(up[s] for s in servers) - reboot
            booted = next((e["t"] for e in p["events"] if e["t"] > reboot and e["kind"] == "available"), None)
            if booted is not None:
                phases.setdefault("reboot to booted (provisioned)", []).append(booted - reboot)
                phases.setdefault("booted to registered", []).append(max(up[s] for s in servers) - booted)
    truth_registered_after_reboot.phases = ", ".join(f"{k} {pct(v)}" for k, v in phases.items())
    return out


def lower_bound(times: dict[str, float], order: list[str], site_of: dict[str, str], slots: int) -> float:
    """The physical limit: each site's phones, in the plan's order, each started the moment one of `slots` frees and
    taking its own ground-truth time, with no controller cost at all; the slowest site's finish."""
    import heapq
    worst = 0.0
    for site in sorted(set(site_of.values())):
        free = [0.0] * slots
        for mac in (m for m in order if site_of.get(m) == site and m in times):
            start = heapq.heappop(free)
            heapq.heappush(free, start + times[mac])
        worst = max(worst, max(free))
    return worst


def textbook_bound(times: dict[str, float], site_of: dict[str, str], slots: int) -> float:
    """ceil(N/M) x R per site, R the site's slowest phone: the issue's figure (above the scheduled bound when R varies)."""
    out = 0.0
    for site in set(site_of.values()):
        mine = [t for m, t in times.items() if site_of.get(m) == site]
        out = max(out, -(-len(mine) // slots) * max(mine))
    return out


def stragglers(records: dict[str, dict], labs: "Labs", since: float, over_s: float = 5.0, most: int = 5) -> list[str]:
    """Phones verified more than `over_s` after their reboot (the case's reboot time plus 5 s), each with its record's stamps (seconds from reboot_at)
    and the lab's own record of its registrations: a verification that waited for a refresh shows why."""
    late = [(m, r) for m, r in records.items() if r.get("reboot_at") and r.get("settled_at")
            and float(r["settled_at"]) - float(r["reboot_at"]) > over_s]
    if not late:
        return []
    truth = {m: p for lab in labs.labs for m, p in ground_truth(lab.state).items()}
    out = []
    for mac, rec in late[:most]:
        at = float(rec["reboot_at"])
        stamps = {k: round(float(v) - at, 3) for k, v in rec.items()
                  if k.endswith(("_at", "_from")) and v and v.replace(".", "", 1).isdigit()}
        events = [f"{e['t'] - at:+.3f} {e['kind']}"
                  + (f" s{e['data']['server']} {e['data']['state']}" if e["kind"] == "server_state" else "")
                  for e in truth.get(mac, {}).get("events", []) if e["t"] >= since and e["t"] - at < 120]
        out.append(f"{mac}: verified_by {rec.get('verified_by', '?')}, record {stamps}; lab {events[:12]}")
    return out + ([f"and {len(late) - most} more"] if len(late) > most else [])


def pct(values: list[float]) -> str:
    values = sorted(values)
    return "/".join(f"{values[min(len(values) - 1, int(q * len(values)))]:.2f}" for q in (0.5, 0.95, 1.0)) if values else "-"


# name: (sites, phones per site, reboot time s, max_unavailable per site, compare with the bare client, sites per lab
# process). A case compared with the bare client verifies what that client waits for, the line registered again
# (server 1, verify.registered_to [1]); the others verify both servers, as a cautious rollout does.
CASES = {
    "1000x2": (2, 500, 0.0, 25, True, 2),
    "200-waves": (2, 100, 20.0, 50, False, 2),
    "100-one-wave": (2, 50, 20.0, 50, False, 2),
    "10000x10": (10, 1000, 0.0, 25, True, 1),
}


def run_case(name: str, work: Path, profile: Path | None, say, per_site_override: int | None = None) -> dict:
    sites, per_site, boot, slots, with_bare, per_lab = CASES[name]
    per_site = per_site_override or per_site
    servers = (1,) if with_bare else (1, 2)
    phones = sites * per_site
    result: dict = {"case": name, "phones": phones, "sites": sites, "max_unavailable": slots, "reboot_time": boot}
    what = "reboot-to-" + ("line-registered (server 1)" if servers == (1,) else "both-registered")
    with Harness(work) as h:
        url = h.redis()
        lab, pids = lab_and_workers(h, name, sites, per_site, boot, slots, per_lab)
        pids["redis"] = h.redis_pid
        inv = inventory.load(lab.inventory)
        site_of = {p.mac: s.name for s in inv.sites for p in s.phones}
        t0 = time.time()
        with CpuMeter(pids) as cpu:
            t_ours = our_rollout(lab.inventory, url, work, 61, phones, slots, Profiler(profile, pids), servers)
        truth = lab.truth(t0, servers)
        truth_phases = truth_registered_after_reboot.phases
        bound = lower_bound(truth, our_rollout.order, site_of, slots)
        textbook = textbook_bound(truth, site_of, slots)
        controller = {k: v for k, v in cpu.used.items() if not k.startswith("lab") and k != "bench process"}
        result.update(ours_s=round(t_ours, 2), span_s=round(our_rollout.span, 2), bound_s=round(bound, 2),
                      textbook_bound_s=round(textbook, 2), ours_over_bound=round(t_ours / bound, 3),
                      span_over_bound=round(our_rollout.span / bound, 3),
                      cpu_s={k: round(v, 2) for k, v in cpu.used.items()},
                      controller_cpu_s_per_phone=round(sum(controller.values()) / phones, 5),
                      redis_bytes_per_phone=round(our_rollout.memory / phones),
                      truth_p50_p95_max=pct(list(truth.values())), phases=our_rollout.phases, steps=our_rollout.steps)
        say(f"case {name}: {phones} phones on {sites} sites, reboot {boot:g} s, max_unavailable {slots} per site, "
            f"a worker per site ({slots} threads), collectors in a process of their own, verify.registered_to "
            f"{list(servers)}")
        say(f"ours (fleet rollout run):  {t_ours:.2f} s as a command ({our_rollout.span:.2f} s recorded span, "
            f"CLI start-up and exit {our_rollout.cli_start:.2f} s)")
        say(f"physical lower bound:      {bound:.2f} s (each phone's own {what} time from the lab's "
            f"ground truth, p50/p95/max {pct(list(truth.values()))} s, on {slots} slots per site in plan order, no "
            f"controller cost); ceil(N/M) x slowest = {textbook:.2f} s")
        say(f"ours / lower bound:        {t_ours / bound:.3f}x as a command, {our_rollout.span / bound:.3f}x recorded span;"
            f" controller overhead {(t_ours - bound) / bound * 100:.1f} % ({(our_rollout.span - bound) / bound * 100:.1f} % "
            "of the span)")
        say(f"  ours: the lab's own p50/p95/max s: {truth_phases}")
        say(f"  ours: {our_rollout.phases}")
        say(f"  ours: {our_rollout.steps}")
        say(f"  ours: {cpu.line()}")
        say(f"  ours: {our_rollout.calls}")
        for line in stragglers(our_rollout.records, lab, t0, over_s=boot + 5.0):   # late past the reboot itself
            say(f"  ours: straggler {line}")
        say(f"  ours: controller CPU {sum(controller.values()) / phones * 1000:.2f} ms per phone (workers, collector, "
            f"CLI, Redis); Redis memory {our_rollout.memory / phones:.0f} bytes per phone (the rollout's records)")
        if with_bare:
            items = calls(lab.inventory, 62)
            t1 = time.time()
            with CpuMeter(pids) as cpu_bare:
                t_bare = bare(items, slots)
            truth_bare = lab.truth(t1, servers)
            result.update(bare_s=round(t_bare, 2), ours_over_bare=round(t_ours / t_bare, 3),
                          bare_cpu_s={k: round(v, 2) for k, v in cpu_bare.used.items()},
                          bare_truth_p50_p95_max=pct(list(truth_bare.values())))
            say(f"bare client ({slots} threads per site): {t_bare:.2f} s   ours/bare = {t_ours / t_bare:.3f}x  "
                "(target <= 1.25x)")
            say(f"  bare: {cpu_bare.line()}; {bare.seen_down} of {phones} phones seen not yet registered with "
                "server 1 by a poll after their restart")
            say(f"  bare: the lab's own {what} p50/p95/max {pct(list(truth_bare.values()))} s; "
                f"{truth_registered_after_reboot.phases}")
    return result


def run_ansible(work: Path, phones: int, say) -> dict:
    with Harness(work) as h:
        h.redis()
        per_site = phones // 2
        spec = lab_spec("ansible", ["s0", "s1"], per_site, 0.0)
        lab = h.lab(spec, "ansible", ready_timeout=120, timeout=None)
        wait_for(lambda: not lab.unsettled(), 120, "every phone registered with both servers", step=1.0)
        t = ansible(calls(lab.inventory, 63), work)
    if t is None:
        say("ansible: skipped (ansible-playbook not found: .venv/bin/pip install ansible-core)")
        return {"case": "ansible", "skipped": True}
    say(f"ansible (forks 50, uri):   {t:.1f} s for {phones} phones, measured (not scaled): {t / phones * 1000:.0f} ms "
        "per phone")
    return {"case": "ansible", "phones": phones, "seconds": round(t, 2)}


SPREAD_KEYS = ("ours_over_bare", "ours_over_bound", "span_over_bound", "controller_cpu_s_per_phone", "ours_s", "bare_s")


def spread(case: str, runs: list[dict]) -> list[str]:
    """Each ratio's median, lowest and highest over the runs of one case (`--repeat`)."""
    import statistics

    out = [f"case {case} over {len(runs)} runs: median (lowest-highest)"]
    for key in SPREAD_KEYS:
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if values:
            out.append(f"  {key:28s} {statistics.median(values):8.3f}  ({min(values):.3f}-{max(values):.3f})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--case", action="append", choices=[*CASES, "ansible"],
                    help="a case to run (repeat for several); default: every case but 10000x10 (`make bench`)")
    ap.add_argument("--ansible-phones", type=int, default=200)
    ap.add_argument("--phones-per-site", type=int, help="fewer (or more) phones per site than the case has: a quick "
                    "check of the bench itself, not a figure to quote")
    ap.add_argument("--profile", type=Path, help="py-spy raw profiles of the CLI and workers into this directory")
    ap.add_argument("--json", action="store_true", help="a JSON line per case at the end")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="run each case N times (a fresh lab each) and end with each ratio's median and range: on a "
                         "machine whose speed varies, one run cannot show a change of a few percent")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat: at least 1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # `timeout` and Ctrl-C both clean up the lab and workers
    results = []
    for case in args.case or ["1000x2", "200-waves", "100-one-wave", "ansible"]:
        runs = []
        for k in range(args.repeat if case != "ansible" else 1):
            work = Path(tempfile.mkdtemp(prefix=f"bench-rollout-{case}-"))
            if case == "ansible":
                runs.append(run_ansible(work, args.ansible_phones, print))
            else:
                if args.repeat > 1:
                    print(f"-- {case}: run {k + 1} of {args.repeat}")
                runs.append(run_case(case, work, args.profile and args.profile / (case if args.repeat == 1 else f"{case}-{k}"), print,
                                     args.phones_per_site))
            print()
        results += runs
        if len(runs) > 1:
            for line in spread(case, runs):
                print(line)
            print()
    if args.json:
        for r in results:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
