"""The Celery application: Redis broker and results, JSON only, late acks, one queue per site.

Tasks receive ids (site name, experiment id, MAC), never secrets: a worker
reads the inventory named by FLEET_INVENTORY and resolves credentials itself.
"""
from __future__ import annotations

import os

from celery import Celery

# the task modules, one per domain (the shared task base is fleet/worker/base.py)
app = Celery("fleet", include=["fleet.experiment.tasks", "fleet.rollout.tasks"])


def configure(url: str | None = None) -> Celery:
    url = url or os.environ.get("FLEET_REDIS_URL", "redis://127.0.0.1:6379/0")
    visibility = int(os.environ.get("FLEET_VISIBILITY_TIMEOUT", "600"))
    app.conf.update(
        broker_url=url,
        # kombu's Redis transport, fixed so that a worker survives Redis going away mid-task (fleet/worker/broker.py)
        broker_transport="fleet.worker.broker:Transport",
        result_backend=url,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # a task lost with its worker (acks_late) is delivered again after this many seconds; every worker looks
        # for such tasks every few seconds (kombu's default sweep, every 10th of 10 s ticks, adds up to 100 s)
        broker_transport_options={"visibility_timeout": visibility,
                                  "unacked_restore_interval": min(10, max(1, visibility // 3)),
                                  "unacked_restore_throttle": 1},
        result_expires=24 * 3600,
        task_default_queue="fleet",
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


def site_queue(site: str) -> str:
    return f"site.{site}"


# what `fleet worker --control` serves: scheduled rollouts and the ticks that drive them
CONTROL_QUEUE = "fleet.control"


configure()
