"""Reports that line up with the rest of the site (issue 19): wall-clock times in UTC and the local zone, each
phone's IP, extension, model and firmware, each predicted bound's derivation (hover and details row), a lab's
ground truth beside the measurements, and evidence columns people can read. The page is checked as Chromium
renders it, not only as text."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import run_fleet
from fleet.config.inventory import Phone
from fleet.experiment import report
from fleet.experiment.phone_facts import phone_facts
from fleet.experiment.runner import ExperimentResult, StepResult
from fleet.experiment.verdict import OutageWindow, PhoneVerdict, predicted_bounds
from fleet.phoneconf import predict
from fleet.state.store import Store
from hil.groundtruth import GroundTruth

T0 = 1_800_000_000.0            # 2027-01-15 08:00:00 UTC: 09:00:00 in Berlin (CET, +01:00)
UC = "uc-5.x"
PARAMS = {"reg.1.address": "1001@voip.example", "reg.1.server.1.address": "voip.example",
          "reg.1.server.1.retryTimeOut": "400", "reg.1.server.1.retryMaxCount": "3",
          "reg.1.server.1.expires": "10", "reg.1.server.1.expires.overlap": "5",
          "reg.1.server.1.registerRetry.baseTimeOut": "2", "reg.1.server.1.registerRetry.maxTimeOut": "8",
          "reg.1.server.2.address": "192.168.10.1", "reg.1.server.2.retryTimeOut": "400",
          "reg.1.server.2.failOver.reRegisterOn": "1"}


@pytest.fixture
def berlin(monkeypatch):
    """The report's local zone is the process's (TZ): Berlin, an hour ahead of UTC in January."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def sample() -> ExperimentResult:
    """A run of two phones on a site with a router capture: one reported its firmware, one never did; bounds
    and their derivations from fleet.phoneconf.predict on the phones' real parameters."""
    res = ExperimentResult(id="exp19", playbook="wan-outage-fallback", site="hq", started=T0, finished=T0 + 40)
    res.steps = [StepResult("cut", "outage", True, 1.2)]
    res.outages = [{"mode": "link-down", "start": T0 + 10, "end": T0 + 25, "cut": "cut"}]
    res.evidence_sources = ["router capture", "telephone notifications"]
    for i, firmware in enumerate(["5.9.0.12345", None]):
        pred = predicted_bounds(PARAMS | {"reg.1.address": f"100{i + 1}"}, UC, [], OutageWindow(T0 + 10, T0 + 25))
        v = PhoneVerdict(mac=f"0004f200000{i}", model="VVX 410", passed=True, failover_s=6.5 + i, recovery_s=3.0,
                         predicted_failover_max_s=pred.failover_max_s, predicted_recovery_max_s=pred.recovery_max_s,
                         prediction_notes=pred.notes, bounds=pred.derivations, address=f"192.168.10.2{i}",
                         extension=f"100{i + 1}", firmware=firmware, firmware_from="phone" if firmware else None)
        v.timeline = [{"t": T0 + 1, "working_server": 1, "source": "state at start", "server": None},
                      {"t": T0 + 16.5 + i, "working_server": 2, "source": "wire", "server": 2,
                       "state": "registered", "code": 200},
                      {"t": T0 + 16.79 + i, "working_server": 2, "source": "event", "server": None,
                       "state": "registered"},
                      {"t": T0 + 28, "working_server": 1, "source": "wire", "server": 1, "state": "registered",
                       "code": 200}]
        res.phones.append(v)
    res.passed = True
    return res


def test_predicted_bound_derivation_names_its_terms_and_sums_to_the_bound():
    how = predict.failover_derivation(PARAMS, family=UC)
    assert how.seconds == predict.failover_max(PARAMS, family=UC) == 5 + 1.6 + predict.DETECTION_SLACK + 1.6
    text = how.text()
    assert "configured expires 10 s - overlap 5 s" in text and "retryTimeOut 400 ms x (retryMaxCount 3 + 1)" in text
    assert text.endswith(f"= {how.seconds:g} s"), text
    granted = predict.failover_derivation(PARAMS, family=UC, granted=8)
    assert "granted expires 8 s - overlap 5 s" in granted.text()
    # duration failback: the larger of the retry and the failback timeout, both shown
    dur = PARAMS | {"reg.1.server.1.failOver.failBack.mode": "duration", "reg.1.server.1.failOver.failBack.timeout": "30"}
    rec = predict.recovery_bound(dur, family=UC, outage_s=15)
    assert rec.seconds == rec.derivation.seconds == predict.recovery_max(dur, family=UC, outage_s=15) == 31
    assert rec.derivation.text().startswith("the larger of [retry wait") and "failback timeout 30 s" in rec.derivation.text()
    assert [len(p) for p in rec.derivation.to_dict()["paths"]] == [3, 2]


def test_report_json_carries_wall_clock_identity_and_derivations(tmp_path, berlin):
    doc = report.write(sample(), tmp_path)
    again = json.loads((tmp_path / "report.json").read_text())
    assert again == json.loads(json.dumps(doc))
    assert again["wall_clock"]["started"] == {"utc": "2027-01-15T08:00:00.000Z", "local": "2027-01-15T09:00:00.000+01:00",
                                              "zone": "CET", "utc_offset": "+01:00"}
    assert again["wall_clock"]["finished"]["utc"] == "2027-01-15T08:00:40.000Z"
    first, second = again["phones"]
    assert (first["address"], first["extension"], first["model"], first["firmware"]) == \
        ("192.168.10.20", "1001", "VVX 410", "5.9.0.12345")
    assert second["firmware"] is None       # unknown is null in JSON, "unknown" on the page
    assert first["bounds"]["failover"]["seconds"] == first["predicted_failover_max_s"]
    assert "retryTimeOut 400 ms x (retryMaxCount 3 + 1)" in first["bounds"]["failover"]["text"]
    assert {t["term"] for t in first["bounds"]["recovery"]["paths"][0]} == {"retry wait", "transaction timeout",
                                                                           "detection slack"}
    evidence = first["transitions"][0]["evidence"]
    assert [(e["source"], e["code"], e["after_s"]) for e in evidence] == [("wire", 200, 0.0), ("event", None, 0.29)]
    # JUnit names the times and the phones too
    junit = (tmp_path / "junit.xml").read_text()
    assert 'name="started_utc" value="2027-01-15T08:00:00.000Z"' in junit
    assert "192.168.10.21, extension 1002, VVX 410, firmware unknown" in junit


class _Dom(HTMLParser):
    """The rendered DOM's text, the title attributes of the bound cells, and the text inside <details>."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.titles: list[str] = []
        self.details: list[str] = []
        self._in_details = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "td" and "bound" in (a.get("class") or "").split():
            self.titles.append(a.get("title") or "")
        if tag == "details":
            self._in_details += 1

    def handle_endtag(self, tag):
        if tag == "details":
            self._in_details -= 1

    def handle_data(self, data):
        self.text.append(data)
        if self._in_details:
            self.details.append(data)


def _chromium() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; `make test` does this as root)")
    return browser


def _rendered_dom(page: Path, profile: Path) -> _Dom:
    out = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=60, check=True)
    assert "<table" in out.stdout, out.stderr[-2000:]
    dom = _Dom()
    dom.feed(out.stdout)
    return dom


@pytest.mark.lab
def test_rendered_page_shows_wall_clock_firmware_and_each_bound_explained(tmp_path, berlin):
    doc = report.write(sample(), tmp_path)
    dom = _rendered_dom(tmp_path / "report.html", tmp_path / "profile")
    text = " ".join(" ".join(dom.text).split())
    # wall clock: UTC and local with the zone's name and offset; the timeline's ticks and events in wall time
    assert "started 2027-01-15 08:00:00.000 UTC (2027-01-15 09:00:00.000 CET, UTC+01:00)" in text, text[:600]
    assert "finished 2027-01-15 08:00:40.000 UTC (2027-01-15 09:00:40.000 CET, UTC+01:00)" in text
    assert "09:00:10" in text and "+10 s" in text and "09:00:16.500 server 2: 200 (wire)" in text
    # who each phone is; a firmware nobody reported is "unknown", never "None"
    assert "192.168.10.20 1001 VVX 410 5.9.0.12345" in text and "192.168.10.21 1002 VVX 410 unknown" in text
    assert "None" not in text
    # each bound explained on hover (title) and in a details row, per phone
    p = doc["phones"][0]
    for measure in ("failover", "recovery"):
        assert p["bounds"][measure]["text"] in dom.titles
        assert f"{measure}: {p['bounds'][measure]['text']}" in " ".join(dom.details)
    assert len(dom.titles) == 4 and all("retryTimeOut 400 ms x (retryMaxCount 3 + 1)" in t for t in dom.titles)
    assert "how 0004f2000001's bounds were derived" in text
    # the evidence column says what each source saw and when
    assert ("server 1 -> server 2 at 09:00:16.500: evidence: router capture (REGISTER 200 OK at 09:00:16.500), "
            "telephone notification (line registered at 09:00:16.790, +0.29 s)") in text


def _lab_truth(tmp_path: Path) -> Path:
    """The lab's ground truth in the shape `hil status --json` prints, made by the lab's own recorder: phone 0
    reached server 2 at +16.0 s (measured 16.5 - 10 = 6.5) and server 1 again 2.8 s after the restore."""
    truth = GroundTruth()
    for mac, changes in (("0004f2000000", [(T0 + 1, 1), (T0 + 16.0, 2), (T0 + 27.8, 1)]),
                         ("0004f2000001", [(T0 + 1, 1), (T0 + 17.4, 2)])):
        for t, server in changes:
            truth.record(mac, "working_server", server=server)
            truth.events[mac][-1].t = t
        truth.record(mac, "call", to="1002")
    path = tmp_path / "truth.json"
    path.write_text(json.dumps({"lab": "e2e", "ground_truth": truth.snapshot(), "phones": []}))
    return path


def test_lab_ground_truth_stands_beside_the_measurement(tmp_path, berlin, redis_url):
    """`fleet experiment report DIR --ground-truth FILE`: measured, true and difference per phone, in the page and
    in report.json; the truth file names nothing fleet measures by (it is the lab's)."""
    report.write(sample(), tmp_path / "run")
    res = run_fleet(["experiment", "report", str(tmp_path / "run"), "--ground-truth", str(_lab_truth(tmp_path))],
                    redis_url, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "0004f2000000: failover 6.50 s, truth 6.00 s (+0.50 s); recovery 3.00 s, truth 2.80 s (+0.20 s)" in res.stdout
    doc = json.loads((tmp_path / "run/report.json").read_text())
    rows = {p["mac"]: p for p in doc["ground_truth"]["phones"]}
    assert rows["0004f2000000"]["failover"] == {"measured_s": 6.5, "truth_s": 6.0, "difference_s": 0.5}
    assert rows["0004f2000000"]["recovery"] == {"measured_s": 3.0, "truth_s": 2.8, "difference_s": 0.2}
    assert rows["0004f2000001"]["recovery"] == {"measured_s": 3.0, "truth_s": None, "difference_s": None}
    assert report.signed(-0.001) == report.signed(0.004) == "0.00" and report.signed(-0.25) == "-0.25"
    page = (tmp_path / "run/report.html").read_text()
    assert "Ground truth from" in page and "<th>truth s</th><th>difference s</th>" in page
    assert '<td class="truth" data-measure="failover">6.00</td><td class="difference" data-measure="failover">+0.50</td>' in page


def test_a_bad_ground_truth_file_names_file_line_and_field_and_changes_nothing(tmp_path, redis_url):
    report.write(sample(), tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    broken = tmp_path / "broken.json"
    broken.write_text('{"ground_truth": {"phones": {\n  "0004f2000000": {"events": [\n    {"t": "soon", '
                      '"kind": "working_server", "data": {"server": 2}}]}}}}\n')
    res = run_fleet(["experiment", "report", str(tmp_path / "run"), "--ground-truth", str(broken)], redis_url, timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"{broken}: ground_truth.phones.0004f2000000.events[0].t: 'soon' is not a time" in res.stderr
    notjson = tmp_path / "notjson.json"
    notjson.write_text('{"ground_truth":\n  {"phones": ,}}')
    res = run_fleet(["experiment", "report", str(tmp_path / "run"), "--ground-truth", str(notjson)], redis_url, timeout=60)
    assert res.returncode == 2 and f"{notjson}:2: not JSON" in res.stderr, res.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before
    res = run_fleet(["experiment", "report", str(tmp_path / "nowhere")], redis_url, timeout=60)
    assert res.returncode == 2 and "nowhere/report.json: cannot read the report" in res.stderr, res.stderr


def test_firmware_the_phone_reported_reaches_the_report_else_the_inventorys(redis_url):
    """The collector records what the phone reported in the phone's hash (Store.set_phone_info);
    the run's phone facts read it from there, fall back on the inventory's firmware_version, else unknown."""
    store = Store(redis_url)
    macs = ["0004f2a19001", "0004f2a19002", "0004f2a19003"]
    store.register_phones("rep19", [{"mac": m, "model": "VVX 410", "address": f"192.168.19.{i}"} for i, m in enumerate(macs)])
    store.set_phone_info({macs[0]: {"firmware": "5.9.0.12345", "in_call": False}})
    stored = {row["mac"]: row for row in store.phones("rep19")}
    phones = [Phone(mac=macs[0], model="VVX 410", address="192.168.19.0", credentials="admin", firmware_version="5.8.0"),
              Phone(mac=macs[1], model="VVX 410", address="192.168.19.1", credentials="admin", firmware_version="5.8.0"),
              Phone(mac=macs[2], model="VVX 410", address="192.168.19.2", credentials="admin")]
    facts = [phone_facts(p, PARAMS, stored.get(p.mac)) for p in phones]
    assert [(f.firmware, f.firmware_from) for f in facts] == [("5.9.0.12345", "phone"), ("5.8.0", "inventory"),
                                                              (None, None)]
    assert (facts[0].address, facts[0].extension) == ("192.168.19.0", "1001")
    p = {"firmware": facts[1].firmware, "firmware_from": facts[1].firmware_from}
    assert report.firmware_text(p) == "5.8.0 (inventory's firmware_version)"
    assert report.firmware_text({"firmware": None}) == "unknown"
