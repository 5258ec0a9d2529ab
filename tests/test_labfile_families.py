"""Lab files name firmware families their models really run, with timers inside the families' real ranges."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from soundpoint.yamlfile import FileError
from hil import labfile

ROOT = Path(__file__).resolve().parent.parent
SERVERS = [{"address": "provider", "expires": 12, "overlap": 5}, {"address": "gateway", "expires": 12, "overlap": 5}]


def lab(tmp_path: Path, timing: dict | None = None, family: str = "uc-5.x", **site) -> Path:
    doc = {"name": "t", "firmware_family": family,
           "timing": {"retry_interval": 10, "fixed_retry": 30, **(timing or {})},
           "sites": [{"name": "hq", "phones": {"count": 4, "models": ["VVX 410"]}, "servers": SERVERS, **site}]}
    path = tmp_path / "lab.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_example_labs_use_families_their_models_run():
    for path in sorted((ROOT / "hil/labs").glob("*.yml")):
        spec = labfile.load(path)
        assert not spec.timing.test_speed, path
        for k, site in enumerate(spec.sites):
            for i in range(site.phones.count):
                model, family = site.phones.model_of(i), spec.phone_family(k, i)
                assert family == ("uc-5.x" if model.startswith("VVX") else "uc-4.0"), (path, model, family)


def test_soundpoint_on_uc5_is_rejected_naming_the_field(tmp_path):
    path = lab(tmp_path, phones={"count": 2, "models": ["SoundPoint IP 650", "VVX 410"]})
    with pytest.raises(FileError, match="SoundPoint IP 650 cannot run UC Software 5.x") as exc:
        labfile.load(path)
    assert str(exc.value).startswith(f"{path}:2: firmware_family")
    path = lab(tmp_path, family="sip-3.x", phones={"count": 2, "models": ["SoundPoint IP 650"],
                                                     "families": {"SoundPoint IP 650": "uc-5.x"}})
    with pytest.raises(FileError, match=r"sites\[0\]\.phones\.families\.SoundPoint IP 650: SoundPoint IP 650 cannot run"):
        labfile.load(path)
    path = lab(tmp_path, phones={"count": 2, "models": ["VVX 410"], "family_of": {1: "sip-3.x"}})
    with pytest.raises(FileError, match=r"family_of\[1\]: VVX 410 cannot run"):
        labfile.load(path)


def test_family_per_site_model_and_phone(tmp_path):
    path = lab(tmp_path, family="sip-3.x", firmware_family="uc-4.0",
               servers=[{"address": "provider", "expires": 300, "overlap": 60}],   # 300: the SIP 3.x minimum
               phones={"count": 4, "models": ["SoundPoint IP 650", "VVX 410"], "families": {"VVX 410": "uc-5.x"},
                       "family_of": {2: "sip-3.x"}})
    spec = labfile.load(path)
    assert [spec.phone_family(0, i) for i in range(4)] == ["uc-4.0", "uc-5.x", "sip-3.x", "uc-5.x"]


@pytest.mark.parametrize("timing,site,field,words", [
    ({"retry_interval": 4}, {}, "timing.retry_interval", "registerRetry.baseTimeOut=4: out of range 10..120"),
    ({"retry_max": 30}, {}, "timing.retry_max", "registerRetry.maxTimeOut=30: out of range 60..1800"),
    ({"fixed_retry": 5}, {"phones": {"count": 1, "models": ["SoundPoint IP 650"], "families": {"SoundPoint IP 650": "uc-4.0"}}},
     "timing.fixed_retry", "fixed interval of 30 to 60 s"),
    ({}, {"servers": [{"address": "provider", "expires": 5, "overlap": 2}]}, "sites[0].servers[0].expires", "out of range"),
])
def test_timers_outside_the_real_ranges_are_rejected(tmp_path, timing, site, field, words):
    with pytest.raises(FileError, match=re.escape(field) + ": .*" + re.escape(words)):
        labfile.load(lab(tmp_path, timing, **site))


def test_sip3_expires_minimum(tmp_path):
    path = lab(tmp_path, family="sip-3.x", phones={"count": 1, "models": ["SoundPoint IP 650"]})
    with pytest.raises(FileError, match=r"expires=12: out of range 300\.\."):
        labfile.load(path)


def test_test_speed_allows_fast_timers_and_picks_a_family_the_model_runs(tmp_path):
    path = lab(tmp_path, {"retry_interval": 3, "test_speed": True},
               phones={"count": 2, "models": ["SoundPoint IP 650", "VVX 410"]})
    spec = labfile.load(path)
    assert [spec.phone_family(0, i) for i in range(2)] == ["uc-4.0", "uc-5.x"]
    assert spec.retry_max == 3          # no backoff in a test lab unless asked for


FB = "reg.1.server.1.failOver.failBack."


def test_parameters_per_phone_follow_the_phones_family(tmp_path):
    """phones.params_of: checked against the family each phone runs, naming the phone and the parameter."""
    ok = lab(tmp_path, phones={"count": 2, "models": ["VVX 410"], "params_of": {1: {FB + "mode": "duration",
                                                                                     FB + "timeout": 0}}})
    assert labfile.load(ok).sites[0].phones.params_of == {1: {FB + "mode": "duration", FB + "timeout": 0}}
    for params_of, words in [
            ({2: {FB + "mode": "DNSTTL"}}, r"params_of\[2\]: phone 2 does not exist"),
            ({0: {FB + "mode": "sometimes"}}, r"params_of\[0\]\.reg\.1\.server\.1\.failOver\.failBack\.mode: .*sometimes"),
            ({0: {FB + "timeout": 5}}, r"params_of\[0\]\.reg\.1\.server\.1\.failOver\.failBack\.timeout: .*5"),
            ({0: {FB + "mode": True}}, r"params_of\[0\]\.reg\.1\.server\.1\.failOver\.failBack\.mode: .*expected text")]:
        with pytest.raises(FileError, match=words):
            labfile.load(lab(tmp_path, phones={"count": 2, "models": ["VVX 410"], "params_of": params_of}))
    # a SoundPoint IP on UC Software 4.0 has no failback modes: refused for that phone
    path = lab(tmp_path, family="uc-4.0", phones={"count": 1, "models": ["SoundPoint IP 650"],
                                                  "params_of": {0: {FB + "mode": "duration"}}})
    with pytest.raises(FileError, match="not supported by firmware family uc-4.0"):
        labfile.load(path)
    # test_speed: a timer below the real range is the lab's to choose (the inventory exports the nearest real value)
    fast = lab(tmp_path, timing={"test_speed": True, "retry_interval": 3},
               phones={"count": 1, "models": ["VVX 410"], "params_of": {0: {FB + "timeout": 5}}})
    assert labfile.load(fast).sites[0].phones.params_of[0][FB + "timeout"] == 5


def test_failover_behaviour_per_phone_and_naptr_srv_are_checked(tmp_path):
    spec = labfile.load(lab(tmp_path, phones={"count": 3, "models": ["VVX 410"], "failover_behaviour": "on-failure",
                                              "failover_behaviour_of": {0: "concurrent"}}))
    assert [spec.sites[0].phones.behaviour_of(i) for i in range(3)] == ["concurrent", "on-failure", "on-failure"]
    with pytest.raises(FileError, match=r"failover_behaviour_of\[5\]: phone 5 does not exist"):
        labfile.load(lab(tmp_path, phones={"count": 3, "models": ["VVX 410"], "failover_behaviour_of": {5: "on-failure"}}))
    with pytest.raises(FileError, match="failover_behaviour"):
        labfile.load(lab(tmp_path, phones={"count": 3, "models": ["VVX 410"], "failover_behaviour": "sometimes"}))
    doc = yaml.safe_load(lab(tmp_path).read_text())
    doc.update(backend="netns", net=20, provider={"naptr_srv": True})
    path = tmp_path / "netns.yml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(FileError, match="provider.naptr_srv: backend netns"):
        labfile.load(path)


def test_a_provider_grant_equal_to_the_overlap_is_refused(tmp_path):
    """The guides' overlap rule refreshes a grant equal to the overlap at once: the lab refuses that set-up."""
    doc = yaml.safe_load(lab(tmp_path).read_text())
    doc["provider"] = {"max_expires": 5}
    path = tmp_path / "grant.yml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(FileError, match=r"sites\[0\]\.servers\[0\]\.overlap: overlap \(5 s\) must not equal"):
        labfile.load(path)
    doc["provider"] = {"max_expires": 4}           # below the overlap: refreshed at half the grant, fine
    path.write_text(yaml.safe_dump(doc))
    assert labfile.load(path).provider.max_expires == 4
