"""The shipped alert rules and Prometheus configuration (examples/prometheus/): `promtool test rules` runs their
unit tests (each alert firing when it should and not before), `promtool check` accepts both files."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from prometheus_server import require

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "prometheus"
ALERTS = ("FleetSiteOnFallback", "FleetPhonesRegisteredNowhere", "FleetEvidenceSourceDown",
          "FleetIncidentPhonesNeverFailedOver", "FleetRolloutHalted")


def promtool(*args: str, cwd: Path = EXAMPLES) -> subprocess.CompletedProcess:
    return subprocess.run([require("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_promtool_unit_tests_of_the_alert_rules_pass():
    res = promtool("test", "rules", "fleet-alerts.test.yml")
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr


def test_every_alert_the_issue_asks_for_has_a_rule_and_a_unit_test():
    rules = {r["alert"] for g in yaml.safe_load((EXAMPLES / "fleet-alerts.yml").read_text())["groups"] for r in g["rules"]}
    tested = {t["alertname"] for case in yaml.safe_load((EXAMPLES / "fleet-alerts.test.yml").read_text())["tests"]
              for t in case["alert_rule_test"]}
    assert set(ALERTS) <= rules and set(ALERTS) <= tested, (rules, tested)


def test_a_wrong_expectation_fails_the_rule_tests(tmp_path):
    """The unit tests can fail: the same tests, expecting the site alert a minute early, do."""
    (tmp_path / "fleet-alerts.yml").write_text((EXAMPLES / "fleet-alerts.yml").read_text())
    broken = yaml.safe_load((EXAMPLES / "fleet-alerts.test.yml").read_text())
    first = broken["tests"][0]["alert_rule_test"]
    first[0]["exp_alerts"] = first[1]["exp_alerts"]
    (tmp_path / "t.yml").write_text(yaml.safe_dump(broken))
    res = promtool("test", "rules", "t.yml", cwd=tmp_path)
    assert res.returncode != 0 and "FleetSiteOnFallback" in res.stdout + res.stderr, res.stdout + res.stderr


@pytest.mark.parametrize("what,name", [("rules", "fleet-alerts.yml"), ("config", "prometheus.yml")])
def test_promtool_accepts_the_shipped_files(what, name):
    res = promtool("check", what, name)
    assert res.returncode == 0 and "SUCCESS" in res.stdout + res.stderr, res.stdout + res.stderr
