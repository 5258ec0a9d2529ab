"""kombu's Redis transport with one fix: a worker survives Redis going away while it holds unacknowledged tasks.

With late acks, a worker always holds a delivered, unacknowledged message
while a task runs. When the broker connection drops, Celery (5.7) first
collects the connection, which detaches the transport from it, then closes
it; closing the channel tries to put the held messages back, and kombu's
Redis channel builds its connection parameters from the detached transport:
`AttributeError: 'NoneType' object has no attribute 'hostname'`. That is not a
connection error, so Celery calls it unrecoverable and the worker exits; the
site's queue is then served by nobody and a rollout waits for its progress
deadline. (Found by tests/test_rollout_faults.py::test_redis_restarted_mid_rollout,
where it happened whenever a task was in flight on a worker as Redis stopped.)

Here that case raises redis' ConnectionError instead: Celery ignores it while
closing and reconnects, and the messages it could not put back are still in
Redis' unacked set, so they are delivered again after the visibility timeout
(every task is idempotent). Selected by `broker_transport` in fleet.worker.app;
URLs stay `redis://`.
"""
from __future__ import annotations

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> dict:
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection was closed (Redis went away); reconnecting")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel
