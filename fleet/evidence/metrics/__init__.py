"""Prometheus metrics from the collector process (issue 20 part 3): one /metrics per process, off by default.

`families` shapes one read of the store (fleet.state.scrape) into metric families; `exporter` serves them from a
custom collector at scrape time, so the process keeps no gauge per phone in memory and every value is what Redis
says at that moment. Names, labels and cardinality: README "Metrics".
"""
