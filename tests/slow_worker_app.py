"""A Celery worker app for tests/test_broker_outage.py: fleet's own Celery configuration plus one slow task.

Started as a real worker process (`celery -A slow_worker_app worker`), so the
test exercises the broker transport fleet workers use, with a task that is
surely running (delivered, not yet acknowledged) when Redis goes away.
"""
from __future__ import annotations

import os
import time

import redis

from fleet.worker.app import app, configure

configure(os.environ["FLEET_REDIS_URL"])


@app.task(name="test.slow", acks_late=True)
def slow(seconds: float, mark: str) -> str:
    """Marks its start in Redis, then sleeps without touching Redis: tasks finish, and are acknowledged, while
    the worker is without its broker."""
    redis.Redis.from_url(os.environ["FLEET_REDIS_URL"]).set(mark, "started")
    time.sleep(seconds)   # the task holding the worker for `seconds` is the experiment
    return f"slept {seconds}"
