"""The /metrics endpoint of a collector process: a custom Prometheus collector that reads the store per scrape.

Off unless a site names `collector: {metrics: HOST:PORT}`. The sites one process collects for that name the same
address share one endpoint (normally every site of the process: one /metrics per collector process); each
endpoint exports only its own sites, so Prometheus scraping several collectors never counts a phone twice.
Values are read from Redis when Prometheus asks (fleet.state.scrape), never kept as gauges in memory; a scrape
while Redis is away answers `fleet_exporter_store_up 0` rather than an error page, so an alert can say why.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fleet.config.inventory import Site
from fleet.evidence.metrics.families import families
from fleet.state import scrape
from fleet.state.store import Store

log = logging.getLogger(__name__)


class ExporterError(RuntimeError):
    """/metrics cannot be served (its address is taken, say); the message names the address and the sites."""


class StoreCollector(Collector):
    """Yields every family of `families` from one read of the store for `sites`, per scrape."""

    def __init__(self, store: Store, sites: list[str]) -> None:
        self.store, self.sites = store, sorted(sites)

    def describe(self) -> list[Metric]:
        return []      # nothing to describe up front: the families are what the store holds at scrape time

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        up = GaugeMetricFamily("fleet_exporter_store_up", "1 when this scrape could read the fleet store (Redis)")
        try:
            snap = scrape.read(self.store, self.sites)
        except (redis.RedisError, OSError) as exc:
            log.warning("metrics: cannot read the store (%s)", type(exc).__name__)
            up.add_metric([], 0.0)
            yield up
            return
        yield from families(snap)
        up.add_metric([], 1.0)
        yield up
        took = GaugeMetricFamily("fleet_exporter_read_seconds", "seconds this scrape took to read the store")
        took.add_metric([], time.perf_counter() - started)
        yield took


@dataclass
class Exporter:
    """One /metrics endpoint: where it listens, which sites it exports, its HTTP server."""
    address: str
    sites: list[str]
    server: WSGIServer

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def plan(sites: list[Site]) -> dict[str, list[str]]:
    """metrics address -> the sites that name it (sites without one export nothing)."""
    out: dict[str, list[str]] = {}
    for site in sites:
        if site.collector.metrics:
            out.setdefault(site.collector.metrics, []).append(site.name)
    return out


def start_exporters(store: Store, sites: list[Site]) -> list[Exporter]:
    """Serve /metrics on every address the sites name; ExporterError (and none left running) if one cannot."""
    started: list[Exporter] = []
    for address, names in plan(sites).items():
        host, _, port = address.rpartition(":")
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StoreCollector(store, names))
        try:
            server, _thread = start_http_server(int(port), host.strip("[]"), registry=registry)
        except OSError as exc:
            for e in started:
                e.stop()
            raise ExporterError(f"metrics for site {', '.join(names)} cannot listen on {address}: "
                                f"{exc.strerror or exc}") from None
        started.append(Exporter(address, names, server))
        log.warning("serving /metrics on %s for site %s", address, ", ".join(names))
    return started
