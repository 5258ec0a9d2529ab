"""Issue 19: `make demo` runs on the evidence a real site has (SIP captured on the router, the phones' telephone
notification events) and not on the registration log line our lab invented; the syslog demo is `make demo-syslog`.

The demo itself runs here as `make demo` runs it (`python -m hil.demo`), on a copy of its lab file moved to this
module's lab net and free collector ports, so that a `make demo` running beside the suite is not disturbed.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import free_port
from hil import demo, labfile
from hil.inventory_export import evidence_sources

ROOT = Path(__file__).resolve().parent.parent


def _make_n(target: str) -> list[str]:
    """The commands `make TARGET` would run (make -n), as lines."""
    out = subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def _demo_lab(line: str) -> Path:
    """The lab file of a `python -m hil.demo [--lab FILE]` command line (hil.demo's default without --lab)."""
    words = line.split()
    return ROOT / words[words.index("--lab") + 1] if "--lab" in words else demo.LAB_FILE


def test_make_demo_runs_the_wire_lab_without_the_syslog_registration_line():
    """Before: `make demo` ran hil/labs/one-site.yml, whose phones send the registration log line."""
    runs = [line for line in _make_n("demo") if "-m hil.demo" in line]
    assert len(runs) == 1, runs
    lab_file = _demo_lab(runs[0])
    assert lab_file == ROOT / "hil/labs/demo-wire.yml" == demo.LAB_FILE
    spec = labfile.load(lab_file)
    assert spec.syslog_registration_line is False
    # what is left is the wire: the lab's inventory names the router's capture for every site
    assert all(evidence_sources(spec, site) == ["router"] for site in spec.sites)


def test_make_demo_syslog_keeps_the_syslog_demo():
    runs = [line for line in _make_n("demo-syslog") if "-m hil.demo" in line]
    assert len(runs) == 1 and _demo_lab(runs[0]) == demo.SYSLOG_LAB_FILE == ROOT / "hil/labs/one-site.yml", runs
    assert labfile.load(demo.SYSLOG_LAB_FILE).syslog_registration_line is True


@pytest.mark.slow
@pytest.mark.timeout(280)
def test_the_demo_passes_on_the_wire_and_the_events_with_no_registration_log_line(tmp_path):
    spec = yaml.safe_load(demo.LAB_FILE.read_text())
    assert "net" not in spec       # `auto`: the suite's other labs, or a demo running beside it, hold theirs
    for site in spec["sites"]:
        site["collector"] = dict(site.get("collector") or {}, syslog=f"127.0.0.1:{free_port()}",
                                 events=f"127.0.0.1:{free_port()}")
    lab_file = tmp_path / "demo-lab.yml"
    lab_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    reports = tmp_path / "reports"
    proc = subprocess.Popen([sys.executable, "-m", "hil.demo", "--lab", str(lab_file), "--report-dir", str(reports)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)        # the demo restores the WAN and takes its lab down, as on Ctrl-C
        out, _ = proc.communicate(timeout=30)
        pytest.fail(f"the demo did not end within 240 s; its output: {out[-6000:]}")
    assert proc.returncode == 0, out[-6000:]
    assert ("demo: evidence: SIP on the wire (router lan0) and telephone notification events, as a real site has "
            "them; no registration log line") in out, out[:3000]
    assert "PASSED: 10/10 phones" in " ".join(out.split()), out[-6000:]
    assert "ground truth: every phone agrees within the sampling interval" in out, out[-3000:]
    [report_dir] = [d for d in reports.iterdir() if d.is_dir()]
    report = json.loads((report_dir / "report.json").read_text())
    assert report["passed"] and len(report["phones"]) == 10
    for phone in report["phones"]:      # every measured change came from the wire, none from a log line
        assert "wire" in phone["sources"] and "syslog" not in phone["sources"], phone["sources"]
    assert (report_dir / "report.html").is_file() and (report_dir / "capture.pcap").stat().st_size > 0
