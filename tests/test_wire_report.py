"""Reports name the sources behind every transition, mark REGISTER outcomes per server, and keep capture.pcap."""
from __future__ import annotations

import base64
import json

import dpkt

from fleet.experiment import report
from fleet.evidence.wire.pcap import iter_pcap
from fleet.evidence.wire.attribution import Attribution, WireTarget
from fleet.evidence.wire.pipeline import WireEvidence
from fleet.experiment.runner import ExperimentResult
from fleet.state.observe import REGISTERED
from fleet.experiment.verdict import PhoneVerdict
from sipwire import message as sip

T0 = 1_800_000_000.0
MAC = "0004f2000001"
PHONE, PROVIDER = ("192.168.1.10", 5060), ("203.0.113.10", 5060)


def _lane() -> list[dict]:
    def o(dt, ws, source, server=None, state=None, code=None):
        return {"t": T0 + dt, "working_server": ws, "source": source, "server": server, "state": state,
                "kind": "registration", **({"code": code} if code else {})}
    return [o(0, 1, "state at start"),
            o(1, 1, "wire", 1, "registered", 200), o(1.2, 1, "hep", 2, "registered", 200),
            o(12, 2, "wire", 1, "unregistered"),          # the primary's REGISTER went unanswered: failover
            o(12.4, 2, "gateway", 2, "registered"),       # the gateway still holds the binding
            o(13, 2, "gateway", 2, "registered"),         # a repeated poll: no new mark
            o(30, 1, "wire", 1, "registered", 200),       # recovery
            o(30.1, 1, "event", None, "registered")]


def _register_rows() -> list[dict]:
    req = sip.make_request("REGISTER", f"sip:{PROVIDER[0]}", local=PHONE, from_uri="sip:1001@example.com",
                           to_uri="sip:1001@example.com", call_id="c1@x", cseq=1, from_tag="a",
                           contact="<sip:1001@192.168.1.10:5060>", extra=[("Expires", "60")])
    resp = sip.make_response(req, 200, "OK", extra=[("Expires", "60")])
    return [{"t": T0 + 30, "src": list(PHONE), "dst": list(PROVIDER), "source": "wire",
             "payload": base64.b64encode(req.encode()).decode()},
            {"t": T0 + 30.05, "src": list(PROVIDER), "dst": list(PHONE), "source": "wire",
             "payload": base64.b64encode(resp.encode()).decode()},
            {"t": T0 + 31, "src": ["not an address"], "dst": [], "source": "wire", "payload": "!!"}]


def _result() -> ExperimentResult:
    res = ExperimentResult(id="exp1", playbook="wan", site="hq", started=T0, finished=T0 + 40, passed=True)
    v = PhoneVerdict(mac=MAC, model="SoundPoint IP 650", failover_s=12.0, recovery_s=5.0)
    v.timeline = _lane()
    res.phones.append(v)
    res.outages = [{"mode": "drop", "start": T0 + 10, "end": T0 + 25}]
    res.capture = _register_rows()
    return res


def test_transitions_name_the_sources_that_saw_them():
    trs = report.transitions(_lane())
    assert [(t["from"], t["to"], t["sources"]) for t in trs] == [
        (1, 2, {"wire": 0.0, "gateway": 0.4}),
        (2, 1, {"wire": 0.0, "event": 0.1})]
    assert report.phone_sources(_lane()) == {"wire": 3, "hep": 1, "gateway": 2, "event": 1}


def test_report_keeps_the_capture_and_marks_register_outcomes(tmp_path):
    doc = report.write(_result(), tmp_path)
    again = json.loads((tmp_path / "report.json").read_text())
    assert again["capture"] == {"file": "capture.pcap", "datagrams": 3, "left_out": 0, "sources": {"wire": 3},
                                "written": 2}
    assert again["phones"][0]["transitions"][0]["sources"] == {"wire": 0.0, "gateway": 0.4}
    # the pcap opens with dpkt, and our own pipeline finds the registration in it again
    with open(tmp_path / "capture.pcap", "rb") as f:
        packets = list(dpkt.pcap.Reader(f))
    assert len(packets) == 2 and packets[0][0] == T0 + 30
    ev = WireEvidence(Attribution([WireTarget(MAC, 1, 1, PROVIDER, "1001")]))
    with open(tmp_path / "capture.pcap", "rb") as f:
        obs = [o for r in iter_pcap(f) for o in ev.feed_frame(r.t, r.linktype, r.frame)]
    assert [(o.mac, o.server, o.state, o.code, o.expires) for o in obs] == [(MAC, 1, REGISTERED, 200, 60)]
    page = (tmp_path / "report.html").read_text()
    marks = page.count('class="register"')
    assert marks == 5, "wire and HEP outcomes each, a gateway poll only when its state changes"
    assert 'data-server="2" data-source="hep" data-code="200"' in page
    at = report.clock_time        # the page's times of day are the local zone's
    assert (f"server 1 -&gt; server 2 at {at(T0 + 12)}: evidence: SIP capture (REGISTER unanswered at {at(T0 + 12)}), "
            f"gateway bindings (server 2 registered at {at(T0 + 12.4)}, +0.4 s)") in page and "capture.pcap" in page
    assert doc["phones"][0]["sources"]["wire"] == 3


def test_capture_pcap_is_readable_by_its_owner_only(tmp_path):
    """Issue 17: capture.pcap was written 0644, with every phone's digest responses in it; an existing file keeps
    no wider mode either."""
    (tmp_path / "capture.pcap").write_bytes(b"old")
    (tmp_path / "capture.pcap").chmod(0o644)
    report.write(_result(), tmp_path)
    assert (tmp_path / "capture.pcap").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "capture.pcap").read_bytes()[:4] != b"old"
