"""A 1,000-phone rollout on the virtual lab vs the same push-reboot-verify calls from Ansible and from a bare client.

1. ours: `fleet rollout run` (Redis, two real workers, every step recorded, resumable), instant reboot;
2. bare: a thread pool of 50 with requests: PUT the phone's file, POST safeRestart, poll lineInfo until registered;
3. ansible: ansible-core, `uri` module, forks 50, the same three calls per phone (on --ansible-phones phones,
   scaled to the full count, because Ansible takes minutes per few hundred hosts).
Then the controller overhead: a rollout of --overhead-phones phones that take --boot-time seconds to reboot,
compared with the time the phones themselves take from reboot to registration (the lab's ground truth).
Run: .venv/bin/python -u bench/rollout.py [--phones 1000] [--ansible-phones 100]
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
from soundpoint.redisboot import free_port  # noqa: E402
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


def lab_spec(name: str, net: int, phones: int, boot_time: float) -> dict:
    per_site = phones // 2
    site = lambda n: {"name": n, "phones": {"count": per_site, "models": ["VVX 410"]},  # noqa: E731
                      "servers": [{"address": "provider", "expires": 60, "overlap": 10, "retry_timeout_ms": 500},
                                  {"address": "gateway", "expires": 60, "overlap": 10, "retry_timeout_ms": 500}],
                      "collector": {"syslog": f"127.0.0.1:{free_port()}", "events": f"127.0.0.1:{free_port()}"}}
    return {"name": name, "net": net, "firmware_family": "uc-5.x",
            "timing": {"boot_time": boot_time, "boot_jitter": 5, "retry_interval": 5, "log_upload_period": 0, "dns_ttl": 30,
                       "test_speed": True},
            "sites": [site("east"), site("west")]}


def lab_and_workers(h: Harness, name: str, net: int, phones: int, boot_time: float) -> tuple[Lab, dict[str, int]]:
    """The lab, then the deployment docker-compose.yml describes: a worker per site without collectors (25 threads
    each) and the collectors as a process of their own. Returns the lab and the pids to meter."""
    lab = h.lab(lab_spec(name, net, phones, boot_time), name, ready_timeout=180, timeout=None)
    workers = h.workers(lab.inventory, ("east", "west"), extra=("--concurrency", "25", "--pool", "threads"))
    collector = h.collector(lab.inventory, ("east", "west"))
    # `hil up` returns once every phone has a working server; the second registrations are still under way
    wait_for(lambda: not lab.unsettled(), 120, "every phone registered with both servers", step=1.0)
    return lab, {"lab": lab.pid, **{f"worker {i}": w.pid for i, w in enumerate(workers)}, "collector": collector.pid}


def our_rollout(inv: Path, url: str, work: Path, expires: int, phones: int, max_unavailable: int) -> float:
    pb = work / f"pb-{expires}.yml"
    pb.write_text(yaml.safe_dump({"kind": "rollout", "name": "bench", "params": {"reg.1.server.1.expires": expires},
                                  "strategy": {"canary": 0, "wave_size": phones, "max_unavailable": max_unavailable,
                                               "failure_budget": {"total": 0}, "progress_deadline": 900},
                                  "verify": {"registered_to": [1, 2], "within": 120}}))
    env = dict(os.environ, FLEET_REDIS_URL=url)
    t0 = time.perf_counter()
    res = subprocess.run([BIN / "fleet", "rollout", "run", str(pb), "--inventory", str(inv), "--json"], env=env,
                         capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    out = json.loads(res.stdout)
    assert out["status"] == "done" and out["counts"].get("verified") == phones, out
    from fleet.state.store import RolloutStore, Store

    rs = RolloutStore(Store(url))
    created = float(rs.get_field(out["id"], "created"))
    our_rollout.span = float(rs.get_field(out["id"], "finished")) - created   # its own recorded span, no CLI start-up
    records = rs.phones(out["id"], rs.macs(out["id"]), full=True).values()
    stamps = [[float(rec[k]) for k in ("dispatched_at", "reboot_at", "settled_at")] for rec in records
              if all(rec.get(k) for k in ("dispatched_at", "reboot_at", "settled_at"))]

    def pct(values: list[float]) -> str:
        values = sorted(values)
        return "/".join(f"{values[min(len(values) - 1, int(q * len(values)))]:.2f}" for q in (0.5, 0.95, 1.0))

    our_rollout.phases = (f"p50/p95/max s: dispatched after start {pct([d - created for d, _, _ in stamps])}, "
                          f"reboot after dispatch {pct([b - d for d, b, _ in stamps])}, "
                          f"verified after reboot {pct([v - b for _, b, v in stamps])}; "
                          f"CLI start to recorded start {elapsed - our_rollout.span:.2f}")
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
            out.append({"mac": p.mac, "put": site.boot_server.url + f"{p.mac}-fleet.cfg", "master": site.boot_server.url + f"{p.mac}.cfg",
                        "files": files, "boot": (boot.username, boot.password), "rest": f"http://{p.address}:{p.http_port}",
                        "admin": (secrets.credentials(p.credentials).username, secrets.credentials(p.credentials).password)})
    return out


def bare(items: list[dict], pool: int = 50) -> float:
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
                if r.ok and r.json()["data"][0]["RegistrationStatus"] == "registered":
                    return
            except (requests.RequestException, ValueError, KeyError, IndexError):
                pass
            time.sleep(0.2)   # the measured client's poll interval: part of the experiment
        raise RuntimeError(f"{it['mac']} did not re-register")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(pool) as threads:
        list(threads.map(one, items))
    return time.perf_counter() - t0


def ansible(items: list[dict], work: Path) -> float | None:
    if not shutil.which("ansible-playbook", path=str(BIN)) and not shutil.which("ansible-playbook"):
        return None
    hosts = {f"p{i}": {"ansible_connection": "local", "put_url": it["put"], "master_url": it["master"],
                       "body": it["files"][it["put"].rsplit("/", 1)[1]].decode(),
                       "master_body": it["files"][it["master"].rsplit("/", 1)[1]].decode(), "rest": it["rest"]}
             for i, it in enumerate(items)}
    boot_user, boot_pw = items[0]["boot"]
    admin_user, admin_pw = items[0]["admin"]
    (work / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": hosts, "vars": {
        "ansible_python_interpreter": sys.executable, "boot_user": boot_user, "boot_pw": boot_pw,
        "admin_user": admin_user, "admin_pw": admin_pw}}}))
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


def own_reboot_times(state: Path, since: float) -> list[float]:
    truth = ground_truth(state)
    out = []
    for p in truth.values():
        ev = p["events"]
        for i, e in enumerate(ev):
            if e["kind"] == "reboot" and e["t"] >= since:
                boot = next((j for j in range(i + 1, len(ev)) if ev[j]["kind"] == "boot"), len(ev))
                back = next((x["t"] for x in ev[boot:] if x["kind"] == "working_server" and x["data"]["server"]), None)
                if back:
                    out.append(back - e["t"])
    return out


def truth_registered_after_reboot(state: Path, since: float) -> list[float]:
    """Per phone, from the lab's ground truth: seconds from its reboot until both servers are registered again."""
    truth = ground_truth(state)
    out = []
    for p in truth.values():
        reboot = next((e["t"] for e in p["events"] if e["kind"] == "reboot" and e["t"] >= since), None)
        if reboot is None:
            continue
        up: dict[int, float] = {}
        for e in p["events"]:
            if e["t"] > reboot and e["kind"] == "server_state" and e["data"]["state"] == "registered":
                up.setdefault(e["data"]["server"], e["t"])
        if len(up) >= 2:
            out.append(max(up.values()) - reboot)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phones", type=int, default=1000)
    ap.add_argument("--ansible-phones", type=int, default=100)
    ap.add_argument("--overhead-phones", type=int, default=100)
    ap.add_argument("--boot-time", type=float, default=20.0)
    ap.add_argument("--pool", type=int, default=50, help="the bare client's threads; ours may have as many phones down at once")
    ap.add_argument("--skip-ansible", action="store_true")
    ap.add_argument("--skip-overhead", action="store_true")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # `timeout` and Ctrl-C both clean up the lab and workers
    work = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    with Harness(work) as outer:
        url = outer.redis()
        with Harness(work, redis_url=url) as h:
            lab, pids = lab_and_workers(h, "bench", 57, args.phones, 0.0)
            pids["redis"] = outer.redis_pid
            state, inv = lab.state, lab.inventory
            t0 = time.time()
            with CpuMeter(pids) as cpu_ours:
                # as many phones down at once as the bare client has threads (25 per site): the same registration storm
                t_ours = our_rollout(inv, url, work, 61, args.phones, max_unavailable=args.pool // 2)
            back = sorted(truth_registered_after_reboot(state, t0))
            items = calls(inv, 62)
            t1 = time.time()
            with CpuMeter(pids) as cpu_bare:
                t_bare = bare(items, args.pool)
            back_bare = sorted(truth_registered_after_reboot(state, t1))
            print(f"phones:                  {args.phones} (instant reboot), 2 sites, 2 workers")
            print(f"ours (fleet rollout):    {t_ours:.1f} s")
            print(f"bare thread pool (50):   {t_bare:.1f} s   ours/bare = {t_ours / t_bare:.2f}x  (target <= 2x)")
            print(f"  ours: {cpu_ours.line()}")
            print(f"  ours: {our_rollout.phases}")
            print(f"  ours: the lab's own reboot-to-both-servers-registered p50/max {back[len(back) // 2]:.2f}/{back[-1]:.2f} s")
            print(f"  bare: {cpu_bare.line()}")
            print(f"  bare: the lab's own reboot-to-both-servers-registered p50/max {back_bare[len(back_bare) // 2]:.2f}/{back_bare[-1]:.2f} s")
            t_ans = None if args.skip_ansible else ansible(calls(inv, 63)[: args.ansible_phones], work)
            if t_ans is None:
                print("ansible:                 skipped (pip install ansible-core, or `make bench`)")
            else:
                scaled = t_ans * args.phones / args.ansible_phones
                print(f"ansible (forks 50):      {t_ans:.1f} s for {args.ansible_phones} phones, {scaled:.0f} s scaled to {args.phones}"
                      f"   ansible/ours = {scaled / t_ours:.0f}x  (target >= 100x)")
        if args.skip_overhead:
            return
        # overhead with phones that take a realistic while to reboot
        with Harness(work, redis_url=url) as h:
            lab, _ = lab_and_workers(h, "slow", 58, args.overhead_phones, args.boot_time)
            t0 = time.time()
            t_slow = our_rollout(lab.inventory, url, work, 64, args.overhead_phones, max_unavailable=args.overhead_phones)
            own = own_reboot_times(lab.state, t0)
            print(f"overhead run:            {args.overhead_phones} phones rebooting in ~{args.boot_time:g} s, all at once")
            span = our_rollout.span
            print(f"rollout wall time:       {t_slow:.1f} s with CLI start-up, {span:.1f} s recorded span; "
                  f"the phones' own reboot-to-registered max {max(own):.1f} s")
            print(f"controller overhead:     {(span - max(own)) / max(own) * 100:.1f}% of the span "
                  f"({(t_slow - max(own)) / max(own) * 100:.1f}% with CLI start-up)  (target <= 5%)")

if __name__ == "__main__":
    main()
