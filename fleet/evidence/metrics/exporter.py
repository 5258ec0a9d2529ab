"""The /metrics endpoint of a collector process: a custom Prometheus collector that reads the store per scrape.

Off unless a site names `collector: {metrics: HOST:PORT}`. The sites one process collects for that name the same
address share one endpoint (normally every site of the process: one /metrics per collector process); each
endpoint exports only its own sites, so Prometheus scraping several collectors never counts a phone twice.
Values are read from Redis when Prometheus asks (fleet.state.scrape), never kept as gauges in memory; a scrape
while Redis is away answers `fleet_exporter_store_up 0` rather than an error page, so an alert can say why.
"""
from __future__ import annotations

import gzip
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
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


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:   # noqa: A002 (the base class's name)
        """No line per scrape on the collector's log."""


def wsgi_app(registry: CollectorRegistry):
    """/metrics in the text format; gzip at level 1 when the scraper accepts it (Prometheus does): the text of
    10,000 phones is some 2.4 MB, and level 1 shrinks it about as much as 9 does at a fraction of the CPU
    (prometheus_client's own server compresses at 9, most of a 10,000-phone scrape's time)."""
    def app(environ, start_response):
        if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"only /metrics here\n"]
        body = generate_latest(registry)
        headers = [("Content-Type", CONTENT_TYPE_LATEST)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers + [("Content-Length", str(len(body)))])
        return [body]
    return app


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
            server = make_server(host.strip("[]"), int(port), wsgi_app(registry),
                                 _Server6 if ":" in host else _Server, handler_class=_Quiet)
        except OSError as exc:
            for e in started:
                e.stop()
            raise ExporterError(f"metrics for site {', '.join(names)} cannot listen on {address}: "
                                f"{exc.strerror or exc}") from None
        threading.Thread(target=server.serve_forever, name=f"metrics-{address}", daemon=True).start()
        started.append(Exporter(address, names, server))
        log.warning("serving /metrics on %s for site %s", address, ", ".join(names))
    return started
