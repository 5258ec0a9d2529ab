"""Reports: JSON fields, JUnit structure, and an HTML timeline that really renders in a browser."""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest

from fleet.experiment import report
from fleet.experiment.runner import ExperimentResult, StepResult
from fleet.experiment.verdict import PhoneVerdict


def sample() -> ExperimentResult:
    t0 = 1_800_000_000.0
    res = ExperimentResult(id="exp1", playbook="wan-outage-fallback", site="hq", started=t0, finished=t0 + 40, passed=False)
    res.steps = [StepResult("cut", "outage", True, 1.2), StepResult("fall back", "expect", False, 9.0, "1/2 phones not on server 2")]
    res.outages = [{"mode": "link-down", "start": t0 + 10, "end": t0 + 25}]
    for i, (fo, ok) in enumerate([(6.5, True), (None, False)]):
        v = PhoneVerdict(mac=f"0004f200000{i}", model="VVX 410", passed=ok, failover_s=fo, recovery_s=3.0 if ok else None,
                         predicted_failover_max_s=8.6, predicted_recovery_max_s=5.6)
        v.timeline = [{"t": t0 + 1, "working_server": 1}, {"t": t0 + 16.5, "working_server": 2 if ok else None},
                      {"t": t0 + 28, "working_server": 1}]
        v.checks = [{"name": "fall back", "passed": ok, "message": "" if ok else "never moved to server 2"}]
        if not ok:
            v.reasons = ["fall back: never moved to server 2"]
        res.phones.append(v)
    return res


def test_report_json_has_the_documented_fields(tmp_path):
    doc = report.write(sample(), tmp_path)
    again = json.loads((tmp_path / "report.json").read_text())
    assert again == json.loads(json.dumps(doc))
    assert again["passed"] is False
    assert {"name", "passed", "elapsed_s"} <= set(again["steps"][0])
    assert {"mac", "passed", "failover_s", "recovery_s", "predicted_failover_max_s", "predicted_recovery_max_s",
            "timeline"} <= set(again["phones"][0])
    assert again["summary"]["failover_s"] == {"count": 1, "p50": 6.5, "p95": 6.5, "max": 6.5}


def test_junit_has_a_case_per_step_and_per_phone_expectation(tmp_path):
    report.write(sample(), tmp_path)
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert suite.get("tests") == "4" and suite.get("failures") == "2"
    failed = [c.get("classname") + "/" + c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == ["hq.steps/fall back", "hq.0004f2000001/fall back"]


def _png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """A small PNG reader (8-bit RGB/RGBA, non-interlaced), enough to count colours in a screenshot."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and ctype in (2, 6)
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    pixels = [row[i:i + 3] for row in rows for i in range(0, stride, bpp)]
    return width, height, pixels


@pytest.mark.lab
def test_html_timeline_renders_in_headless_chromium(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; `make test` does this as root)")
    report.write(sample(), tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "<script" not in page
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,900", f"--screenshot={shot}",
                    (tmp_path / "report.html").as_uri()], capture_output=True, timeout=60, check=True)
    _, _, pixels = _png_pixels(shot)
    counts = {name: sum(1 for p in pixels if p == bytes.fromhex(colour))
              for name, colour in (("server1", "2e7d32"), ("server2", "f9a825"), ("none", "c62828"))}
    # both lanes drawn: green (server 1) for most of the run, yellow (server 2) during the outage for the good phone,
    # red (no working server) for the one that never failed over
    assert counts["server1"] > 2000 and counts["server2"] > 300 and counts["none"] > 300, counts


def test_report_names_servers_not_observable_on_the_wire_and_failing_sources(tmp_path):
    """The collector's report reaches the experiment report: a TLS-only server is "not observable on the wire"
    (JSON and HTML), not a silent gap; a failing evidence source is named with why."""
    res = sample()
    res.unobservable = [{"mac": "0004f2000001", "reg": 1, "server": 2, "address": "203.0.113.20:5061",
                         "reason": "not observable on the wire", "why": "registers over TLS (encrypted)"}]
    res.evidence_errors = [{"source": "router capture", "running": False, "since": res.started,
                            "error": "PcapFormatError: not a pcap stream"}]
    doc = report.write(res, tmp_path)
    again = json.loads((tmp_path / "report.json").read_text())
    assert again["unobservable"] == res.unobservable and again["evidence_errors"] == res.evidence_errors
    page = (tmp_path / "report.html").read_text()
    assert "Not observable on the wire" in page and "registers over TLS (encrypted)" in page
    assert "203.0.113.20:5061" in page and "router capture" in page and "not a pcap stream" in page
    plain = report.html(doc | {"unobservable": [], "evidence_errors": []})
    assert "Not observable on the wire" not in plain and "Evidence sources not working" not in plain


def test_report_lists_foreign_sip_per_source(tmp_path):
    """Issue 17: SIP naming the site's phones from addresses not theirs is counted by the collector and named in
    the report (JSON and HTML), never taken as a phone's state."""
    res = sample()
    res.evidence_foreign = [{"source": "hep", "foreign": {"192.168.10.66": 4, "192.168.10.67": 1}, "total": 5}]
    doc = report.write(res, tmp_path)
    assert json.loads((tmp_path / "report.json").read_text())["evidence_foreign"] == res.evidence_foreign
    page = (tmp_path / "report.html").read_text()
    assert "Foreign SIP" in page and "192.168.10.66: 4, 192.168.10.67: 1" in page
    assert "Foreign SIP" not in report.html(doc | {"evidence_foreign": []})
