import pytest

from fleet.phoneconf import polycom
from soundpoint import catalogue
from fleet.phoneconf import predict
from hil.config_files import merge_first_wins, parse_master, parse_parameters


def test_unknown_parameter_is_rejected_by_name():
    with pytest.raises(polycom.ParameterError, match="reg.1.server.1.expirse"):
        catalogue.check("reg.1.server.1.expirse", "60", "uc-5.x")


def test_expires_minimum_depends_on_firmware_family():
    with pytest.raises(polycom.ParameterError, match="out of range 300"):
        catalogue.check("reg.1.server.1.expires", "60", "sip-3.x")
    assert catalogue.check("reg.1.server.1.expires", "60", "uc-5.x") == "60"


def test_failback_mode_only_on_later_firmware_and_only_known_values():
    with pytest.raises(polycom.ParameterError, match="not supported by firmware family sip-2.x"):
        catalogue.check("reg.1.server.1.failOver.failBack.mode", "duration", "sip-2.x")
    with pytest.raises(polycom.ParameterError, match="expected one of"):
        catalogue.check("reg.1.server.1.failOver.failBack.mode", "sometimes", "uc-5.x")


@pytest.mark.parametrize("name,value", [("reg.1.server.2.register", "2"), ("voIpProt.server.1.port", "70000"),
                                        ("reg.1.server.1.address", "bad host!"), ("reg.1.server.1.expires.overlap", "4")])
def test_out_of_range_values(name, value):
    with pytest.raises(polycom.ParameterError, match=name.replace(".", r"\.")):
        catalogue.check(name, value, "uc-5.x")


def test_rendered_files_read_back_as_the_phone_reads_them():
    params = {"reg.1.address": "1001", "reg.1.server.1.address": "voip.example", "reg.1.server.2.address": "172.23.0.1",
              "reg.1.server.1.expires": "600", "device.syslog.serverName": 'a"b<c'}
    files = polycom.render_phone_files("0004f200106c", params)
    master = parse_master("0004f200106c.cfg", files["0004f200106c.cfg"])
    assert master.config_files == ["0004f200106c-fleet.cfg"]
    assert parse_parameters("x", files["0004f200106c-fleet.cfg"]) == params
    changed = polycom.render_phone_files("0004f200106c", params | {"reg.1.address": "1002"})
    assert changed["0004f200106c-fleet.cfg"] != files["0004f200106c-fleet.cfg"]
    assert changed["0004f200106c.cfg"] == files["0004f200106c.cfg"]     # the master file does not change with a parameter


def test_first_occurrence_wins_across_config_files():
    assert merge_first_wins([{"a.b": "phone"}, {"a.b": "site", "c.d": "site"}]) == {"a.b": "phone", "c.d": "site"}


def test_predicted_failover_follows_refresh_and_transaction_timeout():
    params = {"reg.1.server.1.address": "p", "reg.1.server.2.address": "g", "reg.1.server.1.expires": "3600",
              "reg.1.server.1.expires.overlap": "60"}
    # defaults: refresh at 3540 s, RFC 3261 Timer F 32 s
    assert predict.failover_max(params) == 3540 + 32 + predict.DETECTION_SLACK
    params |= {"reg.1.server.1.expires": "100", "reg.1.server.1.retryTimeOut": "500", "reg.1.server.1.retryMaxCount": "3"}
    # the expiry (100) is not below the overlap (60): refresh 60 s before it (the guide's "server value", not
    # half of it, is compared with the overlap)
    assert predict.failover_max(params) == 40 + 2.0 + predict.DETECTION_SLACK
    # an expiry below the overlap: refresh at half of it
    params |= {"reg.1.server.1.expires": "50"}
    assert predict.failover_max(params) == 25 + 2.0 + predict.DETECTION_SLACK


def test_no_fallback_means_no_failover_prediction():
    assert predict.failover_max({"reg.1.server.1.address": "p"}) is None
    assert predict.failover_max({"reg.1.server.1.address": "p", "reg.1.server.2.address": "g",
                                 "reg.1.server.2.register": "0"}) is None


def test_recovery_prediction_follows_failback_mode():
    base = {"reg.1.server.1.address": "p", "reg.1.server.1.registerRetry.baseTimeOut": "30"}
    assert predict.recovery_max(base) == 30 + 32 + predict.DETECTION_SLACK
    dur = base | {"reg.1.server.1.failOver.failBack.mode": "duration", "reg.1.server.1.failOver.failBack.timeout": "600"}
    assert predict.recovery_max(dur) == 600 + predict.DETECTION_SLACK
    assert predict.recovery_max(base | {"reg.1.server.1.failOver.failBack.mode": "DNSTTL"}, dns_ttl=300) == 30 + 32 + 1 + 300
