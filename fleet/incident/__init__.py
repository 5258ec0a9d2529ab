"""Passive outage incidents above the experiments: their reports and the survivability record."""
