"""A real Prometheus (Debian's `prometheus`) for tests: started on a free loopback port with a temporary
configuration and storage, as tests start Redis; queried over its HTTP API."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from soundpoint.redisboot import free_port
from conftest import wait_until


def require(tool: str) -> str:
    """The path of `tool` (prometheus, promtool), or skip: `make deps` installs Debian's prometheus package."""
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"{tool} is not installed (Debian package prometheus: `make deps` as root installs it)")
    return found


class Prometheus:
    """A Prometheus scraping `targets` every second; `query(expr)` gives the instant vector's samples."""

    def __init__(self, work: Path, targets: list[str], rule_files: list[Path] = ()) -> None:
        binary = require("prometheus")
        work.mkdir(parents=True, exist_ok=True)
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(p) for p in rule_files],
                  "scrape_configs": [{"job_name": "fleet-collector", "scrape_timeout": "900ms",
                                      "static_configs": [{"targets": targets}]}]}
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = work / "prometheus.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([binary, f"--config.file={work / 'prometheus.yml'}",
                                          f"--storage.tsdb.path={work / 'data'}",
                                          f"--web.listen-address={self.url.removeprefix('http://')}"],
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(self._ready, 30, "prometheus ready", step=0.2,
                       state=lambda: self.log.read_text(errors="replace")[-1500:])
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}: {self.log.read_text(errors='replace')[-1500:]}")
        try:
            return requests.get(self.url + "/-/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def query(self, expr: str) -> list[dict]:
        answer = requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=5).json()
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def scalar(self, expr: str) -> float | None:
        """The value of a query answering one sample (None: no sample)."""
        found = self.query(expr)
        assert len(found) <= 1, found
        return float(found[0]["value"][1]) if found else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
